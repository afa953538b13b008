"""TagVocabulary: the tags of a run, their vectors, and which of them are unseen."""

import dataclasses
import os

import numpy as np

from pipelines.text import lines_listing, numbered_lines, read_unique_lines
from sdl_keras.embeddings.formats import l2_normalize, load_tag_vectors


@dataclasses.dataclass(frozen=True)
class TagVocabulary:
    """Tags, their vectors and which of them are unseen in training.

    Shape contract: `vectors` is (C, d) float32, l2-normalized, row i = `tags[i]`;
    `unseen` holds indices into `tags`.
    """

    tags: tuple
    vectors: np.ndarray
    unseen: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "tags", tuple(str(t) for t in self.tags))
        object.__setattr__(self, "vectors", l2_normalize(self.vectors))
        object.__setattr__(self, "unseen", tuple(sorted(int(i) for i in set(self.unseen))))
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.tags):
            raise ValueError(f"{len(self.tags)} tags but vectors of shape {self.vectors.shape}.")
        bad = np.flatnonzero(~np.isfinite(self.vectors).all(axis=1))
        if bad.size:
            raise ValueError(f"Non-finite vector values for {bad.size} tag(s): {[self.tags[i] for i in bad[:10]]}.")
        if len(set(self.tags)) != len(self.tags):
            dupes = sorted({t for t in self.tags if self.tags.count(t) > 1})
            raise ValueError(f"Duplicate tags in the vocabulary: {dupes}")
        bad = [i for i in self.unseen if not 0 <= i < len(self.tags)]
        if bad:
            raise ValueError(f"Unseen indices out of range for {len(self.tags)} tags: {bad}")

    @classmethod
    def from_tag_lists(cls, tags, vectors, unseen_tags=()):
        """A vocabulary whose unseen set is given by name; unknown names are an error."""
        index = {t: i for i, t in enumerate(tags)}
        unknown = [t for t in unseen_tags if t not in index]
        if unknown:
            raise KeyError(f"Unseen tags not in the vocabulary: {unknown}")
        return cls(tags, vectors, [index[t] for t in unseen_tags])

    @classmethod
    def from_files(cls, tags_path, vectors_path, unseen_path=None, allow_pickle=False, on_missing="error",
                   vector_tags=None):
        """A vocabulary from a tag list file (one tag per line), a vector file (any
        `load_tag_vectors` format) and an optional file of unseen tags. `vector_tags` is a
        tag list file that the rows of an .npy vector file follow, when they do not follow
        `tags_path` (COCO's classes.txt for the official 80-row vectors).

        Errors name the file and line: a tag listed twice, an unseen tag not in the tag
        list, and (from `load_tag_vectors`) a word whose vector is not finite."""
        tags = read_unique_lines(tags_path)
        unseen = list(numbered_lines(unseen_path)) if unseen_path else []
        known = set(tags)
        unknown = {tag: [line_no] for line_no, tag in unseen if tag not in known}
        if unknown:
            raise KeyError(f"{unseen_path}: {len(unknown)} unseen tag(s) not in {tags_path}: {lines_listing(unknown)}.")
        kept, vectors = load_tag_vectors(
            vectors_path, tags, allow_pickle=allow_pickle, on_missing=on_missing,
            row_tags=read_unique_lines(vector_tags) if vector_tags else None,
        )
        unseen = [tag for _, tag in unseen]
        dropped = set(tags) - set(kept)
        return cls.from_tag_lists(kept, vectors, [t for t in unseen if t not in dropped])

    def __len__(self):
        return len(self.tags)

    @property
    def dim(self):
        return self.vectors.shape[1]

    @property
    def seen(self):
        unseen = set(self.unseen)
        return tuple(i for i in range(len(self.tags)) if i not in unseen)

    @property
    def seen_tags(self):
        return [self.tags[i] for i in self.seen]

    @property
    def seen_vectors(self):
        return self.vectors[list(self.seen)]

    @property
    def unseen_tags(self):
        return [self.tags[i] for i in self.unseen]

    def index(self, tag):
        try:
            return self.tags.index(tag)
        except ValueError:
            raise KeyError(f"Tag {tag!r} is not in the vocabulary of {len(self.tags)} tags.") from None

    def save(self, path):
        """Writes an .npz with arrays tags, vectors and unseen (no pickles)."""
        np.savez(
            path,
            tags=np.array(self.tags, dtype=str),
            vectors=self.vectors,
            unseen=np.array(self.unseen, dtype=np.int64),
        )

    @classmethod
    def load(cls, path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"Vocabulary file not found: {path}")
        with np.load(path, allow_pickle=False) as data:
            for key in ("tags", "vectors", "unseen"):
                if key not in data.files:
                    raise KeyError(f"{path} is not a TagVocabulary file: no {key!r} array.")
            try:
                return cls([str(t) for t in data["tags"]], data["vectors"], data["unseen"].tolist())
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None

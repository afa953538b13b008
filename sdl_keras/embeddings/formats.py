"""Tag vectors from files: one reader per vector-file format, and `load_tag_vectors`.

Formats `load_tag_vectors` reads, chosen by file suffix (or `fmt=`):
  .vec  FastText text, a "count dim" header line then "word v1 ... vd" lines
  .txt  GloVe text, the same lines without a header
  .bin  word2vec binary ("count dim\\n", then "word " + d float32 per word)
  .npy  a (C, d) array whose rows follow `tags` (or `row_tags`, picked by name)
  .npz  arrays "tags" (C,) and "vectors" (C, d); rows are picked by tag name
  .pickle / .pkl  the official ZS_SDL `wordvec_array.pickle`: a d x C array (or a
        dict holding one, 1 x d x C for COCO), columns following `tags`; only with
        `allow_pickle=True`, since unpickling runs code.
Multi-word tags ("hot dog", "teddy_bear") average the vectors of their words.
Every vector is l2-normalized.
"""

import logging
import os
import pickle
import re

import numpy as np

logger = logging.getLogger(__name__)

_WORD_SPLIT = re.compile(r"[\s_\-]+")
FORMATS = ("vec", "txt", "bin", "npy", "npz", "pickle")


def tag_words(tag):
    """The words a tag's vector is averaged from: 'teddy_bear' -> ['teddy', 'bear']."""
    return [w for w in _WORD_SPLIT.split(tag.strip()) if w]


def l2_normalize(vectors, eps=1e-12):
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, eps)


def _format_of(path, fmt):
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"Unknown tag-vector format {fmt!r}; expected one of {FORMATS}.")
        return fmt
    suffix = os.path.splitext(str(path))[1].lower().lstrip(".")
    if suffix == "pkl":
        return "pickle"
    if suffix not in FORMATS:
        raise ValueError(
            f"Cannot tell the tag-vector format of {path!r} from its suffix; pass fmt= one of {FORMATS}."
        )
    return suffix


def _read_text_vectors(path, wanted, has_header):
    """Word -> vector for the words in `wanted`, scanning a text file once."""
    found = {}
    dim = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if has_header and line_no == 1:
                header = line.split()
                if len(header) == 2 and all(h.isdigit() for h in header):
                    dim = int(header[1])
                    continue
            word, _, rest = line.rstrip("\n").rstrip().partition(" ")
            if word not in wanted or word in found:
                continue
            values = np.array(rest.split(), dtype=np.float32)
            if dim is None:
                dim = values.size
            if values.size != dim:
                raise ValueError(f"{path}:{line_no}: word {word!r} has {values.size} values, expected {dim}.")
            found[word] = values
            if len(found) == len(wanted):
                break
    return found


def _read_word2vec_binary(path, wanted):
    found = {}
    with open(path, "rb") as f:
        header = f.readline().split()
        if len(header) != 2:
            raise ValueError(f"{path}: not a word2vec binary file (header {header!r}).")
        count, dim = int(header[0]), int(header[1])
        record = np.dtype(np.float32).itemsize * dim
        for _ in range(count):
            chars = bytearray()
            while True:
                ch = f.read(1)
                if not ch:
                    raise ValueError(f"{path}: truncated after {len(found)} words.")
                if ch == b" ":
                    break
                if ch != b"\n":
                    chars.extend(ch)
            word = chars.decode("utf-8", errors="replace")
            data = f.read(record)
            if len(data) != record:
                raise ValueError(f"{path}: truncated in the vector of {word!r}.")
            if word in wanted and word not in found:
                found[word] = np.frombuffer(data, dtype=np.float32).copy()
    return found


def _word_lookup(tag, found):
    """A tag's vector from word vectors: the tag itself, else the mean of its words."""
    for candidate in (tag, tag.lower(), tag.replace(" ", "_"), tag.lower().replace(" ", "_")):
        if candidate in found:
            return found[candidate], []
    words = tag_words(tag)
    vectors, missing = [], []
    for word in words:
        vec = found.get(word, found.get(word.lower()))
        (missing if vec is None else vectors).append(word if vec is None else vec)
    if missing or not vectors:
        return None, missing or [tag]
    return np.mean(vectors, axis=0), []


def _resolve_missing(tags, vectors, missing, path, on_missing):
    if not missing:
        return tags, vectors
    listing = "; ".join(f"{tag!r} (missing: {', '.join(words)})" for tag, words in missing.items())
    if on_missing == "error":
        raise KeyError(f"{len(missing)} tag(s) have no vector in {path}: {listing}")
    logger.warning("Skipping %d tag(s) with no vector in %s: %s", len(missing), path, listing)
    keep = [i for i, t in enumerate(tags) if t not in missing]
    return [tags[i] for i in keep], vectors[keep]


def _from_array(array, tags, path, tags_along_columns=False):
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:  # the official COCO pickle: 1 x d x C
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array of vectors, got shape {array.shape}.")
    if tags_along_columns:  # the official pickles store d x C
        array = array.T
    if tags is not None and array.shape[0] != len(tags):
        raise ValueError(f"{path}: {array.shape[0]} vectors for {len(tags)} tags.")
    return array


def _pick_rows(array, row_tags, tags, path, on_missing):
    """The rows of `array` (row i = row_tags[i]) for `tags`, matched ignoring case and '_'."""
    if array.shape[0] != len(row_tags):
        raise ValueError(f"{path}: {array.shape[0]} vectors for the {len(row_tags)} tags their rows follow.")
    key = lambda tag: " ".join(tag.replace("_", " ").lower().split())  # noqa: E731
    index = {key(t): i for i, t in enumerate(row_tags)}
    missing = {t: [t] for t in tags if key(t) not in index}
    picked = np.stack([array[index[key(t)]] if key(t) in index else np.zeros(array.shape[1], np.float32)
                       for t in tags]) if tags else np.zeros((0, array.shape[1]), np.float32)
    return _resolve_missing(tags, picked, missing, path, on_missing)


def load_tag_vectors(path, tags=None, *, fmt=None, allow_pickle=False, on_missing="error", row_tags=None):
    """Loads l2-normalized vectors for `tags`.

    Args:
        path: a vector file (see the module docstring for formats).
        tags: the tag names, in the order of the rows wanted. Required for word-vector
            files and .npy; optional for .npz (its own tag order) and pickles.
        fmt: the format, when the suffix does not tell it.
        allow_pickle: must be True to read official ZS_SDL pickles.
        on_missing: "error" raises a KeyError listing every tag without a vector;
            "skip" drops them with a warning (the returned tags say which remain).
        row_tags: for .npy, the tags its rows follow when they are not `tags` (e.g.
            COCO's 80 classes); the rows of `tags` are picked by name.

    Returns:
        (tags, vectors): the tag list actually covered, and a (C, d) float32 array.
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Tag-vector file not found: {path}")
    fmt = _format_of(path, fmt)
    tags = None if tags is None else [str(t) for t in tags]
    if row_tags is not None and fmt != "npy":
        raise ValueError(f"{path}: a list of the tags the rows follow is for .npy vectors, not .{fmt}.")

    if fmt in ("vec", "txt", "bin"):
        if tags is None:
            raise ValueError(f"{path} holds word vectors: pass the tag list to look up.")
        wanted = set()
        for tag in tags:
            wanted.update({tag, tag.lower(), tag.replace(" ", "_"), tag.lower().replace(" ", "_")})
            wanted.update(tag_words(tag))
            wanted.update(w.lower() for w in tag_words(tag))
        if fmt == "bin":
            found = _read_word2vec_binary(path, wanted)
        else:
            found = _read_text_vectors(path, wanted, has_header=(fmt == "vec"))
        dim = next(iter(found.values())).size if found else 0
        vectors, missing = np.zeros((len(tags), dim), np.float32), {}
        for row, tag in enumerate(tags):
            vec, miss = _word_lookup(tag, found)
            if vec is None:
                missing[tag] = miss
            else:
                vectors[row] = vec
        tags, vectors = _resolve_missing(tags, vectors, missing, path, on_missing)
        return tags, l2_normalize(vectors)

    if fmt == "npy":
        if tags is None:
            raise ValueError(f"{path} holds only an array: pass the tag list its rows follow.")
        if row_tags is not None:
            array = _from_array(np.load(path, allow_pickle=False), None, path)
            tags, picked = _pick_rows(array, [str(t) for t in row_tags], tags, path, on_missing)
            return tags, l2_normalize(picked)
        return tags, l2_normalize(_from_array(np.load(path, allow_pickle=False), tags, path))

    if fmt == "npz":
        with np.load(path, allow_pickle=False) as data:
            for key in ("tags", "vectors"):
                if key not in data.files:
                    raise KeyError(f"{path} has no {key!r} array (it has {data.files}).")
            file_tags = [str(t) for t in data["tags"]]
            array = _from_array(data["vectors"], file_tags, path)
        if tags is None:
            return file_tags, l2_normalize(array)
        index = {t: i for i, t in enumerate(file_tags)}
        missing = {t: [t] for t in tags if t not in index}
        picked = np.zeros((len(tags), array.shape[1]), np.float32)
        for row, tag in enumerate(tags):
            if tag in index:
                picked[row] = array[index[tag]]
        tags, picked = _resolve_missing(tags, picked, missing, path, on_missing)
        return tags, l2_normalize(picked)

    if not allow_pickle:
        raise ValueError(
            f"{path} is a pickle; unpickling runs code from the file. Pass allow_pickle=True "
            "(--allow_pickle) only for files you trust, such as the official ZS_SDL release."
        )
    with open(path, "rb") as f:
        obj = pickle.load(f)
    if isinstance(obj, dict):
        arrays = [v for v in obj.values() if hasattr(v, "shape")]
        if len(arrays) != 1:
            raise ValueError(f"{path}: expected one array in the pickled dict, got keys {list(obj)}.")
        obj = arrays[0]
    array = _from_array(obj, tags, path, tags_along_columns=True)
    if tags is None:
        tags = [str(i) for i in range(array.shape[0])]
    return tags, l2_normalize(array)


def load_official_tag_list(path):
    """Tags from the official `classes.pickle` (dict index -> tag) or a list pickle.
    Only call on files you trust: unpickling runs code."""
    with open(path, "rb") as f:
        obj = pickle.load(f)
    if isinstance(obj, dict):
        return [str(obj[i]) for i in sorted(obj)]
    return [str(t) for t in obj]

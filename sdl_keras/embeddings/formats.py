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

Bad values are errors naming the file and line (word-vector files) or row (arrays): a
value that is not a number, a non-finite one (nan, inf, or beyond float32), too many or
too few. Word-vector readers parse only the lines of the words a tag may use, and stop
once each is found (a 2-million-word .vec is rarely read to its end); within the part
read they warn about a header count the file does not hold and about words listed twice
(the first vector wins, as in gensim), and skip lines that are not UTF-8 text (their word
cannot be known), naming them in a warning and in the error of any tag left without a
vector. A wanted word whose values are not UTF-8 is an error.
"""

import functools
import logging
import os
import pickle
import re

import numpy as np

from pipelines.text import not_utf8

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


def _check_vector(where, word, values, dim, tokens=None):
    """Raises ValueError at `where` (file and line) unless `values` are `dim` finite numbers."""
    if dim is not None and values.size != dim:
        raise ValueError(f"{where}: word {word!r} has {values.size} values, expected {dim}.")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        shown = tokens[bad[0]] if tokens else str(values[bad[0]])
        raise ValueError(
            f"{where}: word {word!r} has non-finite values ({shown!r}, value {bad[0] + 1} of {values.size})."
        )


def _parse_values(where, word, text, dim):
    """The vector of a text line's values, checked (`_check_vector`)."""
    tokens = text.split()
    try:
        with np.errstate(over="ignore"):  # 1e50 becomes inf: reported as non-finite below
            values = np.array(tokens, dtype=np.float32)
    except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise ValueError(f"{where}: word {word!r} has a value that is not a number: {bad!r}.") from None
    _check_vector(where, word, values, dim, tokens)
    return values


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


class _Scan:
    """What a word-vector reader found in the part of a file it read: the vectors of the
    wanted words, the words it could not read (bytes that are not UTF-8), the wanted words
    listed more than once (first wins, as gensim's reader), and the words counted against
    the header's count."""

    def __init__(self, path, wanted, declared=None):
        self.path, self.wanted, self.declared = path, wanted, declared
        self.found, self.first, self.repeated, self.unreadable = {}, {}, {}, []
        self.words = 0

    @property
    def complete(self):
        return len(self.found) == len(self.wanted)

    def count_word(self, where):
        """Counts a word against the header (the text reader does it inline)."""
        self.words += 1
        if self.words - 1 == self.declared:
            self.over_count(where)

    def over_count(self, where):
        logger.warning("%s: the header says %d words, but the file holds more (the count is wrong, or words "
                       "were added without updating it).", where, self.declared)

    def is_new(self, word, where):
        """Whether the wanted `word` is read for the first time (a repeat is noted)."""
        if word in self.found:
            self.repeated.setdefault(word, [self.first[word]]).append(where)
            return False
        return True

    def add(self, word, values, where):
        self.found[word], self.first[word] = values, where

    def finish(self, at_end):
        """Warns about what the part read showed: a header count the file does not hold
        (known only at its end), repeated words."""
        if at_end and self.declared is not None and self.words < self.declared:
            logger.warning("%s: the header says %d words, but the file holds %d.", self.path, self.declared,
                           self.words)
        if self.repeated:
            listing = "; ".join(f"{word!r} ({', '.join(map(str, places))})" for word, places in self.repeated.items())
            logger.warning("%s: %d word(s) listed more than once; the first vector of each is used: %s", self.path,
                           len(self.repeated), listing)
        return self


def _escaped(text):
    """Whether `text`, read with errors="surrogateescape", holds bytes that are not UTF-8."""
    return not text.isascii() and any("\udc80" <= c <= "\udcff" for c in text)


def _not_utf8_line(path, line_no, line):
    """`not_utf8`'s description of a line read with errors="surrogateescape"."""
    raw = line.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return not_utf8(path, line_no, raw, error.start)
    return f"{path}:{line_no}"


def _read_text_vectors(path, wanted, has_header):
    """A `_Scan` of a text file (FastText .vec with its "count dim" header, GloVe .txt
    without), read line by line until every wanted word is found.

    A word that is not UTF-8 is skipped and noted (it cannot be known); in the values of a
    wanted word it is an error."""
    scan = _Scan(path, wanted)
    dim, words = None, 0
    # The hot loop, over millions of lines: bytes that are not UTF-8 come through as lone
    # surrogates, looked for in a line's word only (and in a wanted word's values).
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="\n") as f:
        for line_no, line in enumerate(f, start=1):
            if line_no == 1 and has_header:
                header = line.split()
                if len(header) == 2 and all(h.isdigit() for h in header):
                    scan.declared, dim = int(header[0]), int(header[1])
                    continue
            line = line.rstrip()
            if not line:
                continue
            words += 1
            if words - 1 == scan.declared:
                scan.over_count(f"{path}:{line_no}")
            word, _, rest = line.partition(" ")
            if not word.isascii() and _escaped(word):
                scan.unreadable.append(_not_utf8_line(path, line_no, line))
            elif word in wanted and scan.is_new(word, f"line {line_no}"):
                if _escaped(rest):
                    raise ValueError(f"{_not_utf8_line(path, line_no, line)}: the values of word {word!r}; save the "
                                     "file as UTF-8.")
                values = _parse_values(f"{path}:{line_no}", word, rest, dim)
                dim = values.size
                scan.add(word, values, f"line {line_no}")
                if scan.complete:
                    scan.words = words
                    return scan.finish(at_end=False)
    scan.words = words
    return scan.finish(at_end=True)


def _read_word2vec_binary(path, wanted):
    """A `_Scan` of a word2vec binary file ("count dim\\n", then per word its UTF-8 bytes, a
    space and d little-endian float32), read until every wanted word is found."""
    with open(path, "rb") as f:
        header = f.readline()
        fields = header.split()
        if len(fields) != 2 or not all(h.isdigit() for h in fields):
            raise ValueError(f"{path}: not a word2vec binary file (header {header[:40]!r}).")
        scan = _Scan(path, wanted, declared=int(fields[0]))
        dim = int(fields[1])
        size = np.dtype(np.float32).itemsize * dim
        while not scan.complete:
            offset = f.tell()
            chars = bytearray()
            while (ch := f.read(1)) and ch != b" ":
                if ch != b"\n":
                    chars.extend(ch)
                elif not chars:  # the newline word2vec writes after each vector
                    offset += 1
            if not ch:
                if chars:
                    raise ValueError(f"{path}: truncated in word {scan.words + 1} (byte offset {offset}).")
                return scan.finish(at_end=True)
            where = f"{path}: word {scan.words + 1} (byte offset {offset})"
            scan.count_word(where)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{where}: truncated in its vector.")
            try:
                word = chars.decode("utf-8")
            except UnicodeDecodeError as error:
                scan.unreadable.append(f"{where}: not UTF-8 text (byte 0x{chars[error.start]:02x} in {bytes(chars)!r})")
                continue
            if word in wanted and scan.is_new(word, f"word {scan.words}"):
                values = np.frombuffer(data, dtype="<f4").astype(np.float32)
                _check_vector(where, word, values, dim)
                scan.add(word, values, f"word {scan.words}")
    return scan.finish(at_end=False)


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


def _resolve_missing(tags, vectors, missing, path, on_missing, unreadable=()):
    """The tags with a vector and theirs; tags without one are an error or dropped with a
    warning, either naming the file's unreadable words (a tag may be one of them)."""
    if unreadable:
        note = (f"{len(unreadable)} word(s) of {path} could not be read, as their bytes are not UTF-8 text "
                f"(e.g. {'; '.join(unreadable[:3])})")
        if not missing:
            logger.warning("%s; none of the tags needed them.", note)
    if not missing:
        return tags, vectors
    listing = "; ".join(f"{tag!r} (missing: {', '.join(words)})" for tag, words in missing.items())
    if unreadable:
        listing += f". {note}"
    if on_missing == "error":
        raise KeyError(f"{len(missing)} tag(s) have no vector in {path}: {listing}")
    logger.warning("Skipping %d tag(s) with no vector in %s: %s", len(missing), path, listing)
    keep = [i for i, t in enumerate(tags) if t not in missing]
    return [tags[i] for i in keep], vectors[keep]


def _from_array(array, tags, path, tags_along_columns=False):
    """A (C, d) float32 array of vectors, one row per tag of `tags` (when given), every row finite."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 1:  # the official COCO pickle: 1 x d x C
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D array of vectors, got shape {array.shape}.")
    if tags_along_columns:  # the official pickles store d x C
        array = array.T
    if tags is not None and array.shape[0] != len(tags):
        raise ValueError(f"{path}: {array.shape[0]} vectors for {len(tags)} tags.")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        names = [f"{i}" + (f" ({tags[i]!r})" if tags is not None else "") for i in bad[:5]]
        raise ValueError(f"{path}: {bad.size} vector(s) have non-finite values: row(s) {', '.join(names)}.")
    return array


def _words_wanted(tags):
    """Every word a tag's vector may come from (`_word_lookup`'s candidates)."""
    wanted = set()
    for tag in tags:
        wanted.update({tag, tag.lower(), tag.replace(" ", "_"), tag.lower().replace(" ", "_")})
        wanted.update(tag_words(tag))
        wanted.update(w.lower() for w in tag_words(tag))
    return wanted


# Word-vector formats: a reader (path, wanted words) -> _Scan; tags are looked up in its words.
WORD_READERS = {
    "vec": functools.partial(_read_text_vectors, has_header=True),
    "txt": functools.partial(_read_text_vectors, has_header=False),
    "bin": _read_word2vec_binary,
}


def _load_word_vectors(path, tags, reader, on_missing):
    if tags is None:
        raise ValueError(f"{path} holds word vectors: pass the tag list to look up.")
    scan = reader(path, _words_wanted(tags))
    found = scan.found
    dim = next(iter(found.values())).size if found else 0
    vectors, missing = np.zeros((len(tags), dim), np.float32), {}
    for row, tag in enumerate(tags):
        vec, miss = _word_lookup(tag, found)
        if vec is None:
            missing[tag] = miss
        else:
            vectors[row] = vec
    return _resolve_missing(tags, vectors, missing, path, on_missing, scan.unreadable)


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


def _load_npy(path, tags, row_tags, on_missing):
    if tags is None:
        raise ValueError(f"{path} holds only an array: pass the tag list its rows follow.")
    if row_tags is not None:
        array = _from_array(np.load(path, allow_pickle=False), None, path)
        return _pick_rows(array, [str(t) for t in row_tags], tags, path, on_missing)
    return tags, _from_array(np.load(path, allow_pickle=False), tags, path)


def _load_npz(path, tags, on_missing):
    with np.load(path, allow_pickle=False) as data:
        for key in ("tags", "vectors"):
            if key not in data.files:
                raise KeyError(f"{path} has no {key!r} array (it has {data.files}).")
        file_tags = [str(t) for t in data["tags"]]
        array = _from_array(data["vectors"], file_tags, path)
    if tags is None:
        return file_tags, array
    index = {}
    for i, tag in enumerate(file_tags):
        index.setdefault(tag, i)
    if len(index) < len(file_tags):
        repeated = sorted({t for i, t in enumerate(file_tags) if index[t] != i})
        logger.warning("%s: %d tag(s) listed more than once; the first vector of each is used: %s", path,
                       len(repeated), repeated[:10])
    missing = {t: [t] for t in tags if t not in index}
    picked = np.zeros((len(tags), array.shape[1]), np.float32)
    for row, tag in enumerate(tags):
        if tag in index:
            picked[row] = array[index[tag]]
    return _resolve_missing(tags, picked, missing, path, on_missing)


def _load_pickle(path, tags, allow_pickle):
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
    return (tags if tags is not None else [str(i) for i in range(array.shape[0])]), array


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

    Raises:
        ValueError: naming the file and line (or row) of a value that is not a number,
            not finite, or too many or too few values.
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Tag-vector file not found: {path}")
    fmt = _format_of(path, fmt)
    tags = None if tags is None else [str(t) for t in tags]
    if row_tags is not None and fmt != "npy":
        raise ValueError(f"{path}: a list of the tags the rows follow is for .npy vectors, not .{fmt}.")
    if fmt in WORD_READERS:
        tags, vectors = _load_word_vectors(path, tags, WORD_READERS[fmt], on_missing)
    elif fmt == "npy":
        tags, vectors = _load_npy(path, tags, row_tags, on_missing)
    elif fmt == "npz":
        tags, vectors = _load_npz(path, tags, on_missing)
    else:
        tags, vectors = _load_pickle(path, tags, allow_pickle)
    return tags, l2_normalize(vectors)


def load_official_tag_list(path):
    """Tags from the official `classes.pickle` (dict index -> tag) or a list pickle.
    Only call on files you trust: unpickling runs code."""
    with open(path, "rb") as f:
        obj = pickle.load(f)
    if isinstance(obj, dict):
        return [str(obj[i]) for i in sorted(obj)]
    return [str(t) for t in obj]

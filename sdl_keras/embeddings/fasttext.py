"""FastText `.bin` models: vectors for any word, from its character n-grams.

A FastText binary holds the word vectors and the hashed n-gram buckets they are built from
(Bojanowski et al. 2017), so a word outside its vocabulary (a misspelling, a rare word, a
word of a phrase) still gets a vector: the mean of its n-grams'. An in-vocabulary word's
vector is FastText's `getWordVector`, the mean of the word's own row and its n-grams' rows:
what the `.vec` file of the same model holds.

Read through gensim's Facebook-format loader (`gensim.models.fasttext.load_facebook_vectors`),
which implements FastText's hashing and n-gram extraction in NumPy; the whole model is read
into memory (a 2-million-word wiki model takes several GB).

`.bin` is also word2vec's binary format; a FastText binary starts with FastText's magic
number (`is_fasttext_binary`), a word2vec one with its ASCII "count dim" line.
"""

import logging
import mmap
import struct

import numpy as np

logger = logging.getLogger(__name__)

# fastText's FASTTEXT_FILEFORMAT_MAGIC_INT32 (src/fasttext.cc), little-endian at offset 0.
MAGIC = 793712314


def is_fasttext_binary(path):
    """Whether the file starts with FastText's magic number."""
    with open(path, "rb") as f:
        head = f.read(4)
    return len(head) == 4 and struct.unpack("<i", head)[0] == MAGIC


def check_structure(path):
    """Raises ValueError unless the file holds every record its header promises, up to the
    end of the input matrix (fastText's FastText::saveModel layout: magic, version, 12 int32
    arguments and a double, the dictionary's counts and words, then the matrix's m x n
    float32). gensim's reader, looking for the end of a word in a truncated file, would
    read b"" forever."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        def fail(what):
            raise ValueError(f"{path}: a FastText binary that cannot be read: it ends ({len(data)} bytes) "
                             f"inside {what}.")

        offset = 8 + 12 * 4 + 8  # magic, version, the arguments
        if len(data) < offset + 28:
            fail("its header")
        size, _, _, _, pruned = struct.unpack_from("<3iqq", data, offset)
        offset += 28
        for word in range(size):
            end = data.find(b"\0", offset)
            if end < 0 or end + 10 > len(data):
                fail(f"word {word + 1} of {size}")
            offset = end + 10  # the word's NUL, its int64 count and int8 type
        offset += 8 * max(pruned, 0) + 1  # the pruned index's pairs, the quantization flag
        if data[offset - 1:offset] not in (b"\0", b""):
            raise ValueError(f"{path}: a quantized FastText model (.ftz); give the unquantized .bin.")
        if len(data) < offset + 16:
            fail("the input matrix's shape")
        rows, cols = struct.unpack_from("<qq", data, offset)
        if len(data) < offset + 16 + 4 * rows * cols:
            fail(f"the {rows} x {cols} input matrix")


def load_fasttext_vectors(path, tags, words_of):
    """(vectors (C, d) float32, built_from_subwords: the tags any of whose words is outside
    the model's vocabulary, missing: {tag: [words]} whose vector is zero, as a model without
    n-gram buckets gives an unknown word) for `tags`.

    A tag that is itself a vocabulary entry ("teddy_bear", as the lookup of word-vector
    files tries) takes that vector; otherwise it averages its words (`words_of(tag)`), as
    multi-word tags do with every vector file.
    """
    try:
        from gensim.models.fasttext import load_facebook_vectors
    except ImportError:
        raise ImportError(f"{path} is a FastText binary; reading it needs gensim (pip install gensim, "
                          "requirements.txt pins it).") from None
    check_structure(path)
    try:
        keyed = load_facebook_vectors(path)
    except Exception as error:  # gensim raises struct.error, ValueError, EOFError... on a damaged file
        raise ValueError(f"{path}: a FastText binary that cannot be read ({type(error).__name__}: {error}).") from None
    vocabulary = keyed.key_to_index
    vectors = np.zeros((len(tags), keyed.vector_size), np.float32)
    from_subwords, missing = [], {}
    for row, tag in enumerate(tags):
        whole = next((c for c in (tag, tag.replace(" ", "_"), tag.lower(), tag.lower().replace(" ", "_"))
                      if c in vocabulary), None)
        if whole is not None:
            vectors[row] = keyed[whole]
            continue
        words = words_of(tag) or [tag]
        # A word in the vocabulary as written, else lowercased (as the text readers look words up).
        words = [w if w in vocabulary or w.lower() not in vocabulary else w.lower() for w in words]
        unknown = [w for w in words if w not in vocabulary]
        empty = [w for w in unknown if not np.any(keyed[w])]
        if empty:
            missing[tag] = empty
            continue
        vectors[row] = np.mean([keyed[w] for w in words], axis=0)
        if unknown:
            from_subwords.append(tag)
    if from_subwords:
        logger.info("%s: %d tag(s) built from subwords (a word outside the model's vocabulary): %s", path,
                    len(from_subwords), from_subwords[:20])
    return vectors, from_subwords, missing

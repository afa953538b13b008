"""Tag vectors: readers for every vector-file format (`formats`), and the vocabulary of a
run (`vocabulary`). NumPy only."""

from pipelines.text import read_lines
from sdl_keras.embeddings.formats import (
    FORMATS,
    TagVectors,
    l2_normalize,
    load_official_tag_list,
    load_tag_vectors,
    tag_words,
)
from sdl_keras.embeddings.vocabulary import TagVocabulary

__all__ = [
    "FORMATS", "TagVectors", "TagVocabulary", "l2_normalize", "load_official_tag_list", "load_tag_vectors", "read_lines",
    "tag_words",
]

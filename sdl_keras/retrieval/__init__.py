"""Tag-based image retrieval: an index of the images' matrices A, searched exactly or with
ScaNN (`index`), and the encoding of images into it (`encoding`, TensorFlow)."""

from sdl_keras.retrieval.index import (
    AGGREGATIONS,
    DTYPES,
    METHODS,
    Hit,
    Query,
    RetrievalIndex,
    ScannOptions,
    build_index,
    build_searcher,
    scann_module,
    tag_query,
)

__all__ = [
    "AGGREGATIONS", "DTYPES", "METHODS", "Hit", "Query", "RetrievalIndex", "ScannOptions", "build_index",
    "build_searcher", "scann_module", "tag_query",
]

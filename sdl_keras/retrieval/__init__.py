"""Tag-based image retrieval: an index of the images' matrices A, in a directory searched
exactly or with ScaNN (`index`) or in a Milvus collection (`milvus`), either opened by its
location (`backends`); the encoding of images into it (`encoding`, TensorFlow; as an Apache
Beam pipeline: `beam`)."""

from sdl_keras.retrieval.backends import create_index, open_index, parse_location
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
from sdl_keras.retrieval.milvus import MilvusIndex, MilvusOptions

__all__ = [
    "AGGREGATIONS", "DTYPES", "METHODS", "Hit", "MilvusIndex", "MilvusOptions", "Query", "RetrievalIndex",
    "ScannOptions", "build_index", "build_searcher", "create_index", "open_index", "parse_location", "scann_module",
    "tag_query",
]

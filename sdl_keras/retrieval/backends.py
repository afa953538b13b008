"""Where an index lives, by one string (the search command's --index):

    photos_index                             a directory: RetrievalIndex (exact and ScaNN)
    milvus:photos.db#photos                  a milvus-lite file and a collection in it: MilvusIndex
    milvus:http://host:19530#photos          a Milvus server or cluster (token: $MILVUS_TOKEN)

`open_index` and `create_index` give either kind; both answer `search`, `search_batch`
and `add` alike.
"""

import dataclasses
import os

from sdl_keras.retrieval.index import RetrievalIndex

MILVUS = "milvus:"


@dataclasses.dataclass(frozen=True)
class Location:
    """A parsed index location: a directory, or a Milvus URI and collection."""

    directory: str = None
    uri: str = None
    collection: str = None

    @property
    def is_milvus(self):
        return self.uri is not None

    def __str__(self):
        return f"{MILVUS}{self.uri}#{self.collection}" if self.is_milvus else self.directory


def parse_location(location):
    """A Location from `DIR` or `milvus:URI#COLLECTION`."""
    location = str(location)
    if not location.startswith(MILVUS):
        return Location(directory=location)
    uri, _, collection = location[len(MILVUS):].rpartition("#")
    if not uri or not collection:
        raise ValueError(f"{location!r}: a Milvus index is milvus:URI#COLLECTION, e.g. milvus:photos.db#photos.")
    return Location(uri=uri, collection=collection)


def _token():
    return os.environ.get("MILVUS_TOKEN")


def open_index(location):
    """The index at a location (RetrievalIndex or MilvusIndex)."""
    where = parse_location(location)
    if where.is_milvus:
        from sdl_keras.retrieval.milvus import MilvusIndex

        return MilvusIndex.open(where.uri, where.collection, token=_token())
    return RetrievalIndex.load(where.directory)


def create_index(location, num_rows, dim, dtype="float32", aggregation="max", vocabulary=None, scann=None,
                 milvus=None, source=None, overwrite=False, calibration=None):
    """An empty index at a location. `scann` (ScannOptions) and `dtype` apply to a directory,
    `milvus` (MilvusOptions) to a collection, whose vectors are float32; `calibration` (the
    model's, fitted for `vocabulary`) to either."""
    where = parse_location(location)
    if not where.is_milvus:
        return RetrievalIndex.create(where.directory, num_rows, dim, dtype, aggregation, vocabulary, scann, source,
                                     overwrite, calibration)
    from sdl_keras.retrieval.milvus import MilvusIndex, MilvusOptions

    if dtype != "float32":
        raise ValueError(f"A Milvus index stores float32 vectors; --dtype={dtype} is for a local index.")
    if scann is not None:
        raise ValueError("ScaNN searchers (--approximate) are for a local index; a Milvus index has its own "
                         "(--milvus_index_type).")
    return MilvusIndex.create(where.uri, where.collection, num_rows, dim, milvus or MilvusOptions(), vocabulary,
                              source, overwrite, aggregation, token=_token(), calibration=calibration)


def search_options(index, method="exact", num_candidates=None, leaves_to_search=None, search_params=None):
    """The keyword arguments of `index.search` for the command line's search settings;
    ValueError where a setting does not apply to the index's kind."""
    if isinstance(index, RetrievalIndex):
        if search_params:
            raise ValueError("--milvus_search_params applies to a Milvus index.")
        return {"method": method, "num_candidates": num_candidates, "leaves_to_search": leaves_to_search}
    if method != "exact" or num_candidates or leaves_to_search:
        raise ValueError("--method, --num_candidates and --leaves_to_search apply to a local index; a Milvus index "
                         "searches with its index type (--milvus_search_params tunes it).")
    return {"search_params": search_params}

"""A Milvus collection as a retrieval index: the queries, hits and semantics of
`RetrievalIndex`, served by Milvus (pymilvus' MilvusClient): milvus-lite where the URI is
a local file (`photos.db`), a Milvus server or cluster where it is `http://host:19530`.

Each image's matrix A is M entities, one per row:

    pk        INT64, assigned by Milvus
    image_id  VARCHAR, the image's id (the field searches group by)
    row       INT16, the row's index m
    add_id    INT64, the add that inserted it
    vector    FLOAT_VECTOR(d), the row A[m], under the collection's vector index (metric IP)

An inner-product search grouped by image_id returns each image's best row, so on an exact
(FLAT) index a one-tag query is SDL's score max_m (A t)_m computed server-side. Several tags
(score = sum_j max_m (A t_j)_m), and any query on an approximate index (whose grouped search
gives an image the best of the rows it visited), gather each tag's best images and re-score
them exactly over all their rows, as the local ScaNN path does: the scores and dominant rows
returned are exact, which images are found is the index's. On a FLAT index the candidate
count doubles until the result is provably exact (the k-th score beats any image no tag
retrieved), so FLAT answers equal exact local search.

The collection's settings (M, d, the model it was built with, the index type) and the
number of the last completed add live in its properties. An add numbers its entities and
raises that number only once all of them are flushed: searches filter on
`add_id <= committed`, so the entities of an add in progress, failed or killed are never
seen, and the next add deletes them. One writer at a time (`WriterLease`, the collection's
counterpart of an index directory's writer lock); readers at any time.

A model's TagVocabulary, for queries by tag name, is a second collection beside it,
`COLLECTION_vocabulary` (one entity per tag: its position, name, unseen flag, vector), and
its Calibration (sdl_keras.calibration), for the hits' probabilities as a local index gives
them, a third, `COLLECTION_calibration` (its JSON in 60,000-character pieces: a collection's
properties are held in the server's metadata store, which takes far less than an isotonic
calibration of thousands of tags).
"""

import contextlib
import dataclasses
import functools
import glob
import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid

import numpy as np

from sdl_keras.calibration import Calibration
from sdl_keras.embeddings import TagVocabulary
from sdl_keras.retrieval.index import (
    Hit,
    check_batch,
    checked_queries,
    describe_calibration,
    with_probabilities,
)
from sdl_keras.retrieval.lock import IndexLockedError, kept_out_message

logger = logging.getLogger(__name__)

FORMAT = "sdl_keras.retrieval.milvus/1"
PROPERTY = "sdl_keras"
WRITER_PROPERTY = "sdl_keras_writer"
# A writer's lease lasts this long unless renewed (its thread renews it 4 times as often).
LEASE_SECONDS = 60.0
VOCABULARY_SUFFIX = "_vocabulary"
CALIBRATION_SUFFIX = "_calibration"
CALIBRATION_PIECE = 60_000  # characters (ASCII JSON) of one VARCHAR, whose limit is 65,535 bytes
ID_LENGTH = 4096
# Milvus' largest limit (topk) of one search, and entities per insert or query call.
MAX_LIMIT = 16_384
CALL_ENTITIES = 8_192
EXACT_INDEXES = ("FLAT", "GPU_BRUTE_FORCE")


def milvus_client(uri, token=None):
    """A MilvusClient for a URI: a local file path is milvus-lite (the file is created);
    http(s)://host:port a Milvus server, with `token` ("user:password" or an API key)."""
    try:
        from pymilvus import MilvusClient, MilvusException
    except ImportError as error:
        raise ImportError("A Milvus index needs pymilvus (and milvus-lite for a local file): see requirements.txt."
                          ) from error
    if is_remote(uri):
        return MilvusClient(uri=uri, token=token or "")
    if not uri.endswith(".db"):
        raise ValueError(f"{uri}: a milvus-lite file must end in .db (or give a server as http://host:19530).")
    for name in ("milvus_lite", "faiss.loader"):  # a line per segment and library variant at INFO
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    try:
        client = MilvusClient(uri=uri)
    except MilvusException as error:
        raise PermissionError(f"{uri}: milvus-lite cannot open it ({error.message}); a milvus-lite file serves one "
                              "process at a time: is another one using it? (A Milvus server serves many.)") from None
    path = os.path.abspath(uri)
    _LITE_CLIENTS[path] = _LITE_CLIENTS.get(path, 0) + 1
    return client


# milvus-lite serves a file from a server inside the process, shared by its clients and
# holding the file's lock until the last of them closes (`close_client`).
_LITE_CLIENTS = {}


def close_client(client, uri):
    """Closes a client; the last one of a milvus-lite file stops its server and frees the file."""
    client.close()
    if is_remote(uri):
        return
    path = os.path.abspath(uri)
    _LITE_CLIENTS[path] = _LITE_CLIENTS.get(path, 1) - 1
    if _LITE_CLIENTS[path] <= 0:
        from milvus_lite.server_manager import server_manager_instance

        del _LITE_CLIENTS[path]
        server_manager_instance.release_server(path)


@contextlib.contextmanager
def _lite_quiet(uri, loggers=("grpc._server",)):
    """Creating an index makes pymilvus ask the server for a timestamp, which milvus-lite does
    not implement: pymilvus carries on without it, but milvus-lite's in-process gRPC server
    logs each refusal with a traceback. The `loggers` are silenced while a milvus-lite index
    is made (and while a load that this module recovers from may fail)."""
    kept = {name: logging.getLogger(name).level for name in loggers}
    if not is_remote(uri):
        for name in loggers:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in kept.items():
            logging.getLogger(name).setLevel(level)


def load_collection(client, uri, name):
    """Loads a collection for searching. milvus-lite 3.2.2 writes its index files (the
    `indexes/` beside each partition's data, built from that data after a flush) in place,
    not by a rename: a process killed while writing one leaves it truncated, and loading
    the collection then fails ("File is too small", "Not an Arrow file"). They are caches
    of the data, which milvus-lite commits atomically, and it rebuilds any that is missing:
    after such a failure they are removed and the load is tried once more."""
    from pymilvus import MilvusException

    try:
        with _lite_quiet(uri, ("pymilvus.decorators", "milvus_lite.adapter.grpc.servicer")):
            client.load_collection(name)
            return
    except MilvusException as error:
        failure = error.message
    indexes = [] if is_remote(uri) else glob.glob(
        os.path.join(uri, "collections", name, "partitions", "*", "indexes", "*"))
    if not indexes:
        raise ValueError(f"milvus:{uri}#{name}: Milvus cannot load it: {failure}")
    logger.warning("milvus:%s#%s: loading failed (%s); rebuilding its %d index files from its data (a writer "
                   "killed while writing one leaves it truncated).", uri, name, failure, len(indexes))
    for path in indexes:
        os.remove(path)
    try:
        client.load_collection(name)
    except MilvusException as error:
        raise ValueError(f"milvus:{uri}#{name}: Milvus cannot load it, even with its index files rebuilt: "
                         f"{error.message}") from None


def is_remote(uri):
    """Whether a URI names a Milvus server (else a milvus-lite file)."""
    return uri.startswith(("http://", "https://", "tcp://", "unix:"))


@dataclasses.dataclass(frozen=True)
class MilvusOptions:
    """The collection's vector index and how it is searched.

    index_type: FLAT (exact) or IVF_FLAT in milvus-lite; on a server also HNSW, IVF_PQ,
        IVF_SQ8, DISKANN, SCANN or the GPU indexes (GPU_CAGRA, GPU_IVF_FLAT, ...).
    index_params: the index's build parameters, e.g. {"nlist": 1024} (IVF), {"M": 16,
        "efConstruction": 200} (HNSW).
    search_params: its search parameters, e.g. {"nprobe": 32} (IVF), {"ef": 256} (HNSW).
    candidates_per_hit: a multi-tag query gathers candidates_per_hit x k images per tag
        before exact re-scoring.
    """

    index_type: str = "FLAT"
    index_params: dict = dataclasses.field(default_factory=dict)
    search_params: dict = dataclasses.field(default_factory=dict)
    candidates_per_hit: int = 2

    @classmethod
    def from_flags(cls, index_type, index_params="{}", search_params="{}"):
        """Options from the command line's strings: the parameters are JSON objects."""
        return cls(index_type.upper(), parse_params("--milvus_index_params", index_params),
                   parse_params("--milvus_search_params", search_params))


def parse_params(name, text):
    """A JSON object of index or search parameters; ValueError naming `name` otherwise."""
    try:
        params = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise ValueError(f"{name}={text!r} is not JSON: {error}.") from None
    if not isinstance(params, dict):
        raise ValueError(f'{name}={text!r} is not a JSON object (such as {{"nprobe": 32}}).')
    return params


class WriterLease:
    """The writer lock of a collection: one writer at a time, as a directory's `WriterLock`.

    Milvus has no lock, so a writer records a lease in the collection's property
    `sdl_keras_writer` (its pid and host, a token, an expiry LEASE_SECONDS ahead), renews it
    from a thread while it writes and drops it at the end. Another writer is kept out while
    the lease is live: it fails at once (timeout 0) or waits up to `timeout` seconds (None:
    as long as it takes), before it has encoded an image. A lease is stale once expired, or
    at once where its holder is a process of this host that has exited (a killed add; a
    milvus-lite file is only ever opened on its own host). Two writers starting within the
    same moment on a server both write theirs; each reads it back after a second, and the
    one overwritten waits as any writer kept out.
    """

    def __init__(self, index, timeout=0, poll=0.5):
        self.index, self.timeout, self.poll = index, timeout, poll
        self.lease = {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex}
        self._stop = threading.Event()
        self._renewer = None

    def _read(self):
        """(the lease recorded, the collection's properties)."""
        properties = self.index.client.describe_collection(self.index.collection).get("properties", {})
        text = properties.get(WRITER_PROPERTY)
        return (json.loads(text) if text else None), properties

    def _write(self):
        lease = dict(self.lease, expires=time.time() + LEASE_SECONDS)
        self.index.client.alter_collection_properties(self.index.collection,
                                                      properties={WRITER_PROPERTY: json.dumps(lease)})

    def _renew(self):
        while not self._stop.wait(LEASE_SECONDS / 4):
            try:
                self._write()
            except Exception as error:  # the next renewal may get through; the lease outlives a few failures
                logger.warning("Could not renew the writer lease of %s: %s", self.index.location, error)

    def __enter__(self):
        settle = 1.0 if is_remote(self.index.uri) else 0.0
        start = time.monotonic()
        for attempt in itertools.count():
            lease, properties = self._read()
            if lease is None or _stale(lease):
                self._write()
                time.sleep(settle)
                lease, properties = self._read()
                if lease and lease["token"] == self.lease["token"]:
                    break
            if lease is None:  # dropped meanwhile by a writer finishing: try again
                continue
            waited = time.monotonic() - start
            holder = f"{self.index.location} is held by another writer (pid {lease['pid']} on {lease['host']})"
            if self.timeout is not None and waited >= self.timeout:
                raise IndexLockedError(kept_out_message(holder, self.timeout, waited))
            if not attempt:
                logger.info("Waiting: %s.", holder)
            time.sleep(self.poll)
        # The collection as it now is: another writer may have added to it since it was opened.
        self.index.meta = json.loads(properties[PROPERTY])
        self._renewer = threading.Thread(target=self._renew, daemon=True, name="milvus-writer-lease")
        self._renewer.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._renewer.join()
        self.index.client.drop_collection_properties(self.index.collection, property_keys=[WRITER_PROPERTY])


def _stale(lease):
    """Whether a recorded lease binds no one: expired, or its holder of this host has exited."""
    if lease["expires"] < time.time():
        return True
    if lease["host"] != socket.gethostname() or lease["pid"] == os.getpid():
        return False
    try:
        os.kill(lease["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's live process
    return False


def _exclusive(method):
    """A method that changes the collection, run under its writer lease (`MilvusIndex.writer`)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self.writer():
            return method(self, *args, **kwargs)

    return locked


def _id_list(ids):
    """A Milvus expression list of string literals (JSON's escapes are Milvus')."""
    return json.dumps([str(i) for i in ids], ensure_ascii=False)


class MilvusIndex:
    """A Milvus collection of image matrices (see the module docstring).

    Shape contract: every image's A is (num_rows, dim); query vectors are (T, dim).

    Create with `MilvusIndex.create(uri, collection, num_rows, dim)`, open with
    `MilvusIndex.open(uri, collection)`, grow with `add`, query with `search` and
    `search_batch` (lists of Hit, as RetrievalIndex's). Writers wait `lock_timeout`
    seconds for another one's lease (0: fail at once, None: as long as it takes).
    """

    dtype = "float32"
    aggregation = "max"
    lock_timeout = 0

    def __init__(self, client, uri, collection, meta, vocabulary=None, calibration=None):
        self.client, self.uri, self.collection = client, uri, collection
        self.meta = meta
        self.vocabulary, self.calibration = vocabulary, calibration
        self._lease = None

    num_rows = property(lambda self: self.meta["num_rows"])
    dim = property(lambda self: self.meta["dim"])
    options = property(lambda self: MilvusOptions(**self.meta["options"]))
    committed = property(lambda self: self.meta["committed"])

    @property
    def location(self):
        return f"milvus:{self.uri}#{self.collection}"

    def describe(self):
        return (f"{self.num_rows} x {self.dim} float32, Milvus {self.options.index_type} index, "
                f"{describe_calibration(self.calibration)}")

    # -- creating and opening ---------------------------------------------------------------
    @classmethod
    def create(cls, uri, collection, num_rows, dim, options=MilvusOptions(), vocabulary=None, source=None,
               overwrite=False, aggregation="max", token=None, calibration=None):
        """An empty collection `collection` at `uri` for (num_rows, dim) matrices.

        Args:
            options: MilvusOptions (the vector index; the metric is always inner product).
            vocabulary: a TagVocabulary stored beside it, so queries can name tags.
            source: what encoded the matrices (recorded; `add` reuses it).
            overwrite: drop an existing collection of that name first.
            aggregation: only "max": Milvus scores a row at a time, and an l2 score sums all rows.
            calibration: the model's Calibration, stored for probabilities; it needs the
                vocabulary it was fitted for.
        """
        from pymilvus import DataType, MilvusException

        if aggregation != "max":
            raise ValueError("A Milvus index needs max aggregation: it scores rows, and an l2 score sums every row.")
        if vocabulary is not None and vocabulary.dim != dim:
            raise ValueError(f"The vocabulary's vectors have {vocabulary.dim} dimensions, the matrices {dim}.")
        if calibration is not None:
            if vocabulary is None:
                raise ValueError("A calibration is stored with the vocabulary it was fitted for: pass both.")
            calibration.check_tags(vocabulary.tags, "the index's vocabulary")
        client = milvus_client(uri, token)
        names = [collection, collection + VOCABULARY_SUFFIX, collection + CALIBRATION_SUFFIX]
        if client.has_collection(collection):
            if not overwrite:
                raise FileExistsError(f"milvus:{uri}#{collection} already exists; add to it, or pass overwrite.")
        for name in names:
            if client.has_collection(name):
                client.drop_collection(name)
        schema = client.create_schema(auto_id=True, enable_dynamic_field=False)
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("image_id", DataType.VARCHAR, max_length=ID_LENGTH)
        schema.add_field("row", DataType.INT16)
        schema.add_field("add_id", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        index_params = client.prepare_index_params()
        index_params.add_index("vector", index_type=options.index_type, metric_type="IP", params=options.index_params)
        # Fetching and checking ids filter on image_id.
        index_params.add_index("image_id", index_type="INVERTED")
        meta = {"format": FORMAT, "num_rows": int(num_rows), "dim": int(dim), "source": source,
                "options": dataclasses.asdict(options), "committed": 0, "vocabulary": vocabulary is not None,
                "calibration": calibration is not None}
        with _lite_quiet(uri):
            try:
                client.create_collection(collection, schema=schema, index_params=index_params,
                                         consistency_level="Strong", properties={PROPERTY: json.dumps(meta)})
            except MilvusException as error:
                raise ValueError(f"milvus:{uri}#{collection}: Milvus refused the {options.index_type} index with "
                                 f"{options.index_params}: {error.message}") from None
            if vocabulary is not None:
                _store_vocabulary(client, names[1], vocabulary)
            if calibration is not None:
                _store_calibration(client, names[2], calibration)
        load_collection(client, uri, collection)
        return cls(client, uri, collection, meta, vocabulary, calibration)

    @classmethod
    def open(cls, uri, collection, token=None):
        client = milvus_client(uri, token)
        if not client.has_collection(collection):
            raise FileNotFoundError(f"milvus:{uri}#{collection}: no such collection.")
        properties = client.describe_collection(collection).get("properties", {})
        if PROPERTY not in properties:
            raise ValueError(f"milvus:{uri}#{collection} is not a retrieval index (no {PROPERTY!r} property).")
        meta = json.loads(properties[PROPERTY])
        if meta.get("format") != FORMAT:
            raise ValueError(f"milvus:{uri}#{collection}: format {meta.get('format')!r}, expected {FORMAT!r}.")
        vocabulary = _load_vocabulary(client, uri, collection + VOCABULARY_SUFFIX) if meta.get("vocabulary") else None
        calibration = None
        if meta.get("calibration"):
            calibration = _load_calibration(client, uri, collection)
        load_collection(client, uri, collection)
        return cls(client, uri, collection, meta, vocabulary, calibration)

    def close(self):
        close_client(self.client, self.uri)

    def _save_meta(self, **changes):
        meta = dict(self.meta, **changes)
        self.client.alter_collection_properties(self.collection, properties={PROPERTY: json.dumps(meta)})
        self.meta = meta

    # -- size and contents ------------------------------------------------------------------
    def _count(self, condition):
        result = self.client.query(self.collection, filter=condition, output_fields=["count(*)"])
        return int(result[0]["count(*)"])

    def __len__(self):
        return self._count(f"add_id <= {self.committed} and row == 0")

    @property
    def ids(self):
        """Every image id in the index (in no particular order)."""
        entities = _all(self.client, self.collection, f"add_id <= {self.committed} and row == 0", ["image_id"])
        return [entity["image_id"] for entity in entities]

    def matrices(self, ids):
        """(n, M, d) float32: the stored matrices of images `ids`; KeyError names any not in the index."""
        ids = [str(i) for i in ids]
        position = {image_id: i for i, image_id in enumerate(ids)}
        out = np.full((len(ids), self.num_rows, self.dim), np.nan, np.float32)
        step = max(1, CALL_ENTITIES // self.num_rows)
        for start in range(0, len(ids), step):
            wanted = _id_list(ids[start : start + step])
            entities = self.client.query(self.collection, filter=f"add_id <= {self.committed} and image_id in {wanted}",
                                         output_fields=["image_id", "row", "vector"])
            for entity in entities:
                out[position[entity["image_id"]], entity["row"]] = entity["vector"]
        missing = [i for i, image_id in enumerate(ids) if np.isnan(out[i, :, 0]).any()]
        if missing:
            raise KeyError(f"Image id(s) not in {self.location}: {[ids[i] for i in missing[:10]]}")
        return out

    def _present(self, ids):
        step = max(1, CALL_ENTITIES // self.num_rows)
        found = set()
        for start in range(0, len(ids), step):
            entities = self.client.query(
                self.collection, output_fields=["image_id"],
                filter=f"add_id <= {self.committed} and row == 0 and image_id in {_id_list(ids[start:start + step])}",
            )
            found.update(entity["image_id"] for entity in entities)
        return found

    # -- adding -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self):
        """Holds the collection's writer lease (`WriterLease`) for a block, re-entrantly: a
        job that inserts from elsewhere (Beam workers) holds it from `begin_add` to `commit`."""
        if self._lease is not None:
            yield self._lease
            return
        with WriterLease(self, self.lock_timeout) as lease:
            self._lease = lease
            try:
                yield lease
            finally:
                self._lease = None

    @_exclusive
    def begin_add(self):
        """Starts an add: deletes what failed or killed adds left (never committed) and
        returns the new add's number, for `insert` and `commit`."""
        self.client.delete(self.collection, filter=f"add_id > {self.committed}")
        return self.committed + 1

    def insert(self, add_id, ids, matrices, known=None):
        """Inserts one batch of (ids, (n, M, d) matrices) as entities of add `add_id` (not
        seen by searches until `commit`). Ids must be new: not in the index, not repeated,
        and not in `known` (the set of this add's ids so far, which it extends)."""
        known = set() if known is None else known
        ids, matrices = check_batch(ids, matrices, self.num_rows, self.dim, known)
        # Nothing committed yet (a new collection's first add): no id can be in it.
        repeated = sorted(self._present(ids)) if self.committed else []
        if repeated:
            raise ValueError(f"Image id(s) already in the index or repeated: {repeated[:10]}")
        known.update(ids)
        rows = matrices.astype(np.float32, copy=False).reshape(-1, self.dim)
        entities = [{"image_id": image_id, "row": m, "add_id": int(add_id), "vector": rows[i * self.num_rows + m]}
                    for i, image_id in enumerate(ids) for m in range(self.num_rows)]
        for start in range(0, len(entities), CALL_ENTITIES):
            self.client.insert(self.collection, entities[start : start + CALL_ENTITIES])
        return len(ids)

    @_exclusive
    def commit(self, add_id):
        """Makes add `add_id` visible: its entities are flushed, then the committed number raised."""
        self.client.flush(self.collection)
        self._save_meta(committed=int(add_id))

    @_exclusive
    def discard(self, add_id):
        """Deletes the entities of add `add_id`, which failed (never committed)."""
        self.client.delete(self.collection, filter=f"add_id == {int(add_id)}")

    @_exclusive
    def add(self, batches, shard_size=None):
        """Adds images from an iterable of (ids, matrices (n, M, d)) batches; returns how many.
        Ids must be new and unique; on an error the index is left as it was (the entities
        inserted so far are deleted), and after a kill they stay invisible until the next add
        deletes them. (`shard_size` is RetrievalIndex's: Milvus segments a collection itself.)"""
        add_id = self.begin_add()
        known, added = set(), 0
        try:
            for ids, matrices in batches:
                added += self.insert(add_id, ids, matrices, known)
        except BaseException:
            self.discard(add_id)
            raise
        if added:
            self.commit(add_id)
        return added

    # -- searching --------------------------------------------------------------------------
    def search(self, query, k=10, **options):
        """The k best images for one Query (or tag vectors), best first: a list of Hit."""
        return self.search_batch([query], k, **options)[0]

    def search_batch(self, queries, k=10, search_params=None, candidates_per_hit=None, min_probability=None):
        """The k best images for each query: one grouped search for all one-tag queries, one
        for the tags of all multi-tag queries, whose candidates are re-scored exactly.

        Args:
            queries: Query objects (or (T, d) / (d,) arrays of tag vectors).
            search_params: the index's search parameters for this search (default: the
                collection's, e.g. {"nprobe": 32}).
            candidates_per_hit: multi-tag queries: images per tag (x k) before re-scoring.
            min_probability: leave out the hits where a query tag's probability is below
                it (a calibrated collection only), as RetrievalIndex does.
        """
        queries = checked_queries(queries, self.dim, min_probability, self.calibration, self.location)
        k = int(k)
        if not 1 <= k <= MAX_LIMIT:
            raise ValueError(f"k must be in [1, {MAX_LIMIT}], got {k}.")
        params = {"metric_type": "IP", "params": dict(self.options.search_params, **(search_params or {}))}
        results = [None] * len(queries)
        # An approximate index's grouped search gives each image the best of the rows it
        # visited, which need not be its best row (milvus-lite's IVF_FLAT missed some with
        # every list probed): there one-tag queries are re-scored too.
        exact = self.options.index_type.upper() in EXACT_INDEXES
        single = [i for i, q in enumerate(queries) if len(q.vectors) == 1] if exact else []
        if single:
            found = self._grouped(np.concatenate([queries[i].vectors for i in single]), k, params)
            for i, hits in zip(single, found):
                results[i] = [Hit(image_id, score, (row,)) for image_id, score, row in hits]
        several = [i for i in range(len(queries)) if results[i] is None]
        if several:
            per_hit = candidates_per_hit or self.options.candidates_per_hit
            for i, hits in zip(several, self._rescored([queries[i] for i in several], k, per_hit, params)):
                results[i] = hits
        if self.calibration is not None:
            ids = sorted({hit.id for hits in results for hit in hits})
            matrices = dict(zip(ids, self.matrices(ids))) if ids else {}
            results = [with_probabilities(hits, query, np.stack([matrices[h.id] for h in hits]) if hits else None,
                                          self.calibration, self.vocabulary, min_probability=min_probability)
                       for query, hits in zip(queries, results)]
        return results

    def _grouped(self, vectors, limit, params):
        """Per vector, up to `limit` (image id, score, row) best first: each image's best row."""
        found = self.client.search(
            self.collection, data=list(np.asarray(vectors, np.float32)), anns_field="vector", limit=int(limit),
            filter=f"add_id <= {self.committed}", group_by_field="image_id", output_fields=["image_id", "row"],
            search_params=params,
        )
        return [[(h["entity"]["image_id"], float(h["distance"]), int(h["entity"]["row"])) for h in hits]
                for hits in found]

    def _rescored(self, queries, k, per_hit, params):
        """Multi-tag queries: each tag's best images, re-scored exactly over all their rows.
        On an exact index the candidates double until no image outside them can win: its
        score is at most the sum of each tag's lowest retrieved score."""
        limit = min(max(per_hit * k, k), MAX_LIMIT)
        results = [None] * len(queries)
        pending = list(range(len(queries)))
        exact = self.options.index_type.upper() in EXACT_INDEXES
        while pending:
            vectors = np.concatenate([queries[i].vectors for i in pending])
            found = self._grouped(vectors, limit, params)
            candidates, offset = [], 0
            for i in pending:
                tags = found[offset : offset + len(queries[i].vectors)]
                offset += len(tags)
                candidates.append(tags)
            images = sorted({image for tags in candidates for hits in tags for image, _, _ in hits})
            matrices = dict(zip(images, self.matrices(images))) if images else {}
            still = []
            for i, tags in zip(pending, candidates):
                hits = _best(queries[i].vectors, sorted({h[0] for hits in tags for h in hits}), matrices, k)
                everything = all(len(t) < limit for t in tags)
                floor = sum(t[-1][1] for t in tags if t)
                certain = everything or (len(hits) == k and hits[-1].score >= floor)
                if exact and not certain and limit < MAX_LIMIT:
                    still.append(i)
                else:
                    results[i] = hits
            pending, limit = still, min(2 * limit, MAX_LIMIT)
        return results


def _best(vectors, images, matrices, k):
    """The k best of `images` by the exact sum over tags of max-row scores, as Hits."""
    if not images:
        return []
    stacked = np.stack([matrices[image] for image in images])
    products = np.einsum("nmd,td->nmt", stacked, vectors)
    scores, rows = products.max(axis=1).sum(axis=1), products.argmax(axis=1)
    order = np.argsort(-scores, kind="stable")[:k]
    return [Hit(images[i], float(scores[i]), tuple(int(r) for r in rows[i])) for i in order]


def _store_vocabulary(client, name, vocabulary):
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("position", DataType.INT64, is_primary=True)
    schema.add_field("tag", DataType.VARCHAR, max_length=ID_LENGTH)
    schema.add_field("unseen", DataType.BOOL)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vocabulary.dim)
    index_params = client.prepare_index_params()
    index_params.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index_params, consistency_level="Strong")
    unseen = set(vocabulary.unseen)
    entities = [{"position": i, "tag": tag, "unseen": i in unseen, "vector": vocabulary.vectors[i]}
                for i, tag in enumerate(vocabulary.tags)]
    for start in range(0, len(entities), CALL_ENTITIES):
        client.insert(name, entities[start : start + CALL_ENTITIES])
    client.flush(name)


def _load_vocabulary(client, uri, name):
    load_collection(client, uri, name)
    count = int(client.query(name, filter="position >= 0", output_fields=["count(*)"])[0]["count(*)"])
    entities = []
    for start in range(0, count, CALL_ENTITIES):
        entities += client.query(name, filter=f"position >= {start} and position < {start + CALL_ENTITIES}",
                                 output_fields=["position", "tag", "unseen", "vector"], limit=CALL_ENTITIES)
    entities.sort(key=lambda e: e["position"])
    return TagVocabulary([e["tag"] for e in entities], np.array([e["vector"] for e in entities], np.float32),
                         [e["position"] for e in entities if e["unseen"]])


def _store_calibration(client, name, calibration):
    from pymilvus import DataType

    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("piece", DataType.INT64, is_primary=True)
    schema.add_field("text", DataType.VARCHAR, max_length=65_535)
    schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # a Milvus collection has a vector field
    index_params = client.prepare_index_params()
    index_params.add_index("unused", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema, index_params=index_params, consistency_level="Strong")
    text = json.dumps(calibration.to_dict())  # ASCII: a character is a byte
    pieces = [{"piece": i, "text": text[start : start + CALIBRATION_PIECE], "unused": [0.0, 0.0]}
              for i, start in enumerate(range(0, len(text), CALIBRATION_PIECE))]
    for start in range(0, len(pieces), 64):
        client.insert(name, pieces[start : start + 64])
    client.flush(name)


def _load_calibration(client, uri, collection):
    name = collection + CALIBRATION_SUFFIX
    load_collection(client, uri, name)
    pieces = _all(client, name, "piece >= 0", ["piece", "text"])
    text = "".join(p["text"] for p in sorted(pieces, key=lambda p: p["piece"]))
    return Calibration.from_dict(json.loads(text), source=f"milvus:{uri}#{collection}'s calibration")


def _all(client, collection, condition, fields):
    """Every entity matching `condition`: one query when they fit in one (milvus-lite has no
    query iterator: it lacks the server timestamps one needs), else a query iterator."""
    count = int(client.query(collection, filter=condition, output_fields=["count(*)"])[0]["count(*)"])
    if count <= MAX_LIMIT:
        return client.query(collection, filter=condition, output_fields=fields, limit=max(count, 1))
    iterator = client.query_iterator(collection, batch_size=CALL_ENTITIES, filter=condition, output_fields=fields)
    entities = []
    while batch := iterator.next():
        entities += batch
    iterator.close()
    return entities

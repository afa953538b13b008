"""Tag-based image retrieval over stored principal-direction matrices.

An index directory holds every image's matrix A (M x d) and id, so any tag with a word
vector (seen in training or not) can be scored against every image later, exactly as
the evaluation scores it: score(image, t) = max_m (A t)_m (paper, equation 1).

Layout (an index is a list of immutable shards, written once, never appended to):

    INDEX/index.json                    num_rows, dim, dtype, aggregation, shard list, ScaNN options
    INDEX/vocabulary.npz                the model's TagVocabulary, for queries by tag name (optional)
    INDEX/calibration.json              the model's Calibration (sdl_keras.calibration), stored at build
                                        time from the run or the export, for probabilities (optional)
    INDEX/shard-00000/matrices.f32      raw little-endian (n, M, d) array (.f16 with float16 storage)
    INDEX/shard-00000/ids.jsonl         n image ids, one JSON string a line
    INDEX/shard-00000/scann/            the shard's ScaNN searcher (when approximate search is on)

Adding images writes new shards and then replaces index.json atomically, so a reader
never sees a half-written shard and a failed add leaves the index as it was. One writer
at a time: writers hold the index's lock (sdl_keras/retrieval/lock.py, INDEX/.writer.lock).

Queries: one or more tag vectors. Several tags combine by summing their scores,
    score(image) = sum_j max_m (A t_j)_m,
so each tag is matched by whichever principal direction suits it best (different rows
for different tags), rather than one direction having to match their average. Each hit
reports its score and, per query tag, its dominant row argmax_m (A t_j)_m.

Probabilities: an index built from a calibrated run or export (and its vocabulary) gives
each hit the probability of each query tag: a seen tag's own map, any other tag (unseen,
or a word outside the vocabulary) through the unseen-tag map, pooled by rank among the
vocabulary's tags in that image when the calibration says so. `min_probability` leaves out
of the k hits those where a query tag falls below it, so fewer than k may come back.

Search:
- exact: every image, in chunks of `chunk_images` (memory stays bounded: shards are
  memory-mapped). Ties rank the lower image index first, a stable descending sort of
  the scores, the ranking `evaluation.average_precisions` measures.
- scann: ScaNN (tree partitioning + anisotropic hashing) over all rows of all images,
  per shard. The work runs as (shard, group of queries) tasks on `threads` threads
  (default: every CPU the process may use; `threads=1` keeps a query on the calling
  thread, for a server whose request threads already use every core). In a task each
  tag retrieves its `num_candidates` best rows by ScaNN's approximate products, all the
  group's tags in one batched ScaNN call; per query, the images whose retrieved rows
  score best are re-scored exactly over all their rows, the group's candidates together,
  read in file order (scores and dominant rows are exact; which images are found is
  approximate: an image is missed when none of its good rows is among a tag's
  candidates). A shard of fewer than `exact_below_rows` rows is scored exactly instead.

This module is NumPy only (no TensorFlow): an index is queried without loading a model.
"""

import concurrent.futures
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import sys

import numpy as np

from sdl_keras.calibration import Calibration, check_probability
from sdl_keras.embeddings import TagVocabulary, l2_normalize, load_tag_vectors
from sdl_keras.retrieval.lock import LOCK_FILE, WriterLock

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
VOCABULARY_FILE = "vocabulary.npz"
CALIBRATION_FILE = "calibration.json"
IDS_FILE = "ids.jsonl"
SCANN_DIR = "scann"
FORMAT = "sdl_keras.retrieval/1"
DTYPES = {"float32": ".f32", "float16": ".f16"}
AGGREGATIONS = ("max", "l2")
METHODS = ("exact", "scann")
# Exact search reads this many bytes of matrices per step (as float32).
CHUNK_BYTES = 32 * 2**20
# Products with fewer (rows x vectors) than this skip multi-threaded BLAS (`_dot`).
SMALL_PRODUCT = 1 << 18
SCANN_NEEDS_MAX = "Approximate (ScaNN) search needs max aggregation: an l2 score sums every row."


@dataclasses.dataclass(frozen=True)
class ScannOptions:
    """How each shard's ScaNN searcher is built and searched.

    num_leaves: tree partitions; None = sqrt(rows of the shard). A shard with fewer
        than `min_leaves` partitions is searched by ScaNN's brute force instead.
    leaves_to_search: partitions a query visits; None = `leaves_fraction` of them.
    dims_per_block, anisotropic_threshold: the anisotropic hashing (score_ah) settings.
    training_sample_size: rows the partitioner and the hashing are trained on.
    num_candidates: rows each query tag retrieves per shard; None = max(`candidates_per_hit` x k, 1000).
    rescore_per_hit: per shard, each image a tag retrieved gets an exact lower bound (the
        exact product of its best retrieved row); the `rescore_per_hit` x k images with the
        best bounds are re-scored exactly over all their rows.
    exact_below_rows: a shard of fewer rows (images x M) is scored exactly instead: below
        this size scoring every row costs no more than a ScaNN search and its re-scoring
        (benchmarks/retrieval.py --small_shards measures it), and a tree of so few rows
        searched at `leaves_fraction` misses images (the trained demo's 1,000-image index
        found 5 of "red circle"'s top 10).
    """

    num_leaves: int = None
    leaves_to_search: int = None
    leaves_fraction: float = 0.05
    min_leaves: int = 16
    dims_per_block: int = 2
    anisotropic_threshold: float = 0.2
    training_sample_size: int = 100_000
    num_candidates: int = None
    candidates_per_hit: int = 20
    rescore_per_hit: int = 2
    exact_below_rows: int = 10_000


@dataclasses.dataclass(frozen=True)
class Query:
    """One query: (T, d) tag vectors, l2-normalized, whose scores are summed; `names` label them."""

    vectors: np.ndarray
    names: tuple = ()

    def __post_init__(self):
        vectors = np.asarray(self.vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors[None]
        if vectors.ndim != 2 or not vectors.shape[0]:
            raise ValueError(f"A query needs a (T, d) array of tag vectors, got shape {vectors.shape}.")
        if not np.isfinite(vectors).all() or not np.linalg.norm(vectors, axis=1).all():
            raise ValueError("Query vectors must be finite and non-zero.")
        object.__setattr__(self, "vectors", l2_normalize(vectors))
        names = tuple(str(n) for n in self.names) or tuple(f"vector {i}" for i in range(len(vectors)))
        if len(names) != len(vectors):
            raise ValueError(f"{len(names)} names for {len(vectors)} query vectors.")
        object.__setattr__(self, "names", names)


@dataclasses.dataclass(frozen=True)
class Hit:
    """One retrieved image: its id, score, the dominant row of each query tag and, from a
    calibrated index, each query tag's probability."""

    id: str
    score: float
    rows: tuple
    probabilities: tuple = ()

    def to_dict(self):
        probabilities = {"probabilities": list(self.probabilities)} if self.probabilities else {}
        return {"id": self.id, "score": self.score, "rows": list(self.rows), **probabilities}


def tag_query(names, vocabulary=None, word_vectors=None, allow_pickle=False):
    """A Query for tag names: each is looked up in the vocabulary, else in a word-vector file
    (any `load_tag_vectors` format; multi-word names average their words), so any word
    with a vector is a query, seen in training or not.

    Raises KeyError naming every tag found in neither.
    """
    names = [str(n) for n in ([names] if isinstance(names, str) else names)]
    if not names:
        raise ValueError("A query needs at least one tag.")
    found = {}
    if vocabulary is not None:
        found.update({n: vocabulary.vectors[vocabulary.tags.index(n)] for n in names if n in vocabulary.tags})
    missing = [n for n in names if n not in found]
    if missing and word_vectors:
        tags, vectors = load_tag_vectors(word_vectors, missing, on_missing="skip", allow_pickle=allow_pickle)
        found.update(zip(tags, vectors))
    missing = [n for n in names if n not in found]
    if missing:
        sources = [s for s in ("the index's vocabulary" if vocabulary is not None else "", word_vectors) if s]
        where = " or ".join(sources) if sources else "nowhere (the index has no vocabulary; pass word vectors)"
        raise KeyError(f"No vector for tag(s) {missing}: looked in {where}.")
    return Query(np.stack([found[n] for n in names]), names)


def query_from(tags=(), vector_file=None, vocabulary=None, word_vectors=None, allow_pickle=False, texts=(),
               tag_encoder=None, templates=None, cache_dir=None):
    """A Query from tag names (`tag_query`), from an .npy of vectors, (d,) or (T, d), or from
    free `texts` embedded by a keras_hub text encoder (`tag_encoder`, the index's run's, with
    its prompt `templates`)."""
    if texts:
        if tags or vector_file:
            raise ValueError("Pass texts, tags or a vector file, one of them.")
        if not tag_encoder:
            raise ValueError("A free-text query needs the text encoder of the index's run (--tag_encoder).")
        from sdl_keras.embeddings.text_encoder import encode_tags, parse_templates

        return Query(encode_tags(texts, tag_encoder, parse_templates(templates), cache_dir), list(texts))
    if vector_file:
        if tags:
            raise ValueError("Pass tags or a vector file, not both.")
        return Query(np.load(vector_file, allow_pickle=False))
    if not tags:
        raise ValueError("A query needs --tag (repeatable) or --vector_file.")
    return tag_query(tags, vocabulary, word_vectors, allow_pickle)


def format_hits(query, hits, as_json=False):
    """The hits of `query` as a table (rank, score, dominant rows, probabilities, id), or one
    JSON line."""
    if as_json:
        return json.dumps({"query": list(query.names), "hits": [h.to_dict() for h in hits]}, ensure_ascii=False)
    lines = [f"query: {' + '.join(query.names)}", f"{'rank':>4}  {'score':>9}  rows  probabilities  id"]
    for rank, hit in enumerate(hits, start=1):
        probabilities = ",".join(f"{p:.3f}" for p in hit.probabilities) or "-"
        lines.append(f"{rank:>4}  {hit.score:9.4f}  {','.join(map(str, hit.rows)):<4}  {probabilities:<13}  {hit.id}")
    return "\n".join(lines)


def describe_calibration(calibration):
    return "calibrated: hits with probabilities" if calibration is not None else "uncalibrated"


def check_min_probability(min_probability, calibration, location):
    """ValueError unless `min_probability` is None, or a probability and the index has a
    calibration to compute probabilities with."""
    if min_probability is None:
        return
    check_probability(min_probability, "min_probability")
    if calibration is None:
        raise ValueError(f"{location} has no calibration, so no probabilities to filter by: build it from a "
                         "calibrated run or export (python -m sdl_keras.calibrate).")


def checked_queries(queries, dim, min_probability, calibration, location):
    """`queries` as Query objects (from Queries or (T, d) / (d,) arrays), once their vectors are
    `dim`-d and `min_probability` is one the index at `location` can filter by."""
    check_min_probability(min_probability, calibration, location)
    queries = [q if isinstance(q, Query) else Query(q) for q in queries]
    for q in queries:
        if q.vectors.shape[1] != dim:
            raise ValueError(f"Query {list(q.names)} has {q.vectors.shape[1]}-d vectors; the index holds {dim}-d rows.")
    return queries


def with_probabilities(hits, query, matrices, calibration, vocabulary, aggregation="max", min_probability=None):
    """The hits of a query, each with its query tags' probabilities (module docstring)
    computed from the hits' (n, M, d) matrices, less those where one is below
    `min_probability`."""
    if calibration is None or not hits:
        return hits
    vocabulary_scores = None
    if calibration.unseen_pooling == "rank":
        vocabulary_scores, _ = _score(matrices, vocabulary.vectors, aggregation)
    scores, _ = _score(matrices, query.vectors, aggregation)
    probabilities = calibration.tag_probabilities(scores, query.names, vocabulary_scores)
    hits = [dataclasses.replace(h, probabilities=tuple(float(p) for p in row)) for h, row in zip(hits, probabilities)]
    return hits if min_probability is None else [h for h in hits if min(h.probabilities) >= min_probability]


def _score(matrices, vectors, aggregation="max"):
    """(n, M, d) matrices x (V, d) vectors -> (scores (n, V), rows (n, V))."""
    n, num_rows, dim = matrices.shape
    products = _dot(np.asarray(matrices, dtype=np.float32).reshape(-1, dim), vectors).reshape(n, num_rows, len(vectors))
    return _aggregate(products, aggregation)


def _aggregate(products, aggregation):
    """(n, M, V) row-tag products -> (scores (n, V), dominant rows (n, V)), as sdl_keras.scoring."""
    if aggregation == "max":
        return products.max(axis=1), products.argmax(axis=1)
    squared = np.square(products)
    return np.sqrt(squared.sum(axis=1)), squared.argmax(axis=1)


def _products(source, indices, vectors, which, block=1024):
    """(n, M) products source[indices[i]] @ vectors[which[i]] of matrices (or (n, 1) of rows,
    source of shape (R, 1, d)), read in blocks in index order: a memory-mapped file is read
    forwards, through a buffer that is reused."""
    out = np.empty((len(indices), source.shape[1]), np.float32)
    order = np.argsort(indices, kind="stable")
    buffer = np.empty((min(block, len(indices)),) + source.shape[1:], source.dtype)
    for start in range(0, len(order), block):
        part = order[start : start + block]
        matrices = np.take(source, indices[part], axis=0, out=buffer[: len(part)])
        out[part] = np.matmul(matrices.astype(np.float32, copy=False), vectors[which[part]][:, :, None])[:, :, 0]
    return out


def _dot(rows, vectors):
    """(R, d) x (V, d) -> (R, V). Small products (re-scoring candidates) run on one thread:
    OpenBLAS wakes all its threads for any matrix product, which costs far more than the
    product itself on a busy machine (measured: 6.7 ms against 0.1 ms for 2000 x 300)."""
    if rows.shape[0] * vectors.shape[0] < SMALL_PRODUCT:
        return np.einsum("rd,vd->rv", rows, vectors)
    return rows @ vectors.T


class _TopK:
    """The k best (score, image) pairs seen so far; ties keep the lower image index."""

    def __init__(self, k, num_tags):
        self.k = k
        self.scores = np.empty(0, np.float32)
        self.images = np.empty(0, np.int64)
        self.rows = np.empty((0, num_tags), np.int64)

    @property
    def floor(self):
        """Scores must beat this to enter (images arrive in increasing index order)."""
        return self.scores[-1] if len(self.scores) >= self.k else -np.inf

    def offer(self, scores, images, rows):
        scores = np.concatenate([self.scores, scores])
        images = np.concatenate([self.images, images])
        rows = np.concatenate([self.rows, rows])
        order = np.lexsort((images, -scores))[: self.k]
        self.scores, self.images, self.rows = scores[order], images[order], rows[order]


class _Shard:
    def __init__(self, directory, name, count, num_rows, dim, dtype):
        self.directory = os.path.join(directory, name)
        self.name, self.count = name, count
        path = os.path.join(self.directory, "matrices" + DTYPES[dtype])
        expected = count * num_rows * dim * np.dtype(dtype).itemsize
        if not os.path.exists(path) or os.path.getsize(path) != expected:
            raise ValueError(
                f"{path}: missing or not {count} x {num_rows} x {dim} {dtype} values; the index is damaged."
            )
        self.matrices = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", shape=(count, num_rows, dim))
        self._ids = None
        self._searcher = None

    @property
    def ids(self):
        if self._ids is None:
            with open(os.path.join(self.directory, IDS_FILE), encoding="utf-8") as f:
                self._ids = [json.loads(line) for line in f]
            if len(self._ids) != self.count:
                raise ValueError(f"{self.directory}/{IDS_FILE}: {len(self._ids)} ids for {self.count} images.")
        return self._ids

    def searcher(self):
        if self._searcher is None:
            path = os.path.join(self.directory, SCANN_DIR)
            if not os.path.isdir(path):
                raise FileNotFoundError(f"{path}: this shard has no ScaNN searcher (built without ScaNN options).")
            self._searcher = scann_module().load_searcher(path)
        return self._searcher


_SCANN = None


def scann_module():
    """ScaNN's NumPy API, `scann.scann_ops.py.scann_ops_pybind`.

    scann 1.4.2's package `__init__` also loads its TensorFlow custom op, compiled against
    TensorFlow 2.20: under TensorFlow 2.21 that load fails (tensorflow NotFoundError,
    an undefined absl symbol) after the NumPy API module has been imported. The NumPy
    API does not use TensorFlow, so that error is set aside and the module kept.
    """
    global _SCANN
    if _SCANN is None:
        try:
            from scann.scann_ops.py import scann_ops_pybind as module
        except ImportError as error:
            raise ImportError("Approximate search needs ScaNN: pip install scann (see requirements.txt).") from error
        except Exception as error:  # noqa: BLE001  the TensorFlow op's load error, see above
            module = sys.modules.get("scann.scann_ops.py.scann_ops_pybind")
            if module is None:
                raise ImportError(f"ScaNN could not be imported: {type(error).__name__}: {error}") from error
        _SCANN = module
    return _SCANN


def build_searcher(rows, options=ScannOptions()):
    """A ScaNN dot-product searcher over (R, d) float32 rows, as `options` say."""
    scann = scann_module()
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    num_leaves = options.num_leaves or int(math.sqrt(rows.shape[0]))
    builder = scann.builder(rows, 10, "dot_product")
    if num_leaves < options.min_leaves:
        return builder.score_brute_force().build()
    to_search = options.leaves_to_search or max(1, math.ceil(options.leaves_fraction * num_leaves))
    builder = builder.tree(
        num_leaves=num_leaves,
        num_leaves_to_search=min(to_search, num_leaves),
        training_sample_size=min(options.training_sample_size, rows.shape[0]),
    )
    builder = builder.score_ah(
        options.dims_per_block,
        anisotropic_quantization_threshold=options.anisotropic_threshold,
        training_sample_size=min(options.training_sample_size, rows.shape[0]),
    )
    return builder.build()


@functools.lru_cache(maxsize=None)
def _workers(pid, threads):
    """The process's pool of `threads` threads for ScaNN search tasks, kept between searches:
    starting two threads took 1.5 ms here, a sixth of a one-query search of 1,000,000 images.
    Keyed by pid, as a forked child has none of its parent's threads."""
    del pid
    return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="sdl_keras.retrieval")


def _exclusive(method):
    """A method that changes the index, run under its writer lock (`WriterLock`, waiting up
    to `lock_timeout` s) on the index as it now is on disk: another writer may have added
    shards since this one was loaded."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with WriterLock(self.directory, self.lock_timeout):
            current = type(self).load(self.directory)
            if current.meta != self.meta:
                self.meta, self.shards = current.meta, current.shards
            return method(self, *args, **kwargs)

    return locked


class RetrievalIndex:
    """An index directory of image matrices (see the module docstring).

    Shape contract: every image's A is (num_rows, dim); query vectors are (T, dim).

    Create with `RetrievalIndex.create`, open with `RetrievalIndex.load`, grow with `add`.
    Writers wait `lock_timeout` seconds for another one's lock (0: fail at once, None:
    as long as it takes).
    """

    lock_timeout = 0

    def __init__(self, directory, meta, vocabulary=None, calibration=None):
        self.directory = directory
        self.meta = meta
        self.vocabulary = vocabulary
        self.calibration = calibration
        self.shards = [
            _Shard(directory, s["name"], s["count"], self.num_rows, self.dim, self.dtype) for s in meta["shards"]
        ]

    # -- properties -------------------------------------------------------------------------
    num_rows = property(lambda self: self.meta["num_rows"])
    dim = property(lambda self: self.meta["dim"])
    dtype = property(lambda self: self.meta["dtype"])
    aggregation = property(lambda self: self.meta["aggregation"])

    @property
    def scann_options(self):
        options = self.meta.get("scann")
        return None if options is None else ScannOptions(**options)

    def __len__(self):
        return sum(s.count for s in self.shards)

    def describe(self):
        search = "exact and ScaNN" if self.scann_options else "exact"
        return f"{self.num_rows} x {self.dim} {self.dtype}, {search} search, {describe_calibration(self.calibration)}"

    @property
    def ids(self):
        return [i for s in self.shards for i in s.ids]

    # -- creating and loading ---------------------------------------------------------------
    @classmethod
    def create(
        cls, directory, num_rows, dim, dtype="float32", aggregation="max", vocabulary=None, scann=None,
        source=None, overwrite=False, calibration=None,
    ):
        """An empty index at `directory`.

        Args:
            num_rows, dim: M and d of the model's matrices.
            dtype: "float32", or "float16" to halve the storage (scores are then computed
                from float16-rounded matrices).
            aggregation: the run's row aggregation, "max" (SDL) or "l2" (baseline).
            vocabulary: a TagVocabulary stored with the index, so queries can name tags.
            scann: ScannOptions to build a ScaNN searcher per shard, or None (exact only).
            source: a JSON-able description of the model the matrices come from.
            overwrite: replace an existing index at `directory`.
            calibration: the model's Calibration, stored for probabilities; it needs the
                vocabulary it was fitted for.
        """
        if calibration is not None:
            if vocabulary is None:
                raise ValueError("A calibration is stored with the vocabulary it was fitted for: pass both.")
            calibration.check_tags(vocabulary.tags, "the index's vocabulary")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        if scann is not None and aggregation != "max":
            raise ValueError(SCANN_NEEDS_MAX)
        if vocabulary is not None and vocabulary.dim != dim:
            raise ValueError(f"The vocabulary's vectors have {vocabulary.dim} dimensions, the matrices {dim}.")
        if os.path.exists(os.path.join(directory, INDEX_FILE)):
            if not overwrite:
                raise FileExistsError(f"{directory} already holds an index; add to it, or pass overwrite.")
            with WriterLock(directory, cls.lock_timeout):  # never under a live writer; the lock file stays
                for name in set(os.listdir(directory)) - {LOCK_FILE}:
                    path = os.path.join(directory, name)
                    if os.path.isdir(path):
                        shutil.rmtree(path)
                    else:
                        os.remove(path)
        os.makedirs(directory, exist_ok=True)
        if vocabulary is not None:
            vocabulary.save(os.path.join(directory, VOCABULARY_FILE))
        if calibration is not None:
            calibration.save(os.path.join(directory, CALIBRATION_FILE))
        meta = {
            "format": FORMAT,
            "num_rows": int(num_rows),
            "dim": int(dim),
            "dtype": dtype,
            "aggregation": aggregation,
            "scann": None if scann is None else dataclasses.asdict(scann),
            "source": source,
            "shards": [],
        }
        _write_json(os.path.join(directory, INDEX_FILE), meta)
        return cls(directory, meta, vocabulary, calibration)

    @classmethod
    def load(cls, directory):
        path = os.path.join(directory, INDEX_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{directory} is not a retrieval index: no {INDEX_FILE}.")
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}.")
        vocabulary_path = os.path.join(directory, VOCABULARY_FILE)
        vocabulary = TagVocabulary.load(vocabulary_path) if os.path.exists(vocabulary_path) else None
        calibration_path = os.path.join(directory, CALIBRATION_FILE)
        calibration = Calibration.load(calibration_path) if os.path.exists(calibration_path) else None
        return cls(directory, meta, vocabulary, calibration)

    # -- adding -----------------------------------------------------------------------------
    @_exclusive
    def add(self, batches, shard_size=100_000):
        """Adds images from an iterable of (ids, matrices (n, M, d)) batches; returns how many.

        New shards of at most `shard_size` images are written (and their ScaNN searchers
        built, when the index has ScaNN options), then index.json is replaced. Ids must be
        new and unique; on any error the index is left unchanged.
        """
        known = set(self.ids)
        taken = {s["name"] for s in self.meta["shards"]}
        self._remove_unlisted_shards()
        written = []
        try:
            writer = None
            for ids, matrices in batches:
                ids, matrices = check_batch(ids, matrices, self.num_rows, self.dim, known)
                known.update(ids)
                start = 0
                while start < len(ids):
                    if writer is None:
                        name = _next_name(taken)
                        taken.add(name)
                        writer = _ShardWriter(self.directory, name, self.dtype)
                    take = min(shard_size - writer.count, len(ids) - start)
                    writer.write(ids[start : start + take], matrices[start : start + take])
                    start += take
                    if writer.count >= shard_size:
                        written.append(self._finish(writer))
                        writer = None
            if writer is not None and writer.count:
                written.append(self._finish(writer))
            elif writer is not None:
                writer.discard()
        except BaseException:
            if writer is not None:
                writer.discard()
            for shard in written:
                shutil.rmtree(os.path.join(self.directory, shard["name"]), ignore_errors=True)
            raise
        if written:
            meta = dict(self.meta, shards=self.meta["shards"] + written)
            _write_json(os.path.join(self.directory, INDEX_FILE), meta)
            self.meta = meta
            self.shards += [
                _Shard(self.directory, s["name"], s["count"], self.num_rows, self.dim, self.dtype) for s in written
            ]
        return sum(s["count"] for s in written)

    def _finish(self, writer):
        writer.close()
        if self.scann_options is not None:
            shard = _Shard(self.directory, writer.name, writer.count, self.num_rows, self.dim, self.dtype)
            self._build_searcher(shard, self.scann_options)
        return {"name": writer.name, "count": writer.count}

    def _build_searcher(self, shard, options):
        logger.info("Building the ScaNN searcher of %s (%d rows).", shard.name, shard.count * self.num_rows)
        _write_searcher(shard.directory, np.asarray(shard.matrices, dtype=np.float32).reshape(-1, self.dim), options)
        shard._searcher = None

    @_exclusive
    def build_searchers(self, options=ScannOptions()):
        """(Re)builds every shard's ScaNN searcher with `options`, which later adds also use:
        turns approximate search on for an exact-only index, or retunes it."""
        if self.aggregation != "max":
            raise ValueError(SCANN_NEEDS_MAX)
        for shard in self.shards:
            self._build_searcher(shard, options)
        self.meta = dict(self.meta, scann=dataclasses.asdict(options))
        _write_json(os.path.join(self.directory, INDEX_FILE), self.meta)

    @_exclusive
    def attach(self, entries):
        """Lists shards written into the index's folder by `write_shard` (by Beam workers, say)
        in index.json, in name order, replacing it atomically; returns how many images they
        hold. Their files and ids are checked first: the sizes, and ids new and unique. The
        writer holds the lock while the shards are written (else the next writer removes
        them as unfinished) and through this call (the lock is re-entrant)."""
        entries = sorted(entries, key=lambda e: e["name"])
        listed = {s["name"] for s in self.meta["shards"]}
        clash = sorted(e["name"] for e in entries if e["name"] in listed)
        if clash:
            raise ValueError(f"{self.directory}: shard(s) {clash} are already listed in {INDEX_FILE}.")
        shards = [_Shard(self.directory, e["name"], e["count"], self.num_rows, self.dim, self.dtype) for e in entries]
        known, repeated = set(self.ids), []
        for image_id in (i for shard in shards for i in shard.ids):
            if image_id in known:
                repeated.append(image_id)
            known.add(image_id)
        if repeated:
            raise ValueError(f"Image id(s) already in the index or repeated: {repeated[:10]}")
        meta = dict(self.meta, shards=self.meta["shards"] + [{"name": e["name"], "count": e["count"]} for e in entries])
        _write_json(os.path.join(self.directory, INDEX_FILE), meta)
        self.meta = meta
        self.shards += shards
        return sum(s.count for s in shards)

    def _remove_unlisted_shards(self):
        """Shard folders a failed or killed add left behind (never listed in index.json); the
        writer lock keeps out any live writer, whose shards these could otherwise be."""
        listed = {s["name"] for s in self.meta["shards"]}
        for name in os.listdir(self.directory):
            if name.startswith("shard-") and name not in listed:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    # -- searching --------------------------------------------------------------------------
    def search(self, query, k=10, method="exact", **kwargs):
        """The k best images for one Query (or tag vectors), best first: a list of Hit."""
        return self.search_batch([query], k, method, **kwargs)[0]

    def search_batch(
        self, queries, k=10, method="exact", chunk_images=None, num_candidates=None, leaves_to_search=None,
        min_probability=None, threads=None,
    ):
        """The k best images for each query, all scored in one pass over the index.

        Args:
            queries: Query objects (or (T, d) / (d,) arrays of tag vectors).
            k: hits per query (at most the index size).
            method: "exact" or "scann".
            chunk_images: images scored per step of exact search (default: ~32 MB of matrices).
            num_candidates, leaves_to_search: override the index's ScaNN options per search.
            min_probability: leave out the hits where a query tag's probability is below
                it (a calibrated index only; module docstring).
            threads: threads of a ScaNN search (default: the CPUs this process may use).

        Returns:
            one list of Hit per query.
        """
        queries = checked_queries(queries, self.dim, min_probability, self.calibration, self.directory)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}.")
        threads = len(os.sched_getaffinity(0)) if threads is None else int(threads)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}.")
        if not queries or not len(self):
            return [[] for _ in queries]
        vectors = np.concatenate([q.vectors for q in queries])
        columns = np.split(np.arange(len(vectors)), np.cumsum([len(q.vectors) for q in queries])[:-1])
        tops = [_TopK(k, len(c)) for c in columns]
        if method == "exact":
            self._exact(vectors, columns, tops, chunk_images)
        else:
            self._approximate(vectors, columns, tops, k, num_candidates, leaves_to_search, threads)
        results = []
        for query, top in zip(queries, tops):
            # From Python lists, not NumPy scalars: 14 ms, not 27, for 100 queries of 100 hits.
            hits = [Hit(i, s, tuple(rows))
                    for i, s, rows in zip(self._ids_at(top.images), top.scores.tolist(), top.rows.tolist())]
            if self.calibration is not None and hits:
                hits = with_probabilities(hits, query, self._matrices(top.images), self.calibration, self.vocabulary,
                                          self.aggregation, min_probability)
            results.append(hits)
        return results

    def _locate(self, images):
        """(shard, position in it) of each image at a global position (shards in order)."""
        starts = np.cumsum([0] + [s.count for s in self.shards])
        shard_of = np.searchsorted(starts, images, side="right") - 1
        return zip(shard_of.tolist(), (np.asarray(images) - starts[shard_of]).tolist())

    def _matrices(self, images):
        """(n, M, d) float32 matrices of the images at global positions."""
        return np.stack([np.asarray(self.shards[s].matrices[i], np.float32) for s, i in self._locate(images)])

    def _ids_at(self, images):
        """The ids of the images at global positions."""
        return [self.shards[s].ids[i] for s, i in self._locate(images)]

    def _score(self, matrices, vectors):
        return _score(matrices, vectors, self.aggregation)

    def _chunk(self, chunk_images=None):
        return int(chunk_images or max(1, CHUNK_BYTES // (4 * self.num_rows * self.dim)))

    def _exact(self, vectors, columns, tops, chunk_images):
        base = 0
        for shard in self.shards:
            self._exact_shard(shard, base, vectors, columns, tops, self._chunk(chunk_images))
            base += shard.count

    def _exact_shard(self, shard, base, vectors, columns, tops, chunk):
        for start in range(0, shard.count, chunk):
            scores, rows = self._score(shard.matrices[start : start + chunk], vectors)
            combined = np.stack([scores[:, c].sum(axis=1) for c in columns], axis=1)
            floors = np.array([t.floor for t in tops], dtype=np.float32)
            entering = combined > floors[None, :]
            for q in np.nonzero(entering.any(axis=0))[0]:
                picked = np.nonzero(entering[:, q])[0]
                tops[q].offer(combined[picked, q], base + start + picked, rows[picked][:, columns[q]])

    def _approximate(self, vectors, columns, tops, k, num_candidates, leaves_to_search, threads):
        options = self.scann_options
        if options is None:
            raise ValueError(f"{self.directory} was built without ScaNN searchers; search it with method='exact'.")
        wanted = int(num_candidates or options.num_candidates or max(options.candidates_per_hit * k, 1000))
        rescored = max(options.rescore_per_hit * k, k)
        tasks, base = [], 0
        for shard in self.shards:
            if shard.count * self.num_rows < options.exact_below_rows:
                self._exact_shard(shard, base, vectors, columns, tops, self._chunk())
            else:
                shard.searcher()  # loaded here, not by two workers at once
                tasks.append((shard, base))
            base += shard.count
        # A batch is split into (shard, group of queries) tasks run on `threads` threads:
        # ScaNN's search and NumPy's gathers of candidate rows release the GIL, and both
        # are bound by one core's memory bandwidth, so a batch's throughput grows with the
        # cores. At least two tasks per thread keep them busy while the results are merged.
        per_shard = 1 if threads == 1 else min(len(columns), -(-2 * threads // max(len(tasks), 1)))
        groups = np.array_split(np.arange(len(columns)), per_shard)
        tasks = [(shard, base, group) for shard, base in tasks for group in groups]
        search = functools.partial(self._search_shard, vectors=vectors, columns=columns, count=wanted,
                                   rescored=rescored, leaves_to_search=leaves_to_search or options.leaves_to_search)
        mapper = _workers(os.getpid(), threads).map if threads > 1 and len(tasks) > 1 else map
        for (_, base, group), found in zip(tasks, mapper(search, [(shard, group) for shard, _, group in tasks])):
            for q, scores, images, rows in found:
                tops[group[q]].offer(scores, base + images, rows)

    def _search_shard(self, task, vectors, columns, count, rescored, leaves_to_search):
        """[(query in the group, exact scores, images in the shard, dominant rows)] of one
        (shard, group of queries) task: ScaNN's candidates, re-scored exactly."""
        shard, group = task
        columns = [columns[q] for q in group]
        vectors = vectors[np.concatenate(columns)]
        columns = np.split(np.arange(len(vectors)), np.cumsum([len(c) for c in columns])[:-1])
        count = min(count, shard.count * self.num_rows)
        found, distances = shard.searcher().search_batched(
            vectors, final_num_neighbors=count, pre_reorder_num_neighbors=count, leaves_to_search=leaves_to_search
        )
        queries, images = self._candidates(shard, np.asarray(found), np.asarray(distances), vectors, columns, rescored)
        return self._rescore(shard, queries, images, vectors, columns)

    def _candidates(self, shard, found, distances, vectors, columns, rescored):
        """(queries, images): per query, the `rescored` images of a shard to re-score exactly,
        sorted by query. ScaNN lists each tag's rows best first, so an image's first listed
        row is its best by ScaNN's (approximate) products; that row is read and its exact
        product bounds the image's score from below; the images with the best bounds are
        kept (for several tags, the sum of their bounds, a tag that did not bound an image
        counting its lowest). Each tag's results are one row of (V, C) arrays, so all the
        tags of a batch go through each step at once."""
        found = found.astype(np.int64)  # ScaNN answers uint32 row numbers
        images = np.where(np.isfinite(distances), found // self.num_rows, -1)  # -1: ScaNN's padding
        order = np.argsort(images, axis=1, kind="stable")
        ranked = np.take_along_axis(images, order, axis=1)
        first_in_ranked = ranked >= 0
        first_in_ranked[:, 1:] &= ranked[:, 1:] != ranked[:, :-1]
        first = np.zeros_like(first_in_ranked)
        np.put_along_axis(first, order, first_in_ranked, axis=1)
        tags, positions = np.nonzero(first)
        bounds = np.full(images.shape, -np.inf, np.float32)
        rows = found[tags, positions]
        bounds[tags, positions] = _products(shard.matrices.reshape(-1, 1, self.dim), rows, vectors, tags)[:, 0]
        queries, kept = [], []
        for q, cols in enumerate(columns):
            if len(cols) == 1:
                continue
            bounded_images = [(images[c][first[c]], bounds[c][first[c]]) for c in cols if first[c].any()]
            if not bounded_images:
                continue
            united = np.unique(np.concatenate([i for i, _ in bounded_images]))
            total = np.zeros(len(united), np.float32)
            for tag_images, tag_bounds in bounded_images:
                filled = np.full(len(united), tag_bounds.min(), np.float32)
                filled[np.searchsorted(united, tag_images)] = tag_bounds
                total += filled
            best = np.sort(united[np.argsort(-total, kind="stable")[:rescored]])
            queries.append(np.full(len(best), q))
            kept.append(best)
        single = np.array([q for q, cols in enumerate(columns) if len(cols) == 1], dtype=np.int64)
        if len(single):
            tag_bounds = bounds[[columns[q][0] for q in single]]
            take = min(rescored, tag_bounds.shape[1])
            top = np.argpartition(-tag_bounds, take - 1, axis=1)[:, :take]
            usable = np.take_along_axis(tag_bounds, top, axis=1) > -np.inf
            top_images = np.take_along_axis(images[[columns[q][0] for q in single]], top, axis=1)
            queries.append(np.repeat(single, usable.sum(axis=1)))
            kept.append(top_images[usable])
        if not queries:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        queries, images = np.concatenate(queries), np.concatenate(kept)
        order = np.argsort(queries, kind="stable")
        return queries[order], images[order]

    def _rescore(self, shard, queries, images, vectors, columns):
        """Exact scores of (query, image) pairs over all the images' rows:
        [(query, scores, images, dominant rows)]."""
        sizes = np.array([len(c) for c in columns])
        firsts = np.array([c[0] for c in columns])
        # One entry per (pair, tag of its query): its image's matrix times the tag's vector.
        pair = np.repeat(np.arange(len(queries)), sizes[queries])
        pair_starts = np.cumsum(sizes[queries]) - sizes[queries]
        tags = firsts[queries][pair] + np.arange(len(pair)) - pair_starts[pair]
        products = _products(shard.matrices, images[pair], vectors, tags)
        entry_scores, entry_rows = _aggregate(products[:, :, None], self.aggregation)
        scores = np.add.reduceat(entry_scores[:, 0], pair_starts) if len(pair) else entry_scores[:, 0]
        bounds = np.searchsorted(queries, np.arange(len(columns) + 1))
        found = []
        for q in range(len(columns)):
            pairs = np.arange(bounds[q], bounds[q + 1])
            if len(pairs):
                rows = entry_rows[pair_starts[pairs][:, None] + np.arange(sizes[q])[None, :], 0]
                found.append((q, scores[pairs], images[pairs], rows))
        return found


def check_batch(ids, matrices, num_rows, dim, known=()):
    """(ids as strings, matrices as an array) of one batch to add, or ValueError saying what
    is wrong: the shape, the count, a non-finite value, or an id in `known` or repeated."""
    ids = [str(i) for i in ids]
    matrices = np.asarray(matrices)
    if matrices.ndim != 3 or matrices.shape[1:] != (num_rows, dim):
        raise ValueError(f"Matrices of shape {matrices.shape[1:]} for an index of ({num_rows}, {dim}) ones.")
    if len(ids) != len(matrices):
        raise ValueError(f"{len(ids)} ids for {len(matrices)} matrices.")
    if not np.isfinite(matrices).all():
        bad = [ids[i] for i in np.nonzero(~np.isfinite(matrices).all(axis=(1, 2)))[0][:5]]
        raise ValueError(f"Non-finite values in the matrices of image(s) {bad}.")
    repeated = [i for i in ids if i in known]
    if repeated or len(set(ids)) != len(ids):
        dupes = repeated or sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"Image id(s) already in the index or repeated: {dupes[:10]}")
    return ids, matrices


class _ShardWriter:
    """Streams matrices and ids into a new shard folder."""

    def __init__(self, directory, name, dtype):
        self.name = name
        self.folder = os.path.join(directory, name)
        os.makedirs(self.folder)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.path = os.path.join(self.folder, "matrices" + DTYPES[dtype])
        self._matrices = open(self.path, "wb")
        self._ids = open(os.path.join(self.folder, IDS_FILE), "w", encoding="utf-8")
        self.count = 0

    def write(self, ids, matrices):
        self._matrices.write(np.ascontiguousarray(matrices, dtype=self.dtype).tobytes())
        self._ids.writelines(json.dumps(i, ensure_ascii=False) + "\n" for i in ids)
        self.count += len(ids)

    def close(self):
        self._matrices.close()
        self._ids.close()

    def discard(self):
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def write_shard(directory, name, ids, matrices, dtype="float32", scann=None):
    """Writes one shard folder DIRECTORY/NAME of (n, M, d) matrices and their ids (and its
    ScaNN searcher with `scann` options), not yet listed in any index: `RetrievalIndex.attach`
    lists it. Returns its entry {"name", "count"}. A folder of that name is replaced: an
    earlier attempt's (a Beam bundle retried after its worker died)."""
    shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    writer = _ShardWriter(directory, name, dtype)
    try:
        writer.write([str(i) for i in ids], matrices)
        writer.close()
        if scann is not None:
            stored = np.asarray(matrices).astype(dtype).astype(np.float32)
            _write_searcher(writer.folder, stored.reshape(-1, stored.shape[-1]), scann)
    except BaseException:
        writer.discard()
        raise
    return {"name": name, "count": writer.count}


def _write_searcher(folder, rows, options):
    """Builds the ScaNN searcher of (R, d) rows and serializes it into FOLDER/scann."""
    searcher = build_searcher(rows, options)
    path = os.path.join(folder, SCANN_DIR)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    searcher.serialize(path, relative_path=True)


def _next_name(taken):
    number = 0
    while f"shard-{number:05d}" in taken:
        number += 1
    return f"shard-{number:05d}"


def _write_json(path, value):
    """Writes JSON through a temporary file and a rename: readers see the old or the new file."""
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
    os.replace(temporary, path)


def build_index(directory, batches, dtype="float32", aggregation="max", vocabulary=None, scann=None,
                source=None, shard_size=100_000, overwrite=False, calibration=None):
    """Creates an index from (ids, matrices) batches, taking M and d from the first batch."""
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError(f"No images to index into {directory}.")
    shape = np.shape(first[1])
    if len(shape) != 3:
        raise ValueError(f"Expected (n, M, d) matrices, got shape {shape}.")
    index = RetrievalIndex.create(
        directory, shape[1], shape[2], dtype, aggregation, vocabulary, scann, source, overwrite, calibration
    )

    def all_batches():
        yield first
        yield from batches

    index.add(all_batches(), shard_size)
    return index

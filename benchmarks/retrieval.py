"""Tag-based retrieval at scale: exact search against ScaNN over 1,000,000 images x M=7 x d=300.

    python benchmarks/retrieval.py [--images=1000000] [--dtype=float32] [--index_dir=/tmp/retrieval_bench]
    python benchmarks/retrieval.py --images=200000   # + milvus-lite FLAT and IVF_FLAT, side by side
    python benchmarks/retrieval.py --small_shards     # where ScaNN stops paying on a small shard

The matrices are generated with the structure trained SDL matrices have, not noise:
300 tag-like directions ("concepts") grouped under 30 topics, as related words'
vectors are; each image holds 1-7 concepts drawn by a Zipf-like popularity, and each
of its M rows is one of them (rows cycle through them) with a random scale and a
perturbation (cosine ~0.75 to its concept). Queries are 60 concept vectors (seen tags)
and 40 vectors that are not cluster centres: pairs of related concepts averaged, and
new directions within a topic (unseen tags).

Reports: index build time (writing the matrices; building the ScaNN searchers), its
size on disk and in memory, queries/s of exact and ScaNN search, one query at a time
(ScaNN: its shards on every CPU, and on one thread) and 100 at once (the fastest of
--repeats runs), and ScaNN's recall@100 against exact search; then the same figures
side by side with a milvus-lite collection of the same matrices per --milvus index type
(FLAT and IVF_FLAT up to 200,000 images, by default none above: milvus-lite holds every
row in its own memory, 2.0-2.7 GiB at 200,000 images, and takes 4-5 minutes per 200,000 to
insert and index them). Takes several minutes at the default size (most of it building the
ScaNN searchers); --images=200000 with both Milvus index types about 13 minutes.
"""

import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from sdl_keras.retrieval import index as retrieval  # noqa: E402

flags.DEFINE_integer("images", 1_000_000, "Images in the index.")
flags.DEFINE_integer("num_rows", 7, "M, rows per image.")
flags.DEFINE_integer("dim", 300, "d, the word-vector size.")
flags.DEFINE_integer("concepts", 300, "Cluster centres (tag-like directions).")
flags.DEFINE_integer("queries", 100, "Queries (recall and batched timing).")
flags.DEFINE_integer("single_exact", 5, "Queries timed one at a time with exact search (each reads every row).")
flags.DEFINE_integer("k", 100, "Hits per query (recall@k).")
flags.DEFINE_enum("dtype", "float32", sorted(retrieval.DTYPES), "Storage of the matrices.")
flags.DEFINE_integer("shard_size", 250_000, "Images per shard.")
flags.DEFINE_float("leaves_fraction", retrieval.ScannOptions.leaves_fraction, "ScaNN partitions searched.")
flags.DEFINE_integer("num_candidates", None, "Rows per query tag and shard before re-scoring (default: the index's).")
flags.DEFINE_string("index_dir", None, "Where to write the index (default: a temporary folder, removed after).")
flags.DEFINE_bool("reuse", False, "Search an index already at --index_dir instead of building one.")
flags.DEFINE_list("milvus", None, "milvus-lite index types measured beside the local index (default: FLAT and "
                  "IVF_FLAT up to 200,000 images, none above; --milvus= for none).")
flags.DEFINE_integer("ivf_nlist", 1024, "IVF_FLAT: lists (k-means cells) of the rows.")
flags.DEFINE_integer("ivf_nprobe", 32, "IVF_FLAT: lists a query scans.")
flags.DEFINE_integer("single_milvus", 20, "Queries timed one at a time on each Milvus index.")
flags.DEFINE_bool("small_shards", False, "Instead: exact against ScaNN on one small shard of each --small_sizes.")
flags.DEFINE_list("small_sizes", ["500", "1000", "2000", "3000", "5000", "10000"], "Images of the small shards.")
flags.DEFINE_integer("repeats", 3, "ScaNN timings: the fastest of this many runs.")
flags.DEFINE_integer("seed", 0, "Random seed.")
FLAGS = flags.FLAGS


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_concepts(rng, count, dim, topics=30):
    """Tag-like directions: each near one of `topics` topic directions, as related words are."""
    topic_vectors = unit(rng.standard_normal((topics, dim)))
    topic_of = rng.integers(0, topics, count)
    concepts = unit(0.6 * topic_vectors[topic_of] + 0.8 * unit(rng.standard_normal((count, dim))))
    return concepts, topic_vectors, topic_of


def image_batches(rng, concepts, images, num_rows, batch=20_000):
    """(ids, matrices) batches of images whose rows sit near the concepts they contain."""
    count, dim = concepts.shape
    popularity = 1.0 / (np.arange(count) + 5.0)
    popularity /= popularity.sum()
    for start in range(0, images, batch):
        n = min(batch, images - start)
        held = np.minimum(1 + rng.poisson(1.5, n), num_rows)
        chosen = rng.choice(count, size=(n, num_rows), p=popularity)
        # Rows cycle through the image's concepts: row m shows concept m mod |held|.
        slot = np.arange(num_rows)[None, :] % held[:, None]
        centres = concepts[np.take_along_axis(chosen, slot, axis=1)]
        noise = unit(rng.standard_normal((n, num_rows, dim)))
        scale = rng.lognormal(0.0, 0.3, (n, num_rows, 1)).astype(np.float32)
        matrices = scale * unit(centres + 0.9 * noise)
        yield [str(i) for i in range(start, start + n)], matrices


def make_queries(rng, concepts, topic_vectors, topic_of, count):
    """60% concept vectors (seen tags), 20% averaged related pairs, 20% new in-topic directions."""
    seen = concepts[rng.choice(len(concepts), int(0.6 * count), replace=False)]
    pairs = []
    while len(pairs) < int(0.2 * count):
        a = rng.integers(len(concepts))
        related = np.nonzero(topic_of == topic_of[a])[0]
        pairs.append(unit(concepts[a] + concepts[rng.choice(related)]))
    fresh_topics = topic_vectors[rng.integers(0, len(topic_vectors), count - len(seen) - len(pairs))]
    fresh = unit(0.6 * fresh_topics + 0.8 * unit(rng.standard_normal(fresh_topics.shape)))
    return np.concatenate([seen, np.array(pairs), fresh])


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def resident_gb():
    """(anonymous, file-backed) resident memory of this process in GiB: the process's own
    memory, and the pages of memory-mapped files it has read (the OS may drop those)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon", "RssFile")):
                values[line.split(":")[0]] = int(line.split()[1]) / 2**20
    return values.get("RssAnon", float("nan")), values.get("RssFile", float("nan"))


class PeakMemory:
    """The peak of `resident_gb()`, sampled every 0.2 s on a thread."""

    def __init__(self):
        self.peak = (0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self):
        while not self._stop.wait(0.2):
            self.peak = tuple(max(p, v) for p, v in zip(self.peak, resident_gb()))

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peak


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def data_batches():
    """The index's (ids, matrices) batches: the same for every backend (their own generator)."""
    rng = np.random.default_rng(FLAGS.seed)
    concepts, _, _ = make_concepts(rng, FLAGS.concepts, FLAGS.dim)
    return image_batches(np.random.default_rng(FLAGS.seed + 1), concepts, FLAGS.images, FLAGS.num_rows)


class TimedBatches:
    """`data_batches()`, counting the seconds spent generating them (left out of build times)."""

    def __init__(self):
        self.seconds = 0.0

    def __iter__(self):
        batches = data_batches()
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.seconds += time.perf_counter() - start
            if batch is None:
                return
            yield batch


def build(directory):
    """Writes the index and its ScaNN searchers; returns the build's table rows and times."""
    generated = TimedBatches()
    index = retrieval.RetrievalIndex.create(directory, FLAGS.num_rows, FLAGS.dim, FLAGS.dtype, overwrite=True)
    memory = PeakMemory()
    _, total = timed(index.add, iter(generated), FLAGS.shard_size)
    options = retrieval.ScannOptions(leaves_fraction=FLAGS.leaves_fraction)
    _, scann_time = timed(index.build_searchers, options)
    anonymous, mapped = memory.stop()
    shards = f"{len(index.shards)} shards of {FLAGS.shard_size:,} images"
    rows = [
        ("build: write matrices + ids", f"{total - generated.seconds:.1f} s",
         f"generating them took {generated.seconds:.1f} s more"),
        ("build: ScaNN searchers", f"{scann_time:.1f} s",
         f"{shards}, leaves sqrt(rows), {options.leaves_fraction:.0%} searched"),
        ("build: peak memory", f"{anonymous:.2f} GiB",
         f"own (anonymous); plus up to {mapped:.2f} GiB file-backed (mapped matrices, libraries)"),
    ]
    return rows, {"exact": total - generated.seconds, "scann": total - generated.seconds + scann_time}


def recall(found, exact):
    return np.array([len({h.id for h in a} & {h.id for h in e}) / max(len(e), 1) for a, e in zip(found, exact)])


def fastest(repeats, fn):
    """(result, seconds) of the fastest of `repeats` calls: the other jobs on the machine
    move a single timing by 10-20%."""
    runs = [timed(fn) for _ in range(repeats)]
    return min(runs, key=lambda run: run[1])


def search(index, queries):
    """Times exact and ScaNN search and measures ScaNN's recall; returns the table rows, the
    exact results and each method's figures."""
    k, n = FLAGS.k, len(queries)
    args = {"num_candidates": FLAGS.num_candidates}
    index.search(queries[0], k, "scann", **args)  # loads the searchers and the ids
    exact_all, exact_batch = timed(index.search_batch, list(queries), k, "exact")
    single = list(queries[: FLAGS.single_exact])
    _, exact_single = timed(lambda: [index.search(q, k, "exact") for q in single])
    approx_all, approx_batch = fastest(FLAGS.repeats, lambda: index.search_batch(list(queries), k, "scann", **args))
    _, approx_single = fastest(FLAGS.repeats, lambda: [index.search(q, k, "scann", **args) for q in queries])
    _, one_thread = fastest(FLAGS.repeats, lambda: [index.search(q, k, "scann", threads=1, **args) for q in queries])
    recalls = recall(approx_all, exact_all)
    seen = int(0.6 * n)  # make_queries puts the seen-tag queries first
    exact_qps, approx_qps, one_thread_qps = len(single) / exact_single, n / approx_single, n / one_thread
    threads = len(os.sched_getaffinity(0))
    anonymous, mapped = resident_gb()
    rows = [
        ("exact, one query at a time", f"{exact_qps:.2f} queries/s", f"mean of {len(single)}"),
        ("exact, 100 queries at once", f"{n / exact_batch:.2f} queries/s", "one pass over the matrices"),
        ("ScaNN, one query at a time", f"{approx_qps:.1f} queries/s",
         f"{approx_qps / exact_qps:.0f}x exact; its shards on {threads} threads"),
        ("ScaNN, one at a time, 1 thread", f"{one_thread_qps:.1f} queries/s", "threads=1"),
        ("ScaNN, 100 queries at once", f"{n / approx_batch:.1f} queries/s",
         f"{exact_batch / approx_batch:.0f}x exact, {approx_single / approx_batch:.1f}x ScaNN one at a time, "
         f"{one_thread / approx_batch:.1f}x on 1 thread"),
        (f"ScaNN recall@{k}", f"{recalls.mean():.4f}",
         f"min {recalls.min():.2f}; seen-tag queries {recalls[:seen].mean():.4f}, others {recalls[seen:].mean():.4f}"),
        ("search: memory", f"{anonymous:.2f} GiB",
         f"own (anonymous); plus {mapped:.2f} GiB file-backed (mapped matrices, libraries)"),
    ]
    figures = {
        "exact": {"recall": 1.0, "single": exact_qps, "batched": n / exact_batch},
        "scann": {"recall": recalls.mean(), "single": approx_qps, "batched": n / approx_batch,
                  "one_thread": one_thread_qps},
    }
    return rows, exact_all, figures


def milvus_backend(index_type, queries, exact_all, folder):
    """Builds a milvus-lite collection of the same matrices with `index_type` and measures it
    as the local methods are measured."""
    from sdl_keras.retrieval import MilvusIndex, MilvusOptions

    params, search_params = {}, {}
    if index_type == "IVF_FLAT":
        params, search_params = {"nlist": FLAGS.ivf_nlist}, {"nprobe": FLAGS.ivf_nprobe}
    before = resident_gb()[0]
    memory = PeakMemory()
    start = time.perf_counter()
    index = MilvusIndex.create(os.path.join(folder, f"{index_type.lower()}.db"), "bench", FLAGS.num_rows, FLAGS.dim,
                               MilvusOptions(index_type, params, search_params))
    generated = TimedBatches()
    index.add(iter(generated))  # one add: inserts, a flush and the commit
    index.search(queries[0], FLAGS.k)  # the first search waits for the index
    build_time = time.perf_counter() - start - generated.seconds
    peak = memory.stop()[0]
    k, n = FLAGS.k, len(queries)
    found, batched = timed(index.search_batch, list(queries), k)
    single = list(queries[: FLAGS.single_milvus])
    _, one_at_a_time = timed(lambda: [index.search(q, k) for q in single])
    own = resident_gb()[0]
    index.close()
    return {"recall": recall(found, exact_all).mean(), "single": len(single) / one_at_a_time, "batched": n / batched,
            "build": build_time, "memory": f"{peak - before:.2f} GiB peak, {own - before:.2f} GiB after",
            "note": json.dumps(params or {}) + (" " + json.dumps(search_params) if search_params else "")}


def side_by_side(figures):
    header = ("backend", "build", "memory (own)", f"recall@{FLAGS.k}", "one at a time", f"{FLAGS.queries} at once",
              "settings")
    rows = [header] + [
        (name, f"{f['build']:.1f} s" if np.isfinite(f["build"]) else "(reused)", f["memory"], f"{f['recall']:.4f}",
         f"{f['single']:.1f} q/s", f"{f['batched']:.1f} q/s", f.get("note", "")) for name, f in figures.items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [" | ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def small_shards(queries):
    """Exact against ScaNN search of one small shard, one query at a time, at the sizes of
    --small_sizes: where ScaNN stops paying (ScannOptions.exact_below_rows)."""
    rng = np.random.default_rng(FLAGS.seed)
    concepts, _, _ = make_concepts(rng, FLAGS.concepts, FLAGS.dim)
    lines = ["images | rows    | exact ms/query | ScaNN ms/query | ScaNN recall@10",
             "-------|---------|----------------|----------------|----------------"]
    forced = retrieval.ScannOptions(leaves_fraction=FLAGS.leaves_fraction, exact_below_rows=0)
    for size in FLAGS.small_sizes:
        folder = tempfile.mkdtemp(prefix="retrieval_small_")
        try:
            batches = image_batches(np.random.default_rng(FLAGS.seed + 1), concepts, int(size), FLAGS.num_rows)
            index = retrieval.build_index(folder, batches, scann=forced, shard_size=int(size))
            index.search(queries[0], 10, "scann")
            exact, exact_time = timed(lambda: [index.search(q, 10) for q in queries])
            approximate, scann_time = timed(lambda: [index.search(q, 10, "scann") for q in queries])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        lines.append(f"{int(size):>6} | {int(size) * FLAGS.num_rows:>7,} | {1e3 * exact_time / len(queries):>14.2f} | "
                     f"{1e3 * scann_time / len(queries):>14.2f} | {recall(approximate, exact).mean():>15.3f}")
    print(f"\nSmall shards, M={FLAGS.num_rows}, d={FLAGS.dim} (ScaNN forced: exact_below_rows=0; "
          f"{len(queries)} queries one at a time, load average {os.getloadavg()[0]:.1f}):")
    print("\n".join(lines))


def main(argv):
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    concepts, topic_vectors, topic_of = make_concepts(rng, FLAGS.concepts, FLAGS.dim)
    queries = make_queries(rng, concepts, topic_vectors, topic_of, FLAGS.queries)
    if FLAGS.small_shards:
        return small_shards(list(queries))
    directory = FLAGS.index_dir or tempfile.mkdtemp(prefix="retrieval_bench_")
    milvus_folder = tempfile.mkdtemp(prefix="retrieval_bench_milvus_")
    try:
        rows, build_times = ([], {}) if FLAGS.reuse else build(directory)
        index = retrieval.RetrievalIndex.load(directory)
        matrices_bytes = sum(s.matrices.nbytes for s in index.shards)
        scann_bytes = sum(folder_bytes(os.path.join(s.directory, retrieval.SCANN_DIR)) for s in index.shards)
        search_rows, exact_all, figures = search(index, queries)
        rows += [
            ("index: matrices on disk", f"{matrices_bytes / 2**30:.2f} GiB",
             f"{len(index):,} x {index.num_rows} x {index.dim} {index.dtype}, memory-mapped"),
            ("index: ScaNN searchers", f"{scann_bytes / 2**30:.2f} GiB", "held in memory while searching"),
            *search_rows,
        ]
        figures["exact"].update(build=build_times.get("exact", float("nan")),
                                memory=f"0 + {matrices_bytes / 2**30:.2f} GiB mapped")
        figures["scann"].update(build=build_times.get("scann", float("nan")),
                                memory=f"{scann_bytes / 2**30:.2f} GiB + mapped",
                                note=f"leaves {FLAGS.leaves_fraction:.0%}; one at a time on 1 thread "
                                     f"{figures['scann']['one_thread']:.1f} q/s")
        figures = {"exact (local)": figures["exact"], "ScaNN (local)": figures["scann"]}
        del index
        milvus = FLAGS.milvus if FLAGS.milvus is not None else ["FLAT", "IVF_FLAT"] * (FLAGS.images <= 200_000)
        for index_type in milvus:
            figures[f"milvus-lite {index_type}"] = milvus_backend(index_type, queries, exact_all, milvus_folder)
    finally:
        shutil.rmtree(milvus_folder, ignore_errors=True)
        if not FLAGS.index_dir:
            shutil.rmtree(directory, ignore_errors=True)
    load = os.getloadavg()
    print(f"\nRetrieval, {FLAGS.images:,} images x M={FLAGS.num_rows} x d={FLAGS.dim} ({FLAGS.dtype}), "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the end")
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for name, value, note in rows:
        print(f"{name.ljust(width)} | {value.rjust(value_width)} | {note}")
    print(f"\nSide by side ({FLAGS.queries} queries, k={FLAGS.k}; recall against exact search):")
    print(side_by_side(figures))


if __name__ == "__main__":
    app.run(main)

"""The Milvus backend on milvus-lite: with a FLAT index it answers as exact local search (ids,
scores, dominant rows) for one-tag and multi-tag queries, on random matrices and on the demo
index, with a calibrated model's probabilities; it stores the vocabulary, the calibration and
its settings in the collection; an add killed halfway leaves the collection queryable, its
partial entities ignored and then deleted, and the index files it cut short rebuilt; one
writer at a time (the collection's writer lease, kept out as by a directory's writer lock)."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from sdl_keras.calibration import fit_calibration
from sdl_keras.retrieval import MilvusIndex, MilvusOptions, Query, build_index, open_index, tag_query
from sdl_keras.retrieval import milvus
from sdl_keras.retrieval.lock import IndexLockedError
from sdl_keras.retrieval.milvus import WRITER_PROPERTY
from tests import testing
from tests.sdl_keras.retrieval import demo_index


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def assert_same_hits(found, expected):
    assert [h.id for h in found] == [h.id for h in expected]
    assert [h.rows for h in found] == [h.rows for h in expected]
    np.testing.assert_allclose([h.score for h in found], [h.score for h in expected], rtol=1e-5, atol=1e-5)
    assert [len(h.probabilities) for h in found] == [len(h.probabilities) for h in expected]
    np.testing.assert_allclose([p for h in found for p in h.probabilities],
                               [p for h in expected for p in h.probabilities], rtol=1e-5, atol=1e-6)


def random_queries(rng, dim):
    """One-tag queries and queries of two and three tags (sums of per-tag maxima)."""
    return ([Query(rng.standard_normal(dim)) for _ in range(4)]
            + [Query(rng.standard_normal((t, dim))) for t in (2, 2, 3)])


def test_flat_equals_exact_local_search_on_random_matrices(tmp_path):
    rng = np.random.default_rng(0)
    matrices = rng.standard_normal((400, 5, 24)).astype(np.float32)
    # Ids a filter expression must quote: quotes, a backslash, spaces, non-ASCII.
    ids = [f'img "{i}"\\ café' if i % 7 == 0 else f"img-{i}" for i in range(400)]
    local = build_index(str(tmp_path / "local"), [(ids, matrices)])
    uri = str(tmp_path / "random.db")
    index = MilvusIndex.create(uri, "random", 5, 24, source={"test": True})
    assert index.add([(ids[:250], matrices[:250]), (ids[250:], matrices[250:])]) == 400
    queries = random_queries(rng, 24)
    for k in (10, 60):
        # Two-tag and three-tag queries: random rows rarely put the best sum among either
        # tag's first 2k images, so the candidates deepen until the answer is certain.
        for found, expected in zip(index.search_batch(queries, k), local.search_batch(queries, k)):
            assert_same_hits(found, expected)
    assert_same_hits(index.search(queries[-1], 10), local.search(queries[-1], 10))
    np.testing.assert_array_equal(index.matrices([ids[7], ids[3]]), matrices[[7, 3]])

    index.close()
    reopened = open_index(f"milvus:{uri}#random")
    assert (len(reopened), reopened.num_rows, reopened.dim, reopened.meta["source"]) == (400, 5, 24, {"test": True})
    assert sorted(reopened.ids) == sorted(ids) and reopened.vocabulary is None
    with pytest.raises(ValueError, match="already in the index or repeated"):
        reopened.add([([ids[3]], matrices[:1])])
    with pytest.raises(ValueError, match="Non-finite"):
        reopened.add([(["new"], np.full((1, 5, 24), np.nan, np.float32))])
    assert len(reopened) == 400
    with pytest.raises(ValueError, match="24-d rows"):
        reopened.search(np.ones(8))
    with pytest.raises(FileExistsError, match="already exists"):
        MilvusIndex.create(uri, "random", 5, 24)
    with pytest.raises(ValueError, match="has no calibration, so no probabilities"):
        reopened.search(queries[0], min_probability=0.5)
    with pytest.raises(ValueError, match="needs max aggregation"):
        MilvusIndex.create(uri, "l2", 5, 24, aggregation="l2")
    with pytest.raises(ValueError, match="must end in .db"):
        open_index(f"milvus:{tmp_path}/random.sqlite#random")
    reopened.close()


def test_ivf_flat_is_configurable_and_its_hits_are_scored_exactly(tmp_path):
    rng = np.random.default_rng(1)
    matrices = rng.standard_normal((200, 3, 16)).astype(np.float32)
    options = MilvusOptions("IVF_FLAT", {"nlist": 8}, {"nprobe": 2})
    index = MilvusIndex.create(str(tmp_path / "ivf.db"), "ivf", 3, 16, options)
    index.add([([str(i) for i in range(200)], matrices)])
    assert index.options == options and index.describe() == "3 x 16 float32, Milvus IVF_FLAT index, uncalibrated"
    # Which images IVF_FLAT finds is approximate (its recall at scale is measured in
    # benchmarks/retrieval.py, not asserted), but each hit's score and dominant row are the
    # image's own, over all its rows, best first: the grouped search alone gave some images
    # the best of the rows it visited instead.
    for query in [Query(unit(rng.standard_normal(16))) for _ in range(8)] + [Query(rng.standard_normal((2, 16)))]:
        hits = index.search(query, 10)
        products = matrices[[int(h.id) for h in hits]] @ query.vectors.T  # (hits, M, T)
        assert 0 < len(hits) <= 10 and [h.rows for h in hits] == [tuple(r) for r in products.argmax(axis=1)]
        np.testing.assert_allclose([h.score for h in hits], products.max(axis=1).sum(axis=1), rtol=1e-5)
        assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    index.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_index.demo_matrices(str(tmp_path_factory.mktemp("demo")))


def demo_calibration(matrices, vocabulary):
    """A calibration of the demo's tags (rank-pooled unseen map), fitted on labels that the
    scores predict with noise."""
    scores = (matrices @ vocabulary.vectors.T).max(axis=1)
    noisy = scores + np.random.default_rng(3).normal(0.0, scores.std() / 2, scores.shape)
    labels = (noisy > np.quantile(noisy, 0.8, axis=0)).astype(np.float32)
    return fit_calibration(scores, labels, vocabulary.tags, vocabulary.unseen, "platt", "rank")


def test_flat_equals_exact_local_search_on_the_demo_index(demo, tmp_path, monkeypatch):
    ids, matrices, vocabulary = demo
    calibration = demo_calibration(matrices, vocabulary)
    local = build_index(str(tmp_path / "local"), [(ids, matrices)], vocabulary=vocabulary, calibration=calibration)
    uri = str(tmp_path / "demo.db")
    monkeypatch.setattr(milvus, "CALIBRATION_PIECE", 1000)  # its JSON in several pieces
    MilvusIndex.create(uri, "demo", demo_index.NUM_ROWS, vocabulary.dim, vocabulary=vocabulary,
                       calibration=calibration).add(
        [(ids[s : s + 300], matrices[s : s + 300]) for s in range(0, len(ids), 300)]
    )
    index = MilvusIndex.open(uri, "demo")
    assert index.vocabulary.tags == vocabulary.tags and index.vocabulary.unseen == vocabulary.unseen
    np.testing.assert_allclose(index.vocabulary.vectors, vocabulary.vectors, atol=1e-7)
    assert index.calibration.to_dict() == calibration.to_dict() and "calibrated" in index.describe()
    seen, unseen = vocabulary.seen_tags, vocabulary.unseen_tags
    queries = [tag_query(names, index.vocabulary) for names in (
        [seen[0]], [seen[17]], ["red circle"], [unseen[3]], [seen[2], unseen[5]], [unseen[0], unseen[1], seen[30]],
    )]
    assert "red circle" in unseen
    # Ids, scores, rows and each tag's probability (seen tags' own maps, unseen tags by rank).
    for found, expected in zip(index.search_batch(queries, 10), local.search_batch(queries, 10)):
        assert_same_hits(found, expected)
        assert len(found) == 10 and all(0 < p < 1 for h in found for p in h.probabilities)
    cut = float(np.median([p for h in local.search(queries[0], 10) for p in h.probabilities]))
    kept = index.search(queries[0], 10, min_probability=cut)
    assert_same_hits(kept, local.search(queries[0], 10, min_probability=cut))
    assert 0 < len(kept) < 10
    index.close()


KILLED_ADD = """
import sys
import numpy as np
from sdl_keras.retrieval import MilvusIndex

index = MilvusIndex.open(sys.argv[1], "photos")
rng = np.random.default_rng(1)

def batches():
    for b in range(3):
        yield [f"new-{b}-{i}" for i in range(20)], rng.standard_normal((20, 3, 8)).astype(np.float32)
    index.client.flush(index.collection)  # the partial entities are on disk: the kill comes before the commit
    print("inserted", flush=True)
    sys.stdin.read()  # killed here
    yield from ()

index.add(batches())
"""


def test_a_killed_add_leaves_the_collection_queryable(tmp_path):
    uri = str(tmp_path / "photos.db")
    rng = np.random.default_rng(0)
    matrices = rng.standard_normal((50, 3, 8)).astype(np.float32)
    ids = [f"old-{i}" for i in range(50)]
    created = MilvusIndex.create(uri, "photos", 3, 8)
    created.add([(ids, matrices)])
    created.close()  # a milvus-lite file is one process's at a time
    child = subprocess.Popen([sys.executable, "-c", KILLED_ADD, uri], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=testing.python_env(), text=True)
    try:
        lines = []
        while not lines or lines[-1] not in ("inserted", ""):  # "" at the end of its output
            lines.append(child.stdout.readline().strip() if child.poll() is None else "")
        assert lines[-1] == "inserted", (lines, child.stderr.read()[-3000:])
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    index = MilvusIndex.open(uri, "photos")
    # The 60 half-added images' entities are there, and never seen.
    assert index._count("add_id >= 0") == (50 + 60) * 3
    assert len(index) == 50 and sorted(index.ids) == sorted(ids)
    hits = index.search(rng.standard_normal(8), k=50)
    assert sorted(h.id for h in hits) == sorted(ids)
    # The next add deletes them; their ids were never in the index, so they can be added.
    more = rng.standard_normal((2, 3, 8)).astype(np.float32)
    assert index.add([(["new-0-0", "late"], more)]) == 2
    assert index._count("add_id >= 0") == 52 * 3 and len(index) == 52
    np.testing.assert_array_equal(index.matrices(["new-0-0"])[0], more[0])
    index.close()


def test_index_files_a_kill_cut_short_are_rebuilt_when_the_collection_is_opened(tmp_path, caplog):
    # milvus-lite writes the index files of a flushed segment in place after the flush: a
    # writer killed then leaves one truncated (seen in the test above: "File is too small: 0").
    uri = str(tmp_path / "cut.db")
    rng = np.random.default_rng(3)
    index = MilvusIndex.create(uri, "cut", 3, 8)
    index.add([([f"i{j}" for j in range(40)], rng.standard_normal((40, 3, 8)).astype(np.float32))])
    queries = [rng.standard_normal(8), rng.standard_normal((2, 8))]
    before = index.search_batch(queries, k=10)
    index.close()
    files = sorted(glob.glob(os.path.join(uri, "collections", "cut", "partitions", "*", "indexes", "*")))
    assert [os.path.splitext(f)[1] for f in files] == [".sidx", ".idx"]  # image_id's and the vectors'
    for path, kept in zip(files, (0.0, 0.5)):
        with open(path, "r+b") as f:
            f.truncate(int(kept * os.path.getsize(path)))

    index = MilvusIndex.open(uri, "cut")
    assert "rebuilding its 2 index files from its data" in caplog.text
    assert all(os.path.getsize(f) > 0 for f in files)
    for found, expected in zip(index.search_batch(queries, k=10), before):
        assert_same_hits(found, expected)
    index.close()


def test_a_writer_kept_out_by_a_live_lease_fails_or_waits_and_consumes_nothing(tmp_path):
    uri = str(tmp_path / "leased.db")
    rng = np.random.default_rng(2)
    index = MilvusIndex.create(uri, "leased", 2, 4)
    consumed = []

    def batches(ids):
        consumed.append(ids)
        yield ids, rng.standard_normal((len(ids), 2, 4)).astype(np.float32)

    def lease(pid, host=socket.gethostname(), expires=None):
        record = {"pid": pid, "host": host, "token": "other", "expires": expires or time.time() + 600}
        index.client.alter_collection_properties("leased", properties={WRITER_PROPERTY: json.dumps(record)})

    # Another live writer of this host (a process standing in for it) holds the lease.
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        lease(holder.pid)
        with pytest.raises(IndexLockedError) as error:
            index.add(batches(["a"]))
        assert str(error.value) == (
            f"milvus:{uri}#leased is held by another writer (pid {holder.pid} on {socket.gethostname()}): one writer "
            "at a time. Rerun when it has finished, or pass --lock_timeout=SECONDS to wait for it.")
        index.lock_timeout = 0.3
        start = time.monotonic()
        with pytest.raises(IndexLockedError, match=r"waited 0\.[3-9] s for it"):
            index.add(batches(["a"]))
        assert time.monotonic() - start >= 0.3 and not consumed
    finally:
        holder.kill()
        holder.wait()
    # Its process has exited: the lease is stale at once, the add goes ahead and drops it.
    assert index.add(batches(["a"])) == 1 and consumed == [["a"]]
    assert WRITER_PROPERTY not in index.client.describe_collection("leased")["properties"]
    # Another host's writer: live until its lease expires.
    lease(12345, host="elsewhere", expires=time.time() + 600)
    with pytest.raises(IndexLockedError, match="pid 12345 on elsewhere"):
        index.add(batches(["b"]))
    lease(12345, host="elsewhere", expires=time.time() - 1)
    stale = MilvusIndex.open(uri, "leased")  # opened before the next add commits
    assert index.add(batches(["b"])) == 1 and sorted(index.ids) == ["a", "b"]
    # Its writer reads the collection as it now is: the add it missed is kept.
    assert stale.add(batches(["c"])) == 1 and sorted(stale.ids) == ["a", "b", "c"]
    stale.close()
    index.close()


if __name__ == "__main__":
    testing.run(__file__)

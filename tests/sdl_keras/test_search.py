"""The search command line (build, add, query) over an exported model, and the encoders and
image sources it reads images with; concurrent adds take turns by the index's writer lock."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from sdl_keras import retrieval
from sdl_keras.config import TrainConfig
from sdl_keras.retrieval import encoding as search
from tests import testing
from tests.sdl_keras.saved_model import tiny_export


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("saved_models") / "tiny")
    _, model, vocabulary = tiny_export.export_tiny(base)
    return base, model, vocabulary


def write_images(folder, count, seed):
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(count):
        data, _ = testing.encoded_image("PNG", seed=seed + i)
        paths.append(os.path.join(folder, f"{seed + i:03d}.png"))
        with open(paths[-1], "wb") as f:
            f.write(data)
    return paths


def search_command(*args):
    return [sys.executable, "-m", "sdl_keras.search", *args]


def run_search(*args):
    return subprocess.run(search_command(*args), env=testing.python_env(), capture_output=True, text=True,
                          cwd=testing.REPO_ROOT, timeout=300)


def wait_for(condition, process, what, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, f"ended before {what}"
        assert time.time() < deadline, f"no {what}"
        time.sleep(0.05)


def test_command_line_builds_adds_and_queries(exported, tmp_path):
    model_path, _, vocabulary = exported
    vocabulary.save(str(tmp_path / "vocabulary.npz"))
    photos = write_images(str(tmp_path / "photos"), 6, seed=0)
    (tmp_path / "photos" / "broken.png").write_bytes(b"not an image")
    # A sound header over truncated data: only decoding finds it, in a batch with good images.
    (tmp_path / "photos" / "003b.png").write_bytes(open(photos[0], "rb").read()[:600])
    index_dir = str(tmp_path / "index")

    build = run_search(
        "build", f"--index={index_dir}", f"--model={model_path}", f"--vocabulary={tmp_path}/vocabulary.npz",
        f"--images={tmp_path}/photos", "--approximate", "--batch_size=4",
    )
    assert build.returncode == 1, build.stderr[-3000:]  # images were skipped
    assert "6 images added, 2 skipped" in build.stderr, build.stderr[-3000:]
    assert "broken.png: " in build.stderr and "003b.png: cannot be decoded" in build.stderr
    index = retrieval.RetrievalIndex.load(index_dir)
    assert index.ids == photos and index.scann_options is not None
    # The stored matrices are the export's `matrix` signature's.
    encoder = search.SavedModelEncoder(model_path)
    expected = encoder([open(p, "rb").read() for p in photos])
    np.testing.assert_allclose(index.shards[0].matrices, expected, atol=1e-6)

    more = write_images(str(tmp_path / "more"), 3, seed=50)
    add = run_search("add", f"--index={index_dir}", *more)  # the model the index was built with
    assert add.returncode == 0, add.stderr[-3000:]
    index = retrieval.RetrievalIndex.load(index_dir)
    assert index.ids == photos + more

    query = run_search("query", f"--index={index_dir}", "--tag=sky", "--top_n=4", "--json")
    assert query.returncode == 0, query.stderr[-3000:]
    result = json.loads(query.stdout)
    matrices = np.concatenate([s.matrices for s in index.shards])
    scores = (matrices @ vocabulary.vectors[vocabulary.index("sky")]).max(axis=1)
    assert result["query"] == ["sky"]
    assert [h["id"] for h in result["hits"]] == [index.ids[i] for i in np.argsort(-scores, kind="stable")[:4]]

    both = run_search("query", f"--index={index_dir}", "--tag=sky", "--tag=teddy bear", "--method=scann", "--top_n=3")
    assert both.returncode == 0, both.stderr[-3000:]
    assert "query: sky + teddy bear" in both.stdout and len(both.stdout.strip().splitlines()) == 5

    unknown = run_search("query", f"--index={index_dir}", "--tag=unicorn")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert "sdl_keras.search: error: No vector for tag(s) ['unicorn']: looked in the index's vocabulary" in unknown.stderr
    assert "cuInit" not in unknown.stderr  # quiet on a CPU-only host
    # Word vectors given at query time are checked as at training time.
    words = tmp_path / "wiki.vec"
    words.write_text("2 3\nhorse 1 0 0\nzebra 0.1 nan 0.3\n")
    bad = run_search("query", f"--index={index_dir}", "--tag=zebra", f"--word_vectors={words}")
    assert bad.returncode == 1 and bad.stderr.splitlines()[-1] == (
        f"sdl_keras.search: error: {words}:3: word 'zebra' has non-finite values ('nan', value 2 of 3).")


def test_command_line_builds_adds_and_queries_a_milvus_collection(exported, tmp_path):
    model_path, _, vocabulary = exported
    vocabulary.save(str(tmp_path / "vocabulary.npz"))
    photos = write_images(str(tmp_path / "photos"), 5, seed=0)
    more = write_images(str(tmp_path / "more"), 2, seed=50)
    location = f"milvus:{tmp_path}/photos.db#photos"
    build = run_search("build", f"--index={location}", f"--model={model_path}",
                       f"--vocabulary={tmp_path}/vocabulary.npz", f"--images={tmp_path}/photos",
                       "--milvus_index_type=IVF_FLAT", '--milvus_index_params={"nlist": 2}',
                       '--milvus_search_params={"nprobe": 2}')
    assert build.returncode == 0, build.stderr[-3000:]
    assert "5 images added, 0 skipped, 5 in the index (3 x 16 float32, Milvus IVF_FLAT index, uncalibrated)" in build.stderr
    add = run_search("add", f"--index={location}", *more)  # with the model the collection records
    assert add.returncode == 0 and "2 images added" in add.stderr, add.stderr[-3000:]
    query = run_search("query", f"--index={location}", "--tag=sky", "--tag=teddy bear", "--top_n=7", "--json")
    assert query.returncode == 0, query.stderr[-3000:]
    encoder = search.SavedModelEncoder(model_path)
    matrices = encoder([open(p, "rb").read() for p in photos + more])
    products = matrices @ vocabulary.vectors[[vocabulary.index("sky"), vocabulary.index("teddy bear")]].T
    order = np.argsort(-products.max(axis=1).sum(axis=1), kind="stable")
    hits = json.loads(query.stdout)["hits"]
    assert [h["id"] for h in hits] == [(photos + more)[i] for i in order]
    assert [h["rows"] for h in hits] == products.argmax(axis=1)[order].tolist()
    np.testing.assert_allclose([h["score"] for h in hits], products.max(axis=1).sum(axis=1)[order], rtol=1e-5)
    index = retrieval.open_index(location)
    with pytest.raises(ValueError, match="--method, --num_candidates and --leaves_to_search apply to a local index"):
        retrieval.backends.search_options(index, method="scann")
    assert retrieval.backends.search_options(index, search_params={"nprobe": 1}) == {"search_params": {"nprobe": 1}}
    index.close()


def test_a_run_directory_encodes_as_its_export(exported, tmp_path):
    model_path, model, vocabulary = exported
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model.save(str(run_dir / "model.keras"))
    vocabulary.save(str(run_dir / "vocabulary.npz"))
    TrainConfig.from_flat(image_size=tiny_export.IMAGE_SIZE).save(run_dir / "config.json")
    images = [open(p, "rb").read() for p in write_images(str(tmp_path / "images"), 3, seed=7)]
    keras_matrices = search.KerasEncoder(str(run_dir))(images)
    np.testing.assert_allclose(keras_matrices, search.SavedModelEncoder(model_path)(images), atol=1e-5)


def test_manifest_and_tfrecord_sources(exported, tmp_path):
    from pipelines.readers.manifest import write_manifest
    from pipelines.tfrecord.format import make_example

    model_path, _, vocabulary = exported
    paths = write_images(str(tmp_path / "images"), 4, seed=20)
    manifest = str(tmp_path / "images.jsonl")
    write_manifest(manifest, [{"image": p, "tags": ["anything"], "id": f"m{i}"} for i, p in enumerate(paths)])
    assert search.manifest_items(manifest) == [(f"m{i}", p) for i, p in enumerate(paths)]
    write_manifest(str(tmp_path / "twice.jsonl"), [{"image": p, "tags": [], "id": "m"} for p in paths[:2]])
    with pytest.raises(ValueError, match=r"twice.jsonl: 1 image id\(s\) on more than one line: 'm' \(lines 1, 2\)"):
        search.manifest_items(str(tmp_path / "twice.jsonl"))

    records = str(tmp_path / "test-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(records) as writer:
        for i, p in enumerate(paths):
            writer.write(make_example(open(p, "rb").read(), f"r{i}", np.zeros(len(vocabulary))))
    items = list(search.tfrecord_items(str(tmp_path / "*.tfrecord")))
    assert [i for i, _ in items] == ["r0", "r1", "r2", "r3"]
    encoder = search.SavedModelEncoder(model_path)
    index, added, skipped = search.index_images(str(tmp_path / "index"), encoder, items, create=True, batch_size=3)
    assert (added, skipped, index.ids) == (4, [], ["r0", "r1", "r2", "r3"])
    np.testing.assert_allclose(index.shards[0].matrices, encoder([d for _, d in items]), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="No TFRecord files"):
        list(search.tfrecord_items(str(tmp_path / "missing-*")))

    testing.damage_record(records, 2)
    with pytest.raises(ValueError, match=r"test-00000-of-00001.tfrecord: record 3 cannot be read \(corrupted record "
                                         r"at \d+\): rewrite the file"):
        list(search.tfrecord_items(str(tmp_path / "*.tfrecord")))


def test_concurrent_adds_take_turns_and_never_remove_each_others_shards(exported, tmp_path):
    model_path, _, _ = exported
    index_dir = str(tmp_path / "index")
    first = write_images(str(tmp_path / "first"), 2, seed=100)
    search.index_images(index_dir, search.SavedModelEncoder(model_path), [(p, p) for p in first], create=True)
    lock = os.path.join(index_dir, ".writer.lock")
    # Writer A stalls on a FIFO after two batches: it holds the lock and has an unfinished shard.
    a_images = write_images(str(tmp_path / "a"), 4, seed=200)
    fifo = os.path.join(tmp_path, "a", "slow.png")
    os.mkfifo(fifo)
    env = testing.python_env()
    a = subprocess.Popen(search_command("add", f"--index={index_dir}", "--batch_size=2", *a_images, fifo),
                         env=env, cwd=testing.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    c_log = tmp_path / "c.log"
    try:
        unfinished = os.path.join(index_dir, "shard-00001")
        wait_for(lambda: os.path.exists(os.path.join(unfinished, "ids.jsonl")) and open(lock).read().strip(), a,
                 "unfinished shard")
        assert open(lock).read() == f"{a.pid}\n"
        # B fails at once, C waits for the lock (--lock_timeout).
        c_images = write_images(str(tmp_path / "c"), 3, seed=300)
        with open(c_log, "w") as log:
            c = subprocess.Popen(search_command("add", f"--index={index_dir}", "--lock_timeout=600", *c_images),
                                 env=env, cwd=testing.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        b = run_search("add", f"--index={index_dir}", *write_images(str(tmp_path / "b"), 2, seed=400))
        assert b.returncode == 1 and b.stderr.splitlines()[-1] == (
            f"sdl_keras.search: error: {lock} is held by another writer (pid {a.pid}) changing {index_dir}: one "
            "writer at a time. Rerun when it has finished, or pass --lock_timeout=SECONDS to wait for it.")
        wait_for(lambda: f"Waiting for {lock}: another writer (pid {a.pid})" in c_log.read_text(), c, "wait")
        assert os.listdir(unfinished) and a.poll() is None
        # A goes on: its last image arrives.
        with open(fifo, "wb") as f:
            f.write(open(first[0], "rb").read())
        a_out, a_err = a.communicate(timeout=300)
        assert a.returncode == 0, a_err[-3000:]
        assert c.wait(timeout=300) == 0, c_log.read_text()[-3000:]
    finally:
        for process in (a, locals().get("c")):
            if process is not None and process.poll() is None:
                process.kill()
    assert "5 images added, 0 skipped, 7 in the index" in a_err
    assert "3 images added, 0 skipped, 10 in the index" in c_log.read_text()
    index = retrieval.RetrievalIndex.load(index_dir)
    assert index.ids == first + a_images + [fifo] + c_images
    assert sorted(n for n in os.listdir(index_dir) if n.startswith("shard-")) == [s.name for s in index.shards]


if __name__ == "__main__":
    testing.run(__file__)

"""`search build --runner=DirectRunner`: the Beam build on two worker processes gives the
index the one-process build gives (the same ids, matrices within float tolerance, the same
query results), reports unreadable images as the one-process build does, writes to a
Milvus collection (here from TFRecords), and holds the index's writer lock."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from sdl_keras.retrieval import RetrievalIndex, encoding, open_index, tag_query
from tests import testing
from tests.sdl_keras.saved_model import tiny_export

MULTI_PROCESSING = ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def run_search(*args):
    return subprocess.run(
        [sys.executable, "-m", "sdl_keras.search", *args], env=testing.python_env(), capture_output=True,
        text=True, cwd=testing.REPO_ROOT, timeout=600,
    )


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """An export, its vocabulary, 12 images and two unreadable ones, and the one-process build."""
    root = tmp_path_factory.mktemp("beam")
    model, _, vocabulary = tiny_export.export_tiny(str(root / "saved_models" / "tiny"))
    vocabulary.save(str(root / "vocabulary.npz"))
    folder = root / "photos"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i:03d}.png").write_bytes(testing.encoded_image("PNG", seed=i)[0])
    (folder / "broken.png").write_bytes(b"not an image")
    (folder / "003b.png").write_bytes((folder / "000.png").read_bytes()[:600])
    common = [f"--model={model}", f"--vocabulary={root}/vocabulary.npz", f"--images={folder}", "--batch_size=4",
              "--shard_size=5"]
    # The one-process build, as `search build` without --runner runs it (test_search runs that command).
    single, added, skipped = encoding.build(str(root / "single"), *encoding.image_items([str(folder)]), model=model,
                                            vocabulary=str(root / "vocabulary.npz"), batch_size=4, shard_size=5)
    assert (added, len(skipped)) == (12, 2)
    return {"root": root, "common": common, "single": single, "model": model}


def by_id(index):
    matrices = np.concatenate([np.asarray(s.matrices) for s in index.shards])
    return dict(zip(index.ids, matrices))


def queries(vocabulary):
    return [tag_query(names, vocabulary) for names in (["sky"], ["teddy bear"], ["café", "sunset"])]


def test_multi_processing_build_equals_the_one_process_build(photos):
    root, single = photos["root"], photos["single"]
    done = run_search("build", f"--index={root}/beam", *photos["common"], "--approximate", *MULTI_PROCESSING)
    assert done.returncode == 1, done.stderr[-3000:]  # images were skipped, as without Beam
    assert "12 images added, 2 skipped" in done.stderr and "exact and ScaNN search" in done.stderr
    assert "broken.png: " in done.stderr and "003b.png: cannot be decoded" in done.stderr
    beam = RetrievalIndex.load(str(root / "beam"))
    expected, found = by_id(single), by_id(beam)
    assert sorted(found) == sorted(expected)
    for image_id, matrix in expected.items():
        np.testing.assert_allclose(found[image_id], matrix, atol=1e-5)
    # Beam's shards: a hash of the id picks the shard, ids sorted within it.
    assert all(s.ids == sorted(s.ids) for s in beam.shards) and len(beam.shards) > 1
    assert beam.scann_options is not None and beam.meta["source"] == single.meta["source"]
    for method in ("exact", "scann"):
        for query in queries(single.vocabulary):
            got, want = beam.search(query, 6, method), single.search(query, 6)
            assert [(h.id, h.rows) for h in got] == [(h.id, h.rows) for h in want]
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], rtol=1e-5)


def test_beam_build_writes_to_milvus(photos):
    import tensorflow as tf

    from pipelines.tfrecord.format import make_example

    root, single = photos["root"], photos["single"]
    # The same images as TFRecords (ReadFromTFRecord), the two unreadable ones included.
    with tf.io.TFRecordWriter(str(root / "photos.tfrecord")) as writer:
        for path in sorted((root / "photos").iterdir()):
            writer.write(make_example(path.read_bytes(), str(path), np.zeros(len(single.vocabulary))))
    location = f"milvus:{root}/photos.db#photos"
    common = [flag for flag in photos["common"] if not flag.startswith("--images")]
    done = run_search("build", f"--index={location}", *common, f"--tfrecords={root}/*.tfrecord",
                      "--runner=DirectRunner")
    assert done.returncode == 1, done.stderr[-3000:]
    assert "12 images added, 2 skipped, 12 in the index (3 x 16 float32, Milvus FLAT index, uncalibrated)" in done.stderr
    index = open_index(location)
    try:
        expected = by_id(single)
        assert sorted(index.ids) == sorted(expected)
        ids = sorted(expected)
        np.testing.assert_allclose(index.matrices(ids), np.stack([expected[i] for i in ids]), atol=1e-5)
        for query in queries(index.vocabulary):
            assert [(h.id, h.rows) for h in index.search(query, 6)] == [(h.id, h.rows) for h in single.search(query, 6)]
    finally:
        index.close()


def test_milvus_lite_refuses_several_worker_processes(photos):
    from apache_beam.options.pipeline_options import PipelineOptions

    from sdl_keras.retrieval import beam

    with pytest.raises(ValueError, match="opened by one process only"):
        beam.check_runner(f"milvus:{photos['root']}/x.db#x", PipelineOptions(MULTI_PROCESSING))
    beam.check_runner(f"milvus:{photos['root']}/x.db#x", PipelineOptions(["--runner=DirectRunner"]))
    beam.check_runner(str(photos["root"] / "x"), PipelineOptions(MULTI_PROCESSING))
    assert not os.path.exists(photos["root"] / "x")


def test_a_beam_build_is_kept_out_by_another_writer_before_it_starts(photos):
    from sdl_keras.retrieval import beam
    from sdl_keras.retrieval.lock import IndexLockedError, WriterLock

    directory = str(photos["root"] / "locked")
    held, release = threading.Event(), threading.Event()

    def other_writer():
        with WriterLock(directory):
            held.set()
            release.wait()

    thread = threading.Thread(target=other_writer)
    thread.start()
    held.wait()
    try:
        with pytest.raises(IndexLockedError, match="one writer at a time"):
            beam.build(directory, ["--runner=DirectRunner"], [str(photos["root"] / "photos")], model=photos["model"])
    finally:
        release.set()
        thread.join()
    assert os.listdir(directory) == [".writer.lock"]  # no index, no shard


if __name__ == "__main__":
    testing.run(__file__)

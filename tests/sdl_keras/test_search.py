"""The search command line (build, add, query) over an exported model, and the encoders and
image sources it reads images with."""

import json
import os
import subprocess
import sys

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


def run_search(*args):
    return subprocess.run(
        [sys.executable, "-m", "sdl_keras.search", *args], env=testing.python_env(), capture_output=True,
        text=True, cwd=testing.REPO_ROOT, timeout=300,
    )


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
    assert "5 images added, 0 skipped, 5 in the index (3 x 16 float32, Milvus IVF_FLAT index)" in build.stderr
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


if __name__ == "__main__":
    testing.run(__file__)

"""The official pretrained model, from `.pth` to served tags in three commands, each in its
own process, as README's "The official pretrained model" runs them:

    python -m sdl_keras.convert --checkpoint=NUS_mtresnet_224.pth --run_dir=RUN --tags=... --word_vectors=...
        --unseen_tags=...
    python -m sdl_keras.export --run_dir=RUN --name=nus --top_k=10
    python -m sdl_keras.tag --model=saved_models/nus --output=tags.jsonl photos/

The checkpoint is written with torch in the official layout (the original TResNet/ZS_SDL
key names, InPlaceABN-style, the TResNet body without prefix + `embedding.weight`) from
a full TResNet-M with random weights and BatchNorm statistics; the vocabulary is the real
NUS-WIDE one (1006 tags, 81 unseen, FastText vectors) and the photos the six NUS-WIDE
ones of the official inference example. The model is built at 64 x 64 instead of 224
(the same architecture and key layout; TResNet's weights do not depend on the input
size): at 224 the three processes take several times longer on a 2-core CPU.
"""

import json
import os
import subprocess
import sys

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from pipelines.decode import decode_images
from pipelines.text import read_lines
from sdl_keras.inference import evaluate_run
from sdl_keras.models import tresnet
from sdl_keras.retrieval.encoding import KerasEncoder
from sdl_keras.run_dir import RunDirectory
from sdl_keras.scoring import tag_scores
from sdl_keras.serving.load import start_server_process
from tests import testing
from tests.sdl_keras.torch_checkpoints import randomized, write_official_checkpoint

SIZE, ROWS, DIM = 64, 7, 300


def run_command(*args, cwd):
    done = subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=testing.python_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{args[0]}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """The three commands, run once; returns what they wrote and the source network."""
    folder = tmp_path_factory.mktemp("official")
    reference = testing.shared_path("reference", "nus_wide")
    photos = testing.shared_path("reference", "images")
    body = randomized(tresnet.tresnet_m(input_shape=(SIZE, SIZE, 3)), seed=11)
    embedding = np.random.default_rng(12).normal(0, 0.02, (ROWS * DIM, 2048)).astype("float32")
    tags, unseen = read_lines(os.path.join(reference, "tags.txt")), set(read_lines(os.path.join(reference, "unseen_tags.txt")))
    checkpoint = str(folder / "NUS_mtresnet_224.pth")
    write_official_checkpoint(checkpoint, tresnet.tresnet_state_dict(body), embedding,
                              [t for t in tags if t not in unseen])
    run_dir = str(folder / "runs" / "nus_official")
    run_command("sdl_keras.convert", "--flagfile=configs/convert.flags", f"--checkpoint={checkpoint}",
                f"--run_dir={run_dir}", f"--tags={reference}/tags.txt", f"--word_vectors={reference}/word_vectors.npy",
                f"--unseen_tags={reference}/unseen_tags.txt", f"--image_size={SIZE}", cwd=testing.REPO_ROOT)
    saved_models = str(folder / "saved_models")
    run_command("sdl_keras.export", f"--run_dir={run_dir}", "--name=nus", "--top_k=10",
                f"--output_dir={saved_models}", cwd=testing.REPO_ROOT)
    output = str(folder / "tags.jsonl")
    run_command("sdl_keras.tag", f"--model={saved_models}/nus", f"--output={output}", photos, cwd=testing.REPO_ROOT)
    with open(output, encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    names = sorted(os.listdir(photos))
    images = [open(os.path.join(photos, name), "rb").read() for name in names]
    return {"run": RunDirectory(run_dir), "saved_models": saved_models, "records": records, "images": images,
            "names": names, "body": body, "embedding": embedding}


@pytest.fixture(scope="module")
def converted(official):
    """(model, vocabulary, config) of the converted run, and the photos decoded as infer.py."""
    pixels = decode_images(tf.constant(official["images"]), SIZE, "none", "pil_bicubic").numpy()
    return (*official["run"].load(), pixels)


def test_convert_writes_a_run_directory_that_decodes_as_infer_py(official, converted):
    assert official["run"].missing() == []
    model, vocabulary, config, pixels = converted
    assert config.data.decode_mode == "pil_bicubic" and config.data.crop == "none"  # the official infer.py's
    assert (config.model.backbone, config.model.num_rows, config.data.image_size) == ("tresnet_m", ROWS, SIZE)
    assert len(vocabulary) == 1006 and len(vocabulary.unseen) == 81
    # The converted model is the official one: embedding(global_avg_pool(body(x))), viewed (d, M).
    features = keras.Model(official["body"].input, official["body"].get_layer("head.global_pool").output)
    flat = features.predict(pixels / 255.0, verbose=0) @ official["embedding"].T
    expected = flat.reshape(-1, DIM, ROWS).transpose(0, 2, 1)
    matrices = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(matrices, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_the_export_scores_as_the_converted_model_and_tag_writes_them(official, converted):
    model, vocabulary, _, pixels = converted
    scores, _ = tag_scores(model.predict(pixels, verbose=0), vocabulary.vectors)
    top_scores, top = tf.math.top_k(keras.ops.convert_to_numpy(scores), k=10)
    expected_tags = [[vocabulary.tags[i] for i in row] for row in top.numpy()]
    signature = tf.saved_model.load(os.path.join(official["saved_models"], "nus", "1")).signatures["serving_default"]
    exported = signature(images=tf.constant(official["images"]))
    np.testing.assert_allclose(exported["scores"].numpy(), top_scores.numpy(), rtol=1e-5)
    assert [[t.decode() for t in row] for row in exported["tags"].numpy()] == expected_tags
    records = official["records"]
    assert [os.path.basename(r["image"]) for r in records] == official["names"]
    assert all({"image", "tags", "scores"} <= set(r) for r in records)
    assert [r["tags"] for r in records] == expected_tags
    np.testing.assert_allclose([r["scores"] for r in records], top_scores.numpy(), rtol=1e-5, atol=1e-6)


def test_evaluate_and_search_read_the_converted_run(official, converted, tmp_path):
    """`evaluate` and `search build --run_dir` read the run as a training run (its decoding
    included): here in-process, through the libraries the commands call."""
    run = official["run"]
    model, _, _, pixels = converted
    np.testing.assert_allclose(KerasEncoder(run.path)(official["images"]), model.predict(pixels, verbose=0),
                               rtol=1e-5, atol=1e-6)
    manifest = tmp_path / "photos.jsonl"
    photos = testing.shared_path("reference", "images")
    with open(manifest, "w") as f:
        for i, name in enumerate(official["names"]):
            f.write(json.dumps({"image": os.path.join(photos, name), "tags": [["sky", "clouds"], ["water"]][i % 2]})
                    + "\n")
    results = evaluate_run(run.path, dataset="manifest", source=str(manifest), progress=False)
    assert results["model"]["gzsl/num_images"] == 6 and 0.0 <= results["model"]["gzsl/mAP"] <= 100.0
    assert results["settings"]["empty_tags"] == "zero"


def test_the_real_server_returns_the_same_top_tags_over_grpc(official):
    server = start_server_process("--model_name=nus", f"--model_base_path={os.path.join(official['saved_models'], 'nus')}")
    try:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "nus"
        request.model_spec.signature_name = "serving_default"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto([official["images"][0]], dtype=tf.string))
        with grpc.insecure_channel(server.grpc) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=120)
        served = [t.decode() for t in tf.make_ndarray(response.outputs["tags"])[0]]
        assert served == official["records"][0]["tags"]
    finally:
        assert server.stop() == 0, server.log()


if __name__ == "__main__":
    testing.run(__file__)

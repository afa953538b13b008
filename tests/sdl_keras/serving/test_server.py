"""The local server (gRPC PredictionService, ModelService, health, REST), the client
library and CLI against it, new versions without a restart, bad requests, and load."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sdl_keras import saved_model as export
from sdl_keras.serving import clients as serving_client
from sdl_keras.serving.load import run_load, start_server_process
from sdl_keras.serving.servables import Limits
from sdl_keras.serving.model_server import ModelServer
from tests import testing
from tests.sdl_keras.saved_model import tiny_export as tiny


@pytest.fixture(scope="module")
def base_path(tmp_path_factory):
    base = tmp_path_factory.mktemp("serving") / "tiny"
    tiny.export_tiny(base)
    return base


@pytest.fixture(scope="module")
def server(base_path):
    with ModelServer(str(base_path), port=0, rest_api_port=0) as running:
        yield running


@pytest.fixture(scope="module")
def clients(server):
    grpc_client = serving_client.GrpcClient(f"127.0.0.1:{server.grpc_port}")
    rest_client = serving_client.RestClient(f"127.0.0.1:{server.rest_port}")
    yield {"grpc": grpc_client, "rest": rest_client}
    grpc_client.close()


@pytest.fixture(scope="module")
def photos():
    folder = testing.shared_path("reference", "images")
    names = sorted(os.listdir(folder))
    return names, [open(os.path.join(folder, n), "rb").read() for n in names]


@pytest.fixture(scope="module")
def expected(base_path, photos):
    """What the SavedModel itself answers, run in this process without a server."""
    loaded = tf.saved_model.load(str(base_path / "1"))
    return {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=tf.constant(photos[1])).items()}


def test_binds_localhost_only(server):
    assert server.host == "127.0.0.1"


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_predict_matches_the_saved_model(clients, photos, expected, protocol):
    client = clients[protocol]
    results = serving_client.tag_images(client, "tiny", photos[1])
    assert [r["tags"] for r in results] == [[t.decode() for t in row] for row in expected["tags"]]
    np.testing.assert_allclose([r["scores"] for r in results], expected["scores"], rtol=1e-6)
    assert [r["rows"] for r in results] == expected["rows"].tolist()
    assert [r["unseen"] for r in results] == expected["unseen"].tolist()
    matrix = serving_client.tag_images(client, "tiny", photos[1][:2], signature="matrix", version=1)
    assert np.asarray(matrix[0]["matrix"]).shape == (tiny.NUM_ROWS, tiny.EMBED_DIM)


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_score_tags_ranks_new_tags(clients, photos, protocol):
    vocabulary = tiny.tiny_vocabulary()
    names = ["sky", "sunset", "never seen"]
    vectors = np.vstack([vocabulary.vectors[[0, 7]], np.random.default_rng(3).normal(size=(1, tiny.EMBED_DIM))])
    results = serving_client.tag_images(clients[protocol], "tiny", photos[1][:2], "score_tags", None, names, vectors)
    assert sorted(results[0]["tags"]) == sorted(names)
    assert results[0]["scores"] == sorted(results[0]["scores"], reverse=True)


def test_metadata_status_and_health(clients, server):
    for client in clients.values():
        signatures = client.signatures("tiny")
        assert {"serving_default", "matrix", "score_tags"} <= set(signatures)
        assert signatures["score_tags"]["inputs"]["tag_vectors"]["dtype"] == "DT_FLOAT"
        assert client.status("tiny") == [(1, "AVAILABLE")]
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tensorflow.serving.PredictionService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def _bad_requests(photo):
    good = np.array([photo], dtype=object)
    truncated = photo[: len(photo) // 2]
    vectors = np.zeros((2, tiny.EMBED_DIM), np.float32)
    return [
        ({"images": np.array([photo, b"garbage bytes"], dtype=object)}, {}, "INVALID_ARGUMENT", r"images\[1\] is not a JPEG, PNG, GIF or BMP image"),
        ({"images": np.array([photo, truncated], dtype=object)}, {}, "INVALID_ARGUMENT", r"images\[1\] cannot be decoded: jpeg"),
        ({"images": np.array([b""], dtype=object)}, {}, "INVALID_ARGUMENT", r"images\[0\] is empty \(0 bytes\)"),
        ({"images": np.array([], dtype=object)}, {}, "INVALID_ARGUMENT", "'images' is an empty batch"),
        ({"images": np.zeros((1, 4), np.float32)}, {}, "INVALID_ARGUMENT", "'images' must be DT_STRING"),
        ({"images": np.array([[photo]], dtype=object)}, {}, "INVALID_ARGUMENT", r"'images' must have shape \[None\], got \[1, 1\]"),
        ({"pictures": good}, {}, "INVALID_ARGUMENT", "unknown input"),
        ({"images": good}, {"signature": "score_tags"}, "INVALID_ARGUMENT", r"missing input\(s\) \['tag_vectors'\]"),
        ({"images": good, "tag_vectors": np.zeros((2, 8), np.float32)}, {"signature": "score_tags"}, "INVALID_ARGUMENT", r"'tag_vectors' must have shape \[None, 16\], got \[2, 8\]"),
        ({"images": good}, {"signature": "classify"}, "INVALID_ARGUMENT", "signature name: 'classify' not found"),
        ({"images": good}, {"version": 7}, "NOT_FOUND", "version 7 is not available; version 1 is served"),
        ({"images": good, "tag_vectors": vectors}, {"model": "other"}, "NOT_FOUND", "model 'other' is not served"),
    ]


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_bad_requests_are_refused_with_the_problem_named(clients, photos, protocol):
    client = clients[protocol]
    for inputs, options, code, message in _bad_requests(photos[1][0]):
        if protocol == "rest" and inputs.get("images") is not None and inputs["images"].dtype != object:
            continue  # JSON has no dtypes: REST converts numbers to the signature's type
        with pytest.raises(serving_client.ServingClientError) as caught:
            client.predict(options.get("model", "tiny"), inputs, options.get("signature", "serving_default"), options.get("version"))
        assert caught.value.code == code, caught.value
        assert caught.value.message and re.search(message, caught.value.message), caught.value.message
    # The server keeps serving after all of them.
    assert len(serving_client.tag_images(client, "tiny", photos[1][:1])) == 1


def test_grpc_wrong_dtype_and_unknown_version_status(clients, photos):
    client = clients["grpc"]
    with pytest.raises(serving_client.ServingClientError, match="'tag_vectors' must be float32, got float64"):
        client.predict("tiny", {"images": np.array(photos[1][:1], dtype=object), "tag_vectors": np.zeros((1, 16))}, "score_tags")
    with pytest.raises(serving_client.ServingClientError, match="NOT_FOUND: Model 'tiny' has no version 4"):
        client.status("tiny", version=4)


def test_rest_errors_and_row_format(server, photos):
    import base64
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{server.rest_port}/v1/models/tiny"
    body = json.dumps({"instances": [{"b64": base64.b64encode(photos[1][0]).decode()}]}).encode()
    with urllib.request.urlopen(urllib.request.Request(base + ":predict", data=body), timeout=30) as response:
        predictions = json.loads(response.read())["predictions"]
    assert len(predictions) == 1 and len(predictions[0]["tags"]) == tiny.TOP_K
    for url, data, status, message in [
        (base + ":predict", b"{not json", 400, "not JSON"),
        (base + ":explain", b"{}", 404, "No such endpoint"),
        (base + "/versions/9/metadata", None, 404, "version 9 is not available"),
    ]:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30)
        assert caught.value.code == status and message in json.loads(caught.value.read())["error"]


def test_limits(base_path, photos):
    photo = photos[1][0]
    limits = Limits(max_request_bytes=len(photo) * 3, max_image_bytes=len(photo) - 1, max_image_side=100, max_batch_size=2)
    with ModelServer(str(base_path), port=0, limits=limits) as strict:
        client = serving_client.GrpcClient(f"127.0.0.1:{strict.grpc_port}")
        small, _ = testing.encoded_image("PNG", size=(40, 30))
        big_side, _ = testing.encoded_image("PNG", size=(101, 20))
        for images, code, message in [
            ([photo], "INVALID_ARGUMENT", rf"images\[0\] has {len(photo)} bytes, over the limit of {len(photo) - 1}"),
            ([small, big_side], "INVALID_ARGUMENT", r"images\[1\] is a 101x20 PNG image, over the limit of 100 pixels a side"),
            ([small] * 3, "INVALID_ARGUMENT", "holds 3 images, over the limit of 2"),
            ([photo] * 4, "RESOURCE_EXHAUSTED", "larger than max"),
        ]:
            with pytest.raises(serving_client.ServingClientError, match=message) as caught:
                client.predict("tiny", {"images": np.array(images, dtype=object)})
            assert caught.value.code == code
        assert len(serving_client.tag_images(client, "tiny", [small, small])) == 2
        client.close()


def test_new_versions_load_without_a_restart(base_path, tmp_path, photos):
    base = tmp_path / "tiny"
    shutil.copytree(base_path / "1", base / "1")
    with ModelServer(str(base), port=0, poll_seconds=0.1) as running:
        client = serving_client.GrpcClient(f"127.0.0.1:{running.grpc_port}")
        assert len(serving_client.tag_images(client, "tiny", photos[1][:1])[0]["tags"]) == tiny.TOP_K
        # A broken version 3 must not take the server down; a good version 2 is served.
        (base / "3").mkdir()
        (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
        tiny.export_tiny(base, seed=1, top_k=2, version=2)
        assert export.list_versions(base) == [1, 2, 3]
        deadline = time.monotonic() + 60
        while (2, "AVAILABLE") not in client.status("tiny") and time.monotonic() < deadline:
            time.sleep(0.1)
        status = client.status("tiny")
        assert (2, "AVAILABLE") in status and (3, "END") in status, status
        assert len(serving_client.tag_images(client, "tiny", photos[1][:1])[0]["tags"]) == 2
        with pytest.raises(serving_client.ServingClientError, match="version 1 is not available; version 2 is served"):
            client.predict("tiny", {"images": np.array(photos[1][:1], dtype=object)}, version=1)
        client.close()


def _client_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "sdl_keras.serving.client", *args],
        capture_output=True, text=True, env=testing.python_env(), timeout=300,
    )


def test_client_cli_grpc_tags_and_rest_table(server, photos, tmp_path, expected):
    folder = testing.shared_path("reference", "images")
    paths = [os.path.join(folder, n) for n in photos[0]]
    vocabulary = tiny.tiny_vocabulary()
    # A FastText-style .vec file: "sunset" and "sky" are in the export's vocabulary, "sunrise" is not.
    vectors = {"sky": vocabulary.vectors[0], "sunset": vocabulary.vectors[7], "sunrise": np.linspace(-1, 1, tiny.EMBED_DIM)}
    with open(tmp_path / "words.vec", "w") as f:
        f.write(f"{len(vectors)} {tiny.EMBED_DIM}\n")
        for word, vector in vectors.items():
            f.write(word + " " + " ".join(f"{x:.6f}" for x in vector) + "\n")

    ran = _client_cli(f"--server=127.0.0.1:{server.grpc_port}", "--model=tiny", "--tags=sky,sunrise,sunset",
                      f"--tag_vectors={tmp_path / 'words.vec'}", "--format=jsonl", *paths)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [line["image"] for line in lines] == paths
    assert all(sorted(line["tags"]) == ["sky", "sunrise", "sunset"] for line in lines)

    ran = _client_cli(f"--rest=127.0.0.1:{server.rest_port}", "--model=tiny", paths[0])
    assert ran.returncode == 0, ran.stderr[-3000:]
    table = ran.stdout.splitlines()
    assert table[0].split() == ["image", "tag", "score", "row", "unseen"]
    assert table[1].startswith(photos[0][0]) and expected["tags"][0][0].decode() in table[1]
    assert len(table) == 1 + tiny.TOP_K

    ran = _client_cli(f"--server=127.0.0.1:{server.grpc_port}", "--model=tiny", "--version=5", paths[0])
    assert ran.returncode == 1 and "NOT_FOUND" in ran.stderr and "version 5" in ran.stderr


def test_server_process_under_concurrent_load(base_path, photos):
    flagfile = os.path.join(testing.REPO_ROOT, "configs", "serve.flags")
    process, target, _ = start_server_process(
        str(base_path), f"--flagfile={flagfile}", "--model_name=tiny", "--rest_api_port=0", "--grpc_workers=4"
    )
    try:
        result = run_load(lambda: serving_client.GrpcClient(target), "tiny", photos[1], clients=4, requests_per_client=10, time_limit_s=120)
    finally:
        process.terminate()
        process.wait(30)
    assert result.failures == 0, result.errors
    assert result.requests == 40


if __name__ == "__main__":
    testing.run(__file__)

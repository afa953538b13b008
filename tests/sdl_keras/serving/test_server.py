"""The server process as a TF Serving operator runs it: the export's own deployment files
(models.config, batching_parameters.txt, monitoring.config), two models, version policies
and labels; TF Serving's gRPC and REST answers, read with the project's clients, with only
the tensorflow-serving-api stubs and plain HTTP, and with the client CLI; bad requests;
Prometheus metrics."""

import base64
import concurrent.futures
import http.client
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sdl_keras.serving import clients as serving_client
from sdl_keras.serving.load import start_server_process
from tests import testing
from tests.sdl_keras.saved_model import tiny_export as tiny
from tests.sdl_keras.serving import servers


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """tiny (versions 1 and 2, as exported) and other (version 1), in one model config file
    built from the export's models.config, with labels added."""
    from tensorflow_serving.config import model_server_config_pb2

    root = tmp_path_factory.mktemp("serving")
    servers.export_versions(root / "tiny", versions=(1, 2))
    servers.copy_version(root / "tiny" / "1", root / "other" / "1")
    config = text_format.Parse((root / "tiny" / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    assert list(config.model_config_list.config[0].model_version_policy.specific.versions) == [1, 2]
    config.model_config_list.config[0].version_labels.update({"stable": 1, "canary": 2})
    other = config.model_config_list.config.add(name="other", base_path=str(root / "other"), model_platform="tensorflow")
    assert other.name == "other"
    (root / "models.config").write_text(text_format.MessageToString(config))
    return root


@pytest.fixture(scope="module")
def server(root):
    tiny_dir = root / "tiny"
    with start_server_process(f"--model_config_file={root / 'models.config'}", "--enable_batching",
                              f"--batching_parameters_file={tiny_dir / 'batching_parameters.txt'}",
                              f"--monitoring_config_file={tiny_dir / 'monitoring.config'}", rest=True) as running:
        yield running


@pytest.fixture(scope="module")
def clients(server):
    grpc_client = serving_client.GrpcClient(server.grpc)
    yield {"grpc": grpc_client, "rest": serving_client.RestClient(f"127.0.0.1:{server.rest_port}")}
    grpc_client.close()


@pytest.fixture(scope="module")
def photos():
    return servers.images(4)


@pytest.fixture(scope="module")
def expected(root, photos):
    """What the SavedModels themselves answer, in this process without a server."""
    answers = {}
    for version in (1, 2):
        loaded = tf.saved_model.load(str(root / "tiny" / str(version)))
        answers[version] = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=tf.constant(photos)).items()}
    return answers


def _tags(results):
    return [r["tags"] for r in results]


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_predict_by_latest_version_and_label_matches_the_saved_models(clients, photos, expected, protocol):
    client = clients[protocol]
    want = {v: [[t.decode() for t in row] for row in expected[v]["tags"]] for v in (1, 2)}
    assert _tags(serving_client.tag_images(client, "tiny", photos)) == want[2]  # latest: the highest available
    results = serving_client.tag_images(client, "tiny", photos, version=1)
    assert _tags(results) == want[1]
    np.testing.assert_allclose([r["scores"] for r in results], expected[1]["scores"], rtol=1e-6)
    assert [r["rows"] for r in results] == expected[1]["rows"].tolist()
    assert [r["unseen"] for r in results] == expected[1]["unseen"].tolist()
    matrix = serving_client.tag_images(client, "tiny", photos[:2], signature="matrix", version=1)
    assert np.asarray(matrix[0]["matrix"]).shape == (tiny.NUM_ROWS, tiny.EMBED_DIM)
    assert len(serving_client.tag_images(client, "other", photos[:1])[0]["tags"]) == tiny.TOP_K


def test_version_labels_over_grpc_and_rest(server, clients, photos, expected):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    with grpc.insecure_channel(server.grpc) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for label, version in (("stable", 1), ("canary", 2)):
            request = predict_pb2.PredictRequest()
            request.model_spec.name, request.model_spec.version_label = "tiny", label
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(photos[:1]))
            response = stub.Predict(request, timeout=60)
            assert response.model_spec.version.value == version
            assert tf.make_ndarray(response.outputs["tags"]).tolist() == expected[version]["tags"][:1].tolist()
        request.model_spec.version_label = "nope"
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Unrecognized servable version label: nope" in caught.value.details()
    status, body = servers.request(server.rest_port, "POST", "/v1/models/tiny/labels/stable:predict",
                                   servers.predict_body(photos[:1]))
    assert status == 200 and body["predictions"][0]["tags"] == [t.decode() for t in expected[1]["tags"][0]]
    status, body = servers.request(server.rest_port, "GET", "/v1/models/tiny/labels/canary")
    assert (status, [s["version"] for s in body["model_version_status"]]) == (200, ["2"])


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_score_tags_batches_only_identical_tag_vectors(root, clients, photos, protocol):
    """Concurrent score_tags requests with different tag vectors, batched on the server, each
    get the scores of their own vectors."""
    loaded = tf.saved_model.load(str(root / "tiny" / "2"))
    queries = [servers.float_array(3 + i % 3, tiny.EMBED_DIM, seed=i) for i in range(8)]

    def ask(i):
        inputs = {"images": np.array(photos[i % 2: i % 2 + 2], dtype=object), "tag_vectors": queries[i]}
        return clients[protocol].predict("tiny", inputs, "score_tags")["scores"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    for i, scores in enumerate(answers):
        want = loaded.signatures["score_tags"](images=tf.constant(photos[i % 2: i % 2 + 2]),
                                               tag_vectors=tf.constant(queries[i]))["scores"].numpy()
        np.testing.assert_allclose(scores, want, rtol=1e-5, atol=1e-6)


def test_status_metadata_listing_and_health(server, clients):
    for client in clients.values():
        signatures = client.signatures("tiny")
        assert {"serving_default", "matrix", "score_tags"} <= set(signatures)
        assert signatures["score_tags"]["inputs"]["tag_vectors"]["dtype"] == "DT_FLOAT"
        assert client.status("tiny") == [(2, "AVAILABLE"), (1, "AVAILABLE")]  # newest first, as TF Serving
    ok = {"error_code": "OK", "error_message": ""}
    assert servers.request(server.rest_port, "GET", "/v1/models/tiny/versions/1") == (
        200, {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]})
    status, body = servers.request(server.rest_port, "GET", "/v1/models/tiny/versions/2/metadata")
    assert status == 200 and body["model_spec"] == {"name": "tiny", "signature_name": "", "version": "2"}
    assert set(body["metadata"]["signature_def"]["signature_def"]) >= {"serving_default", "score_tags"}
    status, body = servers.request(server.rest_port, "GET", "/v1/models")
    assert status == 200 and [m["name"] for m in body["models"]] == ["other", "tiny"]
    assert [s["version"] for s in body["models"][1]["model_version_status"]] == ["2", "1"]
    with grpc.insecure_channel(server.grpc) as channel:
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
        ({"images": good, "tag_vectors": np.full((2, tiny.EMBED_DIM), np.nan, np.float32)}, {"signature": "score_tags"}, "INVALID_ARGUMENT", r"'tag_vectors' holds 32 non-finite value\(s\)"),
        ({"images": good}, {"signature": "classify"}, "INVALID_ARGUMENT", "signature name: 'classify' not found"),
        ({"images": good}, {"version": 7}, "NOT_FOUND", r"Specific\(tiny, 7\): version 7 of model 'tiny' is not found; available: \[1, 2\]"),
        ({"images": good, "tag_vectors": vectors}, {"model": "nope"}, "NOT_FOUND", r"model 'nope' is not served \(this server serves \['other', 'tiny'\]\)"),
    ]


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_bad_requests_are_refused_with_the_problem_named(clients, photos, protocol):
    client = clients[protocol]
    for inputs, options, code, message in _bad_requests(photos[0]):
        if protocol == "rest" and inputs.get("images") is not None and inputs["images"].dtype != object:
            continue  # JSON has no dtypes: REST converts numbers to the signature's type
        with pytest.raises(serving_client.ServingClientError) as caught:
            client.predict(options.get("model", "tiny"), inputs, options.get("signature", "serving_default"), options.get("version"))
        assert caught.value.code == code, caught.value
        assert caught.value.message and re.search(message, caught.value.message), caught.value.message
    # The server keeps serving after all of them.
    assert len(serving_client.tag_images(client, "tiny", photos[:1])) == 1


def test_grpc_wrong_dtype_and_unknown_version_status(clients, photos):
    client = clients["grpc"]
    with pytest.raises(serving_client.ServingClientError, match="'tag_vectors' must be float32, got float64"):
        client.predict("tiny", {"images": np.array(photos[:1], dtype=object), "tag_vectors": np.zeros((1, 16))}, "score_tags")
    with pytest.raises(serving_client.ServingClientError, match="NOT_FOUND: Could not find version 4 of model tiny"):
        client.status("tiny", version=4)


def test_rest_errors_and_row_format(server, photos):
    base = "/v1/models/tiny"
    status, body = servers.request(server.rest_port, "POST", base + ":predict", servers.predict_body(photos[:1]))
    assert status == 200 and len(body["predictions"][0]["tags"]) == servers.SECOND_TOP_K
    for method, path, data, code, message in [
        ("POST", base + ":predict", b"{not json", 400, "not valid JSON"),
        ("POST", base + ":explain", b"{}", 400, "Malformed request: POST /v1/models/tiny:explain"),
        ("POST", base + ":classify", b"{}", 400, "use :predict"),
        ("GET", base + "/versions/9/metadata", None, 404, "Specific(tiny, 9)"),
        ("GET", "/v2/models", None, 404, "No such endpoint"),
        ("POST", base + ":predict", b'{"instances": [], "signature_name": 7}', 400, "'signature_name' key must be a string"),
    ]:
        status, body = servers.request(server.rest_port, method, path, data)
        assert status == code and message in body["error"], (path, status, body)


def test_tensorflow_serving_api_stubs_and_plain_http_only(server, photos):
    """The server driven as TF Serving's docs show: the tensorflow-serving-api stubs over
    gRPC, and urllib / http.client over REST; no project code on the client side."""
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                         predict_pb2, prediction_service_pb2_grpc)

    with grpc.insecure_channel(server.grpc) as channel:
        prediction = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "tiny"
        request.model_spec.signature_name = "serving_default"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(photos[:2]))
        response = prediction.Predict(request, timeout=60)
        assert response.model_spec.version.value == 2
        assert tf.make_ndarray(response.outputs["scores"]).shape == (2, servers.SECOND_TOP_K)
        metadata = prediction.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": "tiny", "version": {"value": 1}}, metadata_field=["signature_def"]), timeout=60)
        defs = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(defs)
        assert defs.signature_def["score_tags"].inputs["tag_vectors"].dtype == tf.float32.as_datatype_enum
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "tiny"}), timeout=60)
        assert [(s.version, s.state) for s in status.model_version_status] == [(2, 30), (1, 30)]  # AVAILABLE

    url = f"http://127.0.0.1:{server.rest_port}/v1/models/tiny"
    body = json.dumps({"signature_name": "serving_default",
                       "inputs": {"images": [{"b64": base64.b64encode(p).decode()} for p in photos[:2]]}}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + "/versions/1:predict", data=body), timeout=60) as answer:
        outputs = json.loads(answer.read())["outputs"]
    assert np.array(outputs["scores"]).shape == (2, tiny.TOP_K)
    with urllib.request.urlopen(url, timeout=60) as answer:
        assert json.loads(answer.read())["model_version_status"][0]["status"]["error_code"] == "OK"
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url + "/versions/3", timeout=60)
    assert caught.value.code == 404 and json.loads(caught.value.read()) == {"error": "Could not find version 3 of model tiny"}
    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
    conn.request("POST", "/v1/models/tiny:predict", body=body, headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 200 and answer.getheader("Content-Type") == "application/json"
    assert len(json.loads(answer.read())["outputs"]["tags"]) == 2
    conn.close()


def _metric(text, name, **labels):
    pattern = re.escape(name) + r"\{" + ",".join(f'{k}="{re.escape(v)}"' for k, v in labels.items()) + r"\} (\S+)"
    match = re.search(pattern, text)
    return float(match.group(1)) if match else 0.0


def test_prometheus_metrics_use_tf_servings_names(root, server, clients, photos):
    def page():
        status, text = servers.request(server.rest_port, "GET", "/monitoring/prometheus/metrics")
        assert status == 200
        return text

    before = page()
    serving_client.tag_images(clients["grpc"], "other", photos[:1])
    with pytest.raises(serving_client.ServingClientError):
        clients["rest"].predict("other", {"images": np.array([b"garbage"], dtype=object)})
    after = page()
    assert "# TYPE :tensorflow:serving:request_count counter" in after
    assert "# TYPE :tensorflow:serving:request_latency histogram" in after
    for status, entrypoint in (("OK", "GRPC"), ("INVALID_ARGUMENT", "REST")):
        count = ":tensorflow:serving:request_count"
        assert _metric(after, count, model_name="other", status=status) == _metric(before, count, model_name="other", status=status) + 1
        latency = ":tensorflow:serving:request_latency_count"
        assert _metric(after, latency, model_name="other", API="Predict", entrypoint=entrypoint, status=status) >= 1
    inf = _metric(after, ":tensorflow:serving:request_latency_bucket", model_name="other", API="Predict",
                  entrypoint="GRPC", status="OK", le="+Inf")
    assert inf == _metric(after, ":tensorflow:serving:request_latency_count", model_name="other", API="Predict",
                          entrypoint="GRPC", status="OK")
    # Each version's warmup ran once, and batches ran through the batching session.
    for version in (1, 2):
        path = str(root / "tiny" / str(version))
        assert _metric(after, ":tensorflow:serving:model_warmup_latency_count", model_path=path, status="OK") == 1
    assert re.search(r"^:tensorflow:serving:batching_session:wrapped_run_count\{\} [1-9]", after, re.M)


def _client_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "sdl_keras.serving.client", *args],
        capture_output=True, text=True, env=testing.python_env(), timeout=300,
    )


def test_client_cli_grpc_tags_and_rest_table(server, photos, tmp_path, expected):
    paths = testing.write_files(str(tmp_path), [(f"photo{i}.jpg", data) for i, data in enumerate(photos)])
    vocabulary = tiny.tiny_vocabulary()
    # A FastText-style .vec file: "sunset" and "sky" are in the export's vocabulary, "sunrise" is not.
    vectors = {"sky": vocabulary.vectors[0], "sunset": vocabulary.vectors[7], "sunrise": np.linspace(-1, 1, tiny.EMBED_DIM)}
    with open(tmp_path / "words.vec", "w") as f:
        f.write(f"{len(vectors)} {tiny.EMBED_DIM}\n")
        for word, vector in vectors.items():
            f.write(word + " " + " ".join(f"{x:.6f}" for x in vector) + "\n")

    ran = _client_cli(f"--server={server.grpc}", "--model=tiny", "--tags=sky,sunrise,sunset",
                      f"--tag_vectors={tmp_path / 'words.vec'}", "--format=jsonl", *paths)
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [line["image"] for line in lines] == paths
    assert all(sorted(line["tags"]) == ["sky", "sunrise", "sunset"] for line in lines)

    ran = _client_cli(f"--rest=127.0.0.1:{server.rest_port}", "--model=tiny", "--version=1", paths[0])
    assert ran.returncode == 0, ran.stderr[-3000:]
    table = ran.stdout.splitlines()
    assert table[0].split() == ["image", "tag", "score", "row", "unseen"]
    assert table[1].startswith("photo0.jpg") and expected[1]["tags"][0][0].decode() in table[1]
    assert len(table) == 1 + tiny.TOP_K

    ran = _client_cli(f"--server={server.grpc}", "--model=tiny", "--version=5", paths[0])
    assert ran.returncode == 1 and "NOT_FOUND" in ran.stderr and "version 5" in ran.stderr


if __name__ == "__main__":
    testing.run(__file__)

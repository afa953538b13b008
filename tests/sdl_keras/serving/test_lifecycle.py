"""Versions through TF Serving's lifecycle in one server process, step by step (the tests run
in order): warmup replayed before AVAILABLE, a version copied in place non-atomically loaded
once complete, failed loads retried with backoff, removed versions unloaded after their
in-flight requests, config file changes without a restart, and SIGTERM draining."""

import concurrent.futures
import os
import shutil
import signal
import socket
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sdl_keras.serving import clients as serving_client
from sdl_keras.serving.load import start_server_process
from tests import testing
from tests.sdl_keras.saved_model import tiny_export as tiny
from tests.sdl_keras.serving import servers

BATCH_WAIT_S = 3.0  # batch_timeout_micros: every request stays in flight this long
RETRY_S = 0.3  # --load_retry_interval_micros


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    servers.export_versions(root / "source", versions=(1,))  # every version a copy: answers name the version
    servers.copy_version(root / "source" / "1", root / "tiny" / "1")
    (root / "models.config").write_text(servers.model_config_text([("tiny", root / "tiny", "all {}", {"stable": 1})]))
    (root / "batching.txt").write_text(f"max_batch_size {{ value: 32 }}\nbatch_timeout_micros {{ value: "
                                       f"{int(BATCH_WAIT_S * 1e6)} }}\nnum_batch_threads {{ value: 2 }}\n")
    return root


@pytest.fixture(scope="module")
def server(root):
    running = start_server_process(
        f"--model_config_file={root / 'models.config'}", "--model_config_file_poll_wait_seconds=1",
        "--file_system_poll_wait_seconds=0.2", "--max_num_load_retries=2",
        f"--load_retry_interval_micros={int(RETRY_S * 1e6)}", "--enable_batching",
        f"--batching_parameters_file={root / 'batching.txt'}", rest=True)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    client = serving_client.GrpcClient(server.grpc)
    yield client
    client.close()


@pytest.fixture(scope="module")
def photo():
    return servers.images(1)[0]


def _predict(client, photo, version=None, model="tiny"):
    """(the version that answered, number of tags)."""
    answered, outputs = client.predict_versioned(model, {"images": np.array([photo], dtype=object)}, version=version)
    return answered, outputs["tags"].shape[1]


def _log_lines(server, *needles):
    return [line for line in server.log().splitlines() if all(n in line for n in needles)]


def test_warmup_is_replayed_before_a_version_is_available(server, client):
    log = server.log()
    replayed = log.index("Model tiny version 1: replayed 18 warmup requests")  # 3 signatures x 6 batch sizes
    assert replayed < log.index("Model tiny version 1 is AVAILABLE")
    assert servers.statuses(client, "tiny") == {1: "AVAILABLE"}


def test_a_version_copied_in_place_loads_once_complete(root, server, client, photo):
    # saved_model.pb first, the variables and assets 2 s later, as a slow non-atomic copy writes them.
    servers.copy_version(root / "source" / "1", root / "tiny" / "2", pause_s=2.0)
    servers.wait_for(lambda: servers.statuses(client, "tiny").get(2) == "AVAILABLE", 60, "version 2")
    failures = _log_lines(server, "Model tiny version 2 failed to load (attempt 1 of 3")
    assert len(failures) <= 1, failures  # at most one try while the copy was incomplete
    assert _predict(client, photo) == (2, tiny.TOP_K)  # the latest


def _write_bad_warmup(version_dir):
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([b"\xff\xd8 not really a JPEG"]))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(log.SerializeToString())


def test_failed_loads_are_retried_with_backoff_then_loaded_when_fixed(root, server, client, photo):
    staging = root / "staging3"
    servers.copy_version(root / "source" / "1", staging)
    _write_bad_warmup(staging)
    os.rename(staging, root / "tiny" / "3")
    servers.wait_for(lambda: servers.statuses(client, "tiny").get(3) == "END", 60, "version 3 to be given up")
    tries = _log_lines(server, "Model tiny version 3 failed to load")
    assert len(tries) == 3, tries  # the first load and --max_num_load_retries=2
    assert "next try in 0.3 s" in tries[0] and "next try in 0.6 s" in tries[1] and "given up" in tries[2]
    _, body = servers.request(server.rest_port, "GET", "/v1/models/tiny/versions/3")
    (status,) = body["model_version_status"]
    assert status["state"] == "END" and status["status"]["error_code"] == "INVALID_ARGUMENT"
    assert "Warmup request 1 of" in status["status"]["error_message"]  # replayed before AVAILABLE, and failed
    assert _predict(client, photo) == (2, tiny.TOP_K)  # the others kept serving
    # Its files change (the operator fixes the warmup file): tried afresh, and served.
    shutil.copyfile(root / "source" / "1" / "assets.extra" / "tf_serving_warmup_requests",
                    root / "tiny" / "3" / "assets.extra" / "tf_serving_warmup_requests")
    servers.wait_for(lambda: servers.statuses(client, "tiny").get(3) == "AVAILABLE", 60, "version 3")
    assert _predict(client, photo) == (3, tiny.TOP_K)


def test_a_removed_version_is_unloaded_after_its_in_flight_requests(root, server, client, photo):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(_predict, serving_client.GrpcClient(server.grpc), photo, 2)
        time.sleep(0.5)  # the request waits in its batch for BATCH_WAIT_S
        os.rename(root / "tiny" / "2", root / "removed2")
        servers.wait_for(lambda: servers.statuses(client, "tiny").get(2) == "UNLOADING", 30, "UNLOADING")
        assert not in_flight.done()
        assert in_flight.result(60) == (2, tiny.TOP_K)  # answered by the version on its way out
    servers.wait_for(lambda: servers.statuses(client, "tiny").get(2) == "END", 30, "version 2 to END")
    with pytest.raises(serving_client.ServingClientError, match=r"Specific\(tiny, 2\): version 2 of model 'tiny' is END"):
        _predict(client, photo, version=2)
    # Every version removed: the model is not reported AVAILABLE, and health says NOT_SERVING.
    for version in (1, 3):
        os.rename(root / "tiny" / str(version), root / f"removed{version}")
    servers.wait_for(lambda: set(servers.statuses(client, "tiny").values()) == {"END"}, 30, "every version END")
    with pytest.raises(serving_client.ServingClientError, match=r"NOT_FOUND: .*no version of model 'tiny' is available"):
        _predict(client, photo)
    with grpc.insecure_channel(server.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    os.rename(root / "removed1", root / "tiny" / "1")  # back: loaded again
    servers.wait_for(lambda: servers.statuses(client, "tiny").get(1) == "AVAILABLE", 60, "version 1 again")


def test_config_file_changes_apply_without_a_restart(root, server, client, photo):
    servers.copy_version(root / "source" / "1", root / "copy" / "7")
    (root / "models.config").write_text(servers.model_config_text([
        ("tiny", root / "tiny", "all {}", {"stable": 1, "canary": 1}), ("copy", root / "copy", "latest { num_versions: 1 }", {}),
    ]))
    servers.wait_for(lambda: servers.statuses(client, "copy").get(7) == "AVAILABLE", 60, "the new model")
    assert _predict(client, photo, model="copy") == (7, tiny.TOP_K)
    status, body = servers.request(server.rest_port, "GET", "/v1/models/tiny/labels/canary")
    assert status == 200 and body["model_version_status"][0]["version"] == "1"


def test_sigterm_drains_in_flight_requests_and_exits_0(server, photo):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(_predict, serving_client.GrpcClient(server.grpc), photo, 1)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection(("127.0.0.1", server.rest_port), timeout=5).close()
                return False
            except ConnectionRefusedError:
                return True

        servers.wait_for(refused, 10, "new REST connections to be refused")
        assert not in_flight.done()
        assert in_flight.result(60) == (1, tiny.TOP_K)
    assert server.process.wait(60) == 0
    log = server.log()
    assert "Signal received: draining" in log and "Stopped" in log and "Traceback" not in log


if __name__ == "__main__":
    testing.run(__file__)

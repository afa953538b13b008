"""Bad input against the server process: every REST case of the fault sweep (framing, body
limits, stalled uploads, hostile JSON, non-finite tag vectors, huge and bomb images) and the
gRPC limits. Each is answered with its status and a JSON error naming the problem; the
server's threads stay bounded and its resident memory grows by at most 100 MB over them all."""

import json
import re
import socket
import time

import numpy as np
import pytest

from sdl_keras.serving import clients as serving_client
from sdl_keras.serving.load import start_server_process
from tests import testing
from tests.sdl_keras.saved_model import tiny_export as tiny
from tests.sdl_keras.serving import servers

LIMIT = 8 << 20  # --max_request_bytes
TIMEOUT_S = 1.5  # --rest_api_timeout_in_ms
MAX_CONNECTIONS = 100
MAX_PIXELS = 4_000_000
PATH = "/v1/models/tiny:predict"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = servers.export_versions(tmp_path_factory.mktemp("bad") / "tiny", versions=(1,))
    with start_server_process(f"--model_base_path={base}", f"--max_request_bytes={LIMIT}",
                              f"--rest_api_timeout_in_ms={int(TIMEOUT_S * 1000)}",
                              f"--rest_api_max_connections={MAX_CONNECTIONS}", f"--max_image_pixels={MAX_PIXELS}",
                              "--max_image_side=16384", "--max_image_bytes=1048576", "--max_batch_size=4",
                              rest=True) as running:
        yield running


@pytest.fixture(scope="module")
def photo():
    return servers.images(1)[0]


@pytest.fixture(scope="module")
def memory(server, photo):
    """The server's resident memory after its first request, before the bad-input cases."""
    assert servers.request(server.rest_port, "POST", PATH, servers.predict_body([photo]))[0] == 200
    return server.rss_bytes()


def _head(length=None, extra=""):
    lines = [f"POST {PATH} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + extra + "\r\n\r\n").encode()


def _error(answer, status, pattern):
    assert answer[0] == status, answer
    assert isinstance(answer[1], dict) and re.search(pattern, answer[1]["error"]), answer


def test_framing_errors_are_answered_400_411_without_reading_the_body(server, memory):
    # A negative Content-Length once bypassed the limit: 50 MB sent after it are not read into memory.
    _error(servers.raw_request(server.rest_port, _head("-1"), then=b"x" * (50 << 20)), 400, "bad Content-Length")
    _error(servers.raw_request(server.rest_port, _head("abc") + b"{}"), 400, "bad Content-Length")
    _error(servers.raw_request(server.rest_port, _head("10", "\r\nContent-Length: 11")), 400, "Content-Length")
    _error(servers.raw_request(server.rest_port, _head() + b"{}"), 411, "needs a Content-Length or Transfer-Encoding")
    _error(servers.raw_request(server.rest_port, b"GARBAGE\r\n\r\n"), 400, "Malformed HTTP request")


def test_a_chunked_body_is_accepted_and_limited_while_read(server, photo, memory):
    body = servers.predict_body([photo])
    chunks = [body[i:i + 100] for i in range(0, len(body), 100)]
    status, answer = servers.request(server.rest_port, "POST", PATH, iter(chunks), encode_chunked=True,
                                     headers={"Transfer-Encoding": "chunked"})
    assert status == 200 and len(answer["predictions"][0]["tags"]) == tiny.TOP_K
    huge = (b"x" * (1 << 20) for _ in range(100))  # 100 MB, chunked: the client still gets the 413
    _error(servers.request(server.rest_port, "POST", PATH, huge, encode_chunked=True,
                           headers={"Transfer-Encoding": "chunked"}), 413, f"passed the limit of {LIMIT:,} bytes")


def test_an_over_limit_body_gets_413_and_the_client_receives_it(server, memory):
    _error(servers.request(server.rest_port, "POST", PATH, b"x" * (100 << 20)), 413,
           rf"body of {100 << 20:,} bytes \(Content-Length\) is over the limit of {LIMIT:,} bytes")


def test_hostile_json_is_answered_400(server, memory):
    for body, pattern in [
        (b"[" * 100_000 + b"]" * 100_000, "nests deeper than the JSON decoder allows"),
        (b'{"instances": [1.5]}', r"input 'images': expected strings or \{'b64': ...\} objects"),
        (b"[null]", "the request body must be a JSON object"),
        (b'{"instances": [null]}', "input 'images': expected strings"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b'{"inputs": {"images": [{"b64": "AAAA"}], "tag_vectors": [[1e999]]}, "signature_name": "score_tags"}',
         "'tag_vectors' must have shape"),
    ]:
        _error(servers.request(server.rest_port, "POST", PATH, body), 400, pattern)


def test_non_finite_tag_vectors_are_invalid_argument(server, photo, memory):
    vectors = np.ones((2, tiny.EMBED_DIM), np.float32)
    vectors[1, 3] = np.inf
    grpc_client = serving_client.GrpcClient(server.grpc)
    rest_client = serving_client.RestClient(f"127.0.0.1:{server.rest_port}")
    for client in (grpc_client, rest_client):
        with pytest.raises(serving_client.ServingClientError) as caught:
            client.predict("tiny", {"images": np.array([photo], dtype=object), "tag_vectors": vectors}, "score_tags")
        assert caught.value.code == "INVALID_ARGUMENT"
        assert "'tag_vectors' holds 1 non-finite value(s) (NaN or infinity), the first inf at [1, 3]" in caught.value.message
    grpc_client.close()
    # NaN and Infinity, which JSON itself lacks, are read as TF Serving reads them and refused the same way.
    body = '{"signature_name": "score_tags", "inputs": {"images": [%s], "tag_vectors": [%s]}}' % (
        json.dumps({"b64": __import__("base64").b64encode(photo).decode()}), json.dumps([float("nan")] * tiny.EMBED_DIM))
    _error(servers.request(server.rest_port, "POST", PATH, body.encode()), 400, "non-finite value")


def test_image_limits_are_checked_from_the_header(server, memory):
    big = servers.black_png(8192, 8192)  # 196 KB that decode to 201 MB
    bomb = servers.black_png(30000, 30000, rows=4)
    client = serving_client.GrpcClient(server.grpc)
    small, _ = testing.encoded_image("PNG", size=(40, 30))
    for images, pattern in [
        ([small, big], rf"images\[1\] is a 8192x8192 PNG image of 67,108,864 pixels \({len(big):,} bytes\), over the "
                       rf"limit of {MAX_PIXELS:,} pixels"),
        ([bomb], r"images\[0\] is a decompression bomb \(\d+ bytes\): Image size \(900000000 pixels\) exceeds limit"),
        ([servers.black_png(16385, 10)], r"images\[0\] is a 16385x10 PNG image, over the limit of 16384 pixels a side"),
        ([small] * 5, "holds 5 images, over the limit of 4"),
    ]:
        with pytest.raises(serving_client.ServingClientError, match=pattern) as caught:
            client.predict("tiny", {"images": np.array(images, dtype=object)})
        assert caught.value.code == "INVALID_ARGUMENT"
    with pytest.raises(serving_client.ServingClientError, match=r"images\[0\] has \d+ bytes, over the limit of 1048576"):
        client.predict("tiny", {"images": np.array([b"\xff\xd8" + bytes(1 << 20)], dtype=object)})
    with pytest.raises(serving_client.ServingClientError, match="larger than max") as caught:
        client.predict("tiny", {"images": np.array([bytes(LIMIT)], dtype=object)})
    assert caught.value.code == "RESOURCE_EXHAUSTED"
    _error(servers.request(server.rest_port, "POST", PATH, servers.predict_body([bomb])), 400, "decompression bomb")
    assert len(serving_client.tag_images(client, "tiny", [small, small])) == 2
    client.close()


def _threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


def test_stalled_uploads_time_out_within_a_connection_cap(server, photo, memory):
    threads_before = _threads(server.pid)
    stalled = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=60)
        sock.sendall(_head("1000") + b'{"instances"')  # then nothing
        stalled.append(sock)
    time.sleep(0.5)
    assert _threads(server.pid) <= threads_before + 2, "stalled connections must not cost a thread each"
    # A good request waits its turn behind them (at most 100 at a time, each cut after the timeout).
    start = time.monotonic()
    assert servers.request(server.rest_port, "POST", PATH, servers.predict_body([photo]))[0] == 200
    assert time.monotonic() - start < 300 / MAX_CONNECTIONS * TIMEOUT_S + 30
    answers = []
    for sock in stalled:
        with sock:
            answers.append(sock.recv(4096).split(b"\r\n", 1)[0])
    assert answers == [b"HTTP/1.1 408 Request Timeout"] * 300


def test_a_client_that_disconnects_costs_one_log_line(server, photo, memory):
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=60) as sock:
        sock.sendall(_head("1000") + b'{"instances": [')
    servers.wait_for(lambda: "disconnected: the connection closed" in server.log(), 30, "the disconnect's log line")
    line = [line for line in server.log().splitlines() if "disconnected" in line]
    assert len(line) == 1, line
    assert "Traceback" not in server.log()
    assert servers.request(server.rest_port, "POST", PATH, servers.predict_body([photo]))[0] == 200


def test_the_server_survived_them_all_within_100_mb(server, memory):
    growth = (server.rss_bytes() - memory) / 2**20
    print(f"resident memory: {memory / 2**20:.0f} MB before the bad-input cases, grew by {growth:.1f} MB")
    assert growth <= 100, f"the server's resident memory grew by {growth:.0f} MB over the bad-input cases"
    assert server.process.poll() is None and "Traceback" not in server.log()


if __name__ == "__main__":
    testing.run(__file__)

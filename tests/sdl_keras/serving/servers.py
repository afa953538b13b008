"""What the serving tests share: tiny exports, images, model config files, waiting on a
server process, and HTTP both well-formed (http.client) and raw (a socket)."""

import http.client
import json
import os
import socket
import time

import numpy as np

from sdl_keras.serving.load import copy_version  # noqa: F401  (the tests' non-atomic copy)
from tests import testing
from tests.sdl_keras.saved_model import tiny_export as tiny

SECOND_TOP_K = 2  # version 2 of the tiny model returns 2 tags: answers say which version ran


def export_versions(base, versions=(1, 2), serving_base_path=None):
    """The tiny model under `base`: version 1 (seed 0, top 5 tags), later ones (seed 1, top 2)."""
    from sdl_keras.saved_model import export_model

    model, vocabulary = tiny.tiny_model(), tiny.tiny_vocabulary()
    other = tiny.tiny_model(seed=1) if len(versions) > 1 else None
    for version in versions:
        export_model(model if version == 1 else other, vocabulary, str(base), version=version,
                     top_k=tiny.TOP_K if version == 1 else SECOND_TOP_K, model_name=os.path.basename(base),
                     serving_base_path=serving_base_path or str(base))
    return base


def images(count=4, size=(48, 40)):
    """Encoded JPEGs (a different one each)."""
    return [testing.encoded_image("JPEG", size=size, seed=seed)[0] for seed in range(count)]


def model_config_text(models):
    """A ModelServerConfig text proto from [(name, base_path, policy text, {label: version})]."""
    entries = []
    for name, base_path, policy, labels in models:
        label_text = "".join(f' version_labels {{ key: "{k}" value: {v} }}' for k, v in labels.items())
        entries.append(f'  config {{ name: "{name}" base_path: "{base_path}" model_platform: "tensorflow"'
                       f' model_version_policy {{ {policy} }}{label_text} }}')
    return "model_config_list {\n" + "\n".join(entries) + "\n}\n"


def wait_for(condition, timeout_s=60.0, what="the condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"Timed out after {timeout_s:.0f} s waiting for {what}.")


def statuses(client, model):
    """{version: state} from GetModelStatus (empty while the model has none)."""
    from sdl_keras.serving.clients import ServingClientError

    try:
        return dict(client.status(model))
    except ServingClientError:
        return {}


def request(port, method, path, body=None, headers=None, timeout=60, **kwargs):
    """(status, JSON or text body) of one request through http.client."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {}, **kwargs)
        response = conn.getresponse()
        return response.status, _decode(response)
    finally:
        conn.close()


def raw_request(port, data, timeout=60, then=b""):
    """(status, body) answering raw bytes sent on a socket (malformed requests); `then` is
    sent after, ignoring a connection the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        try:
            sock.sendall(then)
        except OSError:
            pass
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, _decode(response)


def _decode(response):
    data = response.read()
    if "json" in response.getheader("Content-Type", ""):
        return json.loads(data)
    return data.decode("utf-8", errors="replace")


def predict_body(images_, **extra):
    import base64

    instances = [{"b64": base64.b64encode(data).decode("ascii")} for data in images_]
    return json.dumps({"instances": instances, **extra}).encode()


def float_array(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def black_png(width, height, rows=None):
    """A valid all-black RGB PNG of width x height (tiny however large: zeros compress 1000x);
    `rows` writes only that many rows of pixel data, as a decompression bomb's header lies."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), b"\x00" * (1 + 3 * width)
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")

"""Load generation against a model server: concurrent clients, bounded in count and time,
and the server started as its own process.

Used by `benchmarks/serving.py` (the reported figures) and by the serving tests (smaller
runs that must see no good request fail).
"""

import collections
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

_SERVING_LINE = re.compile(r"gRPC on (?P<host>[^:\s]+):(?P<port>\d+)(?:, REST on [^:\s]+:(?P<rest>\d+))?")


@dataclasses.dataclass
class LoadRequest:
    """One request of a load run: `good` ones must succeed, the others must be refused."""

    inputs: dict
    signature: str = "serving_default"
    good: bool = True


@dataclasses.dataclass
class LoadResult:
    requests: int
    failures: int  # good requests that failed, and bad ones that were answered OK
    errors: list  # the first few failure messages
    wall_s: float
    latencies_ms: np.ndarray  # of the good requests that succeeded
    versions: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # which answered
    refused: int = 0  # bad requests refused, as they must be

    @property
    def throughput(self):
        return self.requests / self.wall_s if self.wall_s else 0.0

    def percentile(self, q):
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else float("nan")


def image_requests(images):
    """request_for(client, i): one image each, cycling through `images`, all good."""
    return lambda index, i: LoadRequest({"images": np.array([images[(index + i) % len(images)]], dtype=object)})


def run_load(make_client, model, request_for, clients=8, requests_per_client=200, time_limit_s=120.0):
    """Runs `clients` threads, each with its own client (`make_client()`, its own channel),
    sending `request_for(client index, i)` for i < `requests_per_client`, until done or
    `time_limit_s` has passed. Clients with `predict_versioned` report which version answered."""
    deadline = time.monotonic() + time_limit_s
    latencies, errors, versions, lock = [], [], collections.Counter(), threading.Lock()
    counts = collections.Counter()

    def worker(index):
        client = make_client()
        predict = getattr(client, "predict_versioned", None)
        try:
            for i in range(requests_per_client):
                if time.monotonic() > deadline:
                    break
                request = request_for(index, i)
                start = time.perf_counter()
                version = None
                try:
                    if predict:
                        version, outputs = predict(model, request.inputs, request.signature)
                    else:
                        outputs = client.predict(model, request.inputs, request.signature)
                    size = len(request.inputs["images"])
                    ok = all(v.shape[:1] == (size,) for v in outputs.values())
                    problem = None if ok else f"unexpected output shapes {[v.shape for v in outputs.values()]}"
                    if not request.good:
                        problem = f"a bad request was answered OK: {sorted(request.inputs)}"
                except Exception as error:  # every failure is counted, whatever its kind
                    problem = None if not request.good else f"{type(error).__name__}: {error}"
                    if not request.good:
                        with lock:
                            counts["refused"] += 1
                elapsed = (time.perf_counter() - start) * 1000.0
                with lock:
                    counts["requests"] += 1
                    if problem is None and request.good:
                        latencies.append(elapsed)
                        versions[version] += 1
                    elif problem is not None:
                        counts["failures"] += 1
                        if len(errors) < 5:
                            errors.append(problem)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return LoadResult(counts["requests"], counts["failures"], errors, wall, np.array(latencies), versions,
                      counts["refused"])


def mixed_requests(images, embed_dim, bad_every=4):
    """request_for(client, i) of a fault sweep: good requests to all three signatures
    (serving_default, matrix, score_tags with tag vectors) and every `bad_every`th request bad,
    in turn garbage bytes, a JPEG cut in half (its header is fine: it fails inside a batch),
    an empty batch and NaN tag vectors."""
    vectors = np.random.default_rng(0).normal(size=(4, embed_dim)).astype(np.float32)
    nan_vectors = np.full((2, embed_dim), np.nan, np.float32)
    truncated = images[0][: len(images[0]) // 2]

    def request_for(index, i):
        image = np.array([images[(index + i) % len(images)]], dtype=object)
        if i % bad_every == bad_every - 1:
            inputs, signature = [({"images": np.array([b"garbage bytes"], dtype=object)}, "serving_default"),
                                 ({"images": np.array([truncated], dtype=object)}, "serving_default"),
                                 ({"images": np.array([], dtype=object)}, "matrix"),
                                 ({"images": image, "tag_vectors": nan_vectors}, "score_tags")][(index + i) % 4]
            return LoadRequest(inputs, signature, good=False)
        if i % 4 == 1:
            return LoadRequest({"images": image, "tag_vectors": vectors}, "score_tags")
        return LoadRequest({"images": image}, "matrix" if i % 8 == 2 else "serving_default")

    return request_for


def copy_version(source, target, pause_s=0.0):
    """Copies a version folder file by file, saved_model.pb first, as a non-atomic `cp -r` or
    rsync does, pausing `pause_s` after the first file."""
    import shutil

    files = sorted((os.path.relpath(os.path.join(r, f), source) for r, _, fs in os.walk(source) for f in fs),
                   key=lambda p: p != "saved_model.pb")
    for index, name in enumerate(files):
        os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
        shutil.copyfile(os.path.join(source, name), os.path.join(target, name))
        if index == 0:
            time.sleep(pause_s)


class VersionDrop:
    """A new version copied into a served base path non-atomically during a load run:
    `requests(request_for)` starts the copy at client 0's request `start_at` and holds every
    client's requests from `served_from` on until the server serves the new version, so the
    run covers the switch. `status()` returns {version: state} (a client's GetModelStatus)."""

    def __init__(self, source, target, version, status, start_at=5, served_from=20, pause_s=1.0, timeout_s=300.0):
        self.source, self.target, self.version, self.status = source, target, version, status
        self.start_at, self.served_from, self.pause_s, self.timeout_s = start_at, served_from, pause_s, timeout_s
        self.served = threading.Event()
        self._thread = threading.Thread(target=self._drop, daemon=True)

    def _drop(self):
        copy_version(self.source, self.target, self.pause_s)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline and self.status().get(self.version) != "AVAILABLE":
            time.sleep(0.1)
        self.served.set()

    def requests(self, request_for):
        def wrapped(index, i):
            if index == 0 and i == self.start_at:
                self._thread.start()
            if i >= self.served_from:
                self.served.wait(self.timeout_s)
            return request_for(index, i)

        return wrapped

    def join(self):
        if self._thread.is_alive():
            self._thread.join(self.timeout_s)
        return self.served.is_set()


@dataclasses.dataclass
class ServerProcess:
    """A running `python -m sdl_keras.serving.server`: its process, "HOST:PORT" of gRPC, the
    REST port (or None) and its log (stderr) file."""

    process: subprocess.Popen
    grpc: str
    rest_port: int
    log_path: str

    @property
    def pid(self):
        return self.process.pid

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def rss_bytes(self):
        """The server's resident memory (VmRSS of /proc/PID/status)."""
        with open(f"/proc/{self.pid}/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kib * 1024

    def stop(self, timeout_s=60.0):
        """SIGTERM (the server drains), then waits; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()
        finally:
            if self.process.stdout:
                self.process.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        os.remove(self.log_path)


def free_port(host="127.0.0.1"):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def start_server_process(*flags, rest=False, timeout_s=120.0, env=None, cwd=None):
    """Starts `python -m sdl_keras.serving.server FLAGS` on 127.0.0.1 with gRPC on a free port
    (and, with `rest`, REST on one); returns a ServerProcess once it serves. Stop it with
    `stop()` (or use it as a context manager). Relative paths among `flags` (a --flagfile)
    are read from `cwd`."""
    import sdl_keras

    env = dict(os.environ if env is None else env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(sdl_keras.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # The ports come last, overriding any flagfile among `flags`.
    ports = ["--port=0", f"--rest_api_port={free_port() if rest else 0}"]
    command = [sys.executable, "-m", "sdl_keras.serving.server", *flags, *ports]
    log_fd, log_path = tempfile.mkstemp(prefix="sdl_server_", suffix=".log")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log_fd, text=True, env=env, cwd=cwd)
    os.close(log_fd)
    found = {}

    def read():
        for line in process.stdout:
            match = _SERVING_LINE.search(line)
            if match:
                found.update(match.groupdict())
                break

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    server = ServerProcess(process, f"{found.get('host')}:{found.get('port')}",
                           int(found["rest"]) if found.get("rest") else None, log_path)
    if not found:
        server.process.kill()
        server.process.wait()
        tail = "".join(server.log().splitlines(keepends=True)[-20:])
        os.remove(log_path)
        raise RuntimeError(f"The server did not start within {timeout_s:.0f} s ({command}):\n{tail}")
    return server

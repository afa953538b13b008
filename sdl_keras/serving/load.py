"""Load generation against a model server: concurrent clients, bounded in count and time.

Used by `benchmarks/serving.py` (the reported figures) and by the serving tests (a
smaller run that must see no failed request).
"""

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

_SERVING_LINE = re.compile(r"gRPC on (?P<host>[^:\s]+):(?P<port>\d+)(?:, REST on [^:\s]+:(?P<rest>\d+))?")


@dataclasses.dataclass
class LoadResult:
    requests: int
    failures: int
    errors: list  # the first few failure messages
    wall_s: float
    latencies_ms: np.ndarray

    @property
    def throughput(self):
        return self.requests / self.wall_s if self.wall_s else 0.0

    def percentile(self, q):
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms.size else float("nan")


def run_load(make_client, model, images, clients=8, requests_per_client=200, time_limit_s=120.0, signature="serving_default"):
    """Runs `clients` threads, each with its own client (`make_client()`, its own
    channel), sending `requests_per_client` predict requests of one image each, cycling
    through `images`, until done or `time_limit_s` has passed."""
    deadline = time.monotonic() + time_limit_s
    latencies, errors, lock = [], [], threading.Lock()
    failures = [0]

    def worker(index):
        client = make_client()
        try:
            for i in range(requests_per_client):
                if time.monotonic() > deadline:
                    break
                data = images[(index + i) % len(images)]
                start = time.perf_counter()
                try:
                    outputs = client.predict(model, {"images": np.array([data], dtype=object)}, signature)
                    ok = all(v.shape[:1] == (1,) for v in outputs.values())
                    problem = None if ok else f"unexpected output shapes {[v.shape for v in outputs.values()]}"
                except Exception as error:  # every failure is counted, whatever its kind
                    problem = f"{type(error).__name__}: {error}"
                elapsed = (time.perf_counter() - start) * 1000.0
                with lock:
                    if problem is None:
                        latencies.append(elapsed)
                    else:
                        failures[0] += 1
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
    return LoadResult(len(latencies) + failures[0], failures[0], errors, wall, np.array(latencies))


def start_server_process(base_path, *flags, timeout_s=120.0, cwd=None, stderr=None):
    """Starts `python -m sdl_keras.serving.server` on a free 127.0.0.1 port; returns
    (process, "127.0.0.1:PORT", rest port or None) once it serves. The caller terminates it.

    Relative paths among `flags` (a --flagfile) are read from `cwd`. The server's stderr
    (TF's and the server's logs) goes to `stderr`, an open file the caller reads once the
    server has ended; by default to a temporary file, read back only if it fails to start.
    """
    import sdl_keras

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(sdl_keras.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # The base path and port come last, overriding any flagfile among `flags`.
    command = [sys.executable, "-m", "sdl_keras.serving.server", *flags, "--model_base_path", base_path, "--port", "0"]
    log = tempfile.TemporaryFile(mode="w+") if stderr is None else stderr
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=cwd)
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
    if not found:
        process.kill()
        process.wait()
        log.seek(0)
        tail = "".join(log.readlines()[-15:])
        raise RuntimeError(f"The server did not start within {timeout_s:.0f} s ({command}):\n{tail}")
    if stderr is None:
        log.close()
    return process, f"{found['host']}:{found['port']}", int(found["rest"]) if found["rest"] else None

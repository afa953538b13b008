"""A model server speaking TF Serving's APIs, for where its binary cannot be installed (the
library side of `python -m sdl_keras.serving.server`).

`ModelServer` wires the pieces the way `tensorflow_model_server` does: the models of the
config (manager, versions, servables, with optional batching), TF Serving's gRPC services
(grpc_services) plus the standard `grpc.health.v1.Health` service (an addition), and the REST
API with Prometheus metrics (rest_api over http_server). It binds 127.0.0.1 unless told
otherwise, and on SIGTERM it drains: no new connections or calls, in-flight requests
finish, then the models are unloaded.
"""

import concurrent.futures
import dataclasses
import logging
import os
import signal
import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from sdl_keras.serving.grpc_services import PREDICTION_SERVICE, ModelServicer, PredictionServicer
from sdl_keras.serving.http_server import HttpLimits, HttpServer
from sdl_keras.serving.manager import ModelManager
from sdl_keras.serving.rest_api import RestApi
from sdl_keras.serving.servables import Limits, Servable
from sdl_keras.serving.serving_api import ServingApi
from sdl_keras.serving.versions import RetryPolicy

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ServerOptions:
    """What `tensorflow_model_server`'s flags set (server.py maps them one to one)."""

    models: list  # server_config.ModelConfig, from --model_config_file or --model_base_path
    host: str = "127.0.0.1"
    port: int = 8500  # 0: a free port
    rest_api_port: int = 0  # 0: no REST API (as TF Serving)
    rest_api_timeout_s: float = 30.0
    rest_api_num_threads: int = max(16, 4 * (os.cpu_count() or 1))
    rest_api_max_connections: int = 256
    limits: Limits = Limits()
    file_system_poll_wait_seconds: float = 1.0
    model_config_file: str = None
    model_config_file_poll_wait_seconds: float = 0.0
    batching: object = None  # server_config.BatchingParameters with --enable_batching
    metrics_path: str = None  # Prometheus, from --monitoring_config_file
    retry: RetryPolicy = RetryPolicy()
    grpc_workers: int = 64
    drain_timeout_s: float = 30.0


def server_options(model_config_file=None, model_base_path=None, model_name=None, enable_batching=False,
                   batching_parameters_file=None, monitoring_config_file=None, **settings):
    """ServerOptions from TF Serving's flags: the config files read and checked, as
    tensorflow_model_server's main does (`settings` are ServerOptions fields)."""
    from sdl_keras.serving import server_config

    if bool(model_config_file) == bool(model_base_path):
        raise ValueError("Give --model_config_file (several models, version policies, labels) or --model_base_path "
                         "(one model, its latest version), not both or neither.")
    if model_config_file:
        models = server_config.read_model_config_file(model_config_file)
    else:
        models = server_config.single_model_config(model_base_path, model_name)
    if batching_parameters_file and not enable_batching:
        raise ValueError("--batching_parameters_file needs --enable_batching.")
    batching = server_config.read_batching_parameters(batching_parameters_file) if enable_batching else None
    metrics_path = server_config.read_monitoring_config(monitoring_config_file) if monitoring_config_file else None
    if metrics_path and not settings.get("rest_api_port"):
        raise ValueError("--monitoring_config_file needs --rest_api_port: the metrics are served on the REST port.")
    return ServerOptions(models, model_config_file=model_config_file, batching=batching, metrics_path=metrics_path,
                         **settings)


class ModelServer:
    """The server; `grpc_port` and `rest_port` hold the bound ports after `start()`."""

    def __init__(self, options):
        self.options = options
        self.host = options.host
        self.grpc_port, self.rest_port = options.port, None
        self.manager = ModelManager(options.models, self._load, options.retry, options.file_system_poll_wait_seconds,
                                    options.model_config_file, options.model_config_file_poll_wait_seconds)
        self.api = ServingApi(self.manager)
        self.health = health.HealthServicer()
        self._grpc = self._http = self._executor = None
        self._draining = False

    def _load(self, name, version, path):
        servable = Servable(name, version, path, self.options.limits, self.options.batching)
        try:
            start = time.perf_counter()
            count = servable.warm_up()
        except Exception:
            servable.close()
            raise
        logger.info("Model %s version %d: replayed %d warmup requests in %.1f s", name, version, count,
                    time.perf_counter() - start)
        return servable

    def _update_health(self, _model=None):
        serving = not self._draining and all(m.available() for m in self.manager.models())
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", PREDICTION_SERVICE):
            self.health.set(service, status)

    def start(self):
        """Loads the models (each aspired version, warmed up), then opens the ports."""
        options = self.options
        self._update_health()
        self.manager.on_change = self._update_health
        self.manager.start()
        self._update_health()
        self._grpc = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=options.grpc_workers, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", options.limits.max_request_bytes)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(self.api), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.api), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{options.host}:{options.port}")
        if not self.grpc_port:
            raise OSError(f"Cannot bind the gRPC port {options.port} on {options.host}.")
        self._grpc.start()
        if options.rest_api_port:
            self._executor = concurrent.futures.ThreadPoolExecutor(options.rest_api_num_threads,
                                                                   thread_name_prefix="rest")
            limits = HttpLimits(options.limits.max_request_bytes, options.rest_api_timeout_s,
                                options.rest_api_max_connections)
            rest_api = RestApi(self.api, options.metrics_path)
            self._http = HttpServer(options.host, options.rest_api_port, rest_api.handle, self._executor, limits)
            self.rest_port = self._http.start().port
        return self

    def stop(self, grace=None):
        """Drains, then stops: new connections and calls are refused, in-flight requests finish
        (for at most `grace` seconds, --drain_timeout_seconds by default), models are unloaded."""
        grace = self.options.drain_timeout_s if grace is None else grace
        self._draining = True
        self._update_health()
        deadline = time.monotonic() + grace
        if self._http:
            self._http.stop_accepting()
        stopped = self._grpc.stop(grace) if self._grpc else None
        while self._http and self._http.busy() and time.monotonic() < deadline:
            time.sleep(0.02)
        if stopped is not None:
            stopped.wait(max(0.0, deadline - time.monotonic()))
        if self._http:
            self._http.stop(max(0.1, deadline - time.monotonic()))
        if self._executor:
            self._executor.shutdown(wait=True)
        self.manager.stop()

    def serve_until_signalled(self):
        """Serves until SIGTERM or SIGINT, then drains and stops (the command's main loop)."""
        received = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, _frame: received.set())
        received.wait()
        logger.info("Signal received: draining (at most %.0f s)", self.options.drain_timeout_s)
        self.stop()
        logger.info("Stopped")

    def describe(self):
        """One line naming the models and the bound ports (scripts parse the ports)."""
        models = ", ".join(f"{m.name} (versions {m.available()})" for m in self.manager.models())
        rest = f", REST on {self.host}:{self.rest_port}" if self.rest_port else ""
        return f"Serving {models}: gRPC on {self.host}:{self.grpc_port}{rest}"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(grace=1.0)

"""A local model server speaking TF Serving's own APIs, for where its binary cannot be
installed (the library side of `python -m sdl_keras.serving.server`).

Implements, from the `tensorflow-serving-api` protos, `tensorflow.serving.PredictionService`
(Predict, GetModelMetadata) and `tensorflow.serving.ModelService` (GetModelStatus), the
standard `grpc.health.v1.Health` service, and optionally TF Serving's REST predict, status and
metadata endpoints. It serves the newest version under the base path and loads new versions
without a restart (`servables.VersionedModel`), so `sdl_keras.serving.client` works the same
against it and against `tensorflow/serving`. It binds 127.0.0.1 unless --host says otherwise.
"""

import concurrent.futures
import http.server
import json
import logging
import os
import re
import threading

import grpc
import tensorflow as tf
from google.protobuf import any_pb2, json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from sdl_keras.serving.servables import Limits, ServingError, VersionedModel, invalid

logger = logging.getLogger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


def _version(model_spec):
    if model_spec.version_label:
        raise invalid(f"Version labels are not supported by this server (got {model_spec.version_label!r}).")
    return model_spec.version.value if model_spec.HasField("version") else None


def _abort(context, error):
    context.abort(error.code, error.message)


def as_numpy_inputs(tensors):
    """{name: numpy array} from {name: TensorProto}, INVALID_ARGUMENT for malformed ones."""
    arrays = {}
    for key, proto in tensors.items():
        try:
            arrays[key] = tf.make_ndarray(proto)
        except Exception as error:
            raise invalid(f"Input {key!r} is not a valid TensorProto: {error}") from None
    return arrays


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model):
        self.model = model

    def Predict(self, request, context):
        try:
            servable = self.model.servable(request.model_spec.name, _version(request.model_spec))
            signature = servable.signature(request.model_spec.signature_name)
            outputs = servable.predict(signature, as_numpy_inputs(request.inputs), list(request.output_filter))
        except ServingError as error:
            return _abort(context, error)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        try:
            fields = list(request.metadata_field)
            if fields != ["signature_def"]:
                raise invalid(f"metadata_field must be ['signature_def'] (the only metadata served), got {fields}.")
            servable = self.model.servable(request.model_spec.name, _version(request.model_spec))
        except ServingError as error:
            return _abort(context, error)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        packed = any_pb2.Any()
        packed.Pack(servable.signature_defs)
        response.metadata["signature_def"].CopyFrom(packed)
        return response


def model_status(model, name, version):
    """The GetModelStatusResponse for a model name and optional version."""
    if name != model.name:
        raise ServingError(grpc.StatusCode.NOT_FOUND, f"Model {name!r} is not served (this server serves {model.name!r}).")
    response = get_model_status_pb2.GetModelStatusResponse()
    for number, state, message in model.status(version):
        status = response.model_version_status.add(version=number)
        status.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
        if message:
            status.status.error_code = grpc.StatusCode.UNKNOWN.value[0]
            status.status.error_message = message
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, model):
        self.model = model

    def GetModelStatus(self, request, context):
        try:
            return model_status(self.model, request.model_spec.name, _version(request.model_spec))
        except ServingError as error:
            return _abort(context, error)


_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
}
_REST_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<verb>/metadata|:predict)?$")


def _to_json(message):
    # TF Serving's REST API keeps proto field names and prints default values ("OK").
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)


def _rest_handler(model, limits):
    from sdl_keras.serving import rest

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            logger.debug("REST %s: " + fmt, self.client_address[0], *args)

        def _reply(self, code, body):
            data = json.dumps(body).encode("utf-8")
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method):
            match = _REST_PATH.match(self.path)
            if not match:
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"No such endpoint: {method} {self.path}")
            verb = match["verb"] or ""
            if (method == "POST") != (verb == ":predict"):
                raise ServingError(grpc.StatusCode.NOT_FOUND, f"No such endpoint: {method} {self.path}")
            return match["name"], int(match["version"]) if match["version"] else None, verb

        def _handle(self, method):
            try:
                name, version, verb = self._route(method)
                if verb == "":
                    self._reply(200, _to_json(model_status(model, name, version)))
                elif verb == "/metadata":
                    servable = model.servable(name, version)
                    spec = {"name": servable.name, "version": str(servable.version), "signature_name": ""}
                    self._reply(200, {"model_spec": spec, "metadata": {"signature_def": _to_json(servable.signature_defs)}})
                else:
                    self._reply(200, self._predict(name, version))
            except ServingError as error:
                self._reply(_HTTP_STATUS.get(error.code, 500), {"error": error.message})

        def _predict(self, name, version):
            length = int(self.headers.get("Content-Length") or 0)
            if length > limits.max_request_bytes:
                self.close_connection = True  # the unread body makes the connection unusable
                raise ServingError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"Request body of {length} bytes is over the limit of {limits.max_request_bytes}.",
                )
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError as error:
                raise invalid(f"The request body is not JSON: {error}") from None
            servable = model.servable(name, version)
            signature = servable.signature(body.get("signature_name") if isinstance(body, dict) else None)
            dtypes = {k: spec.dtype.as_numpy_dtype for k, spec in servable.input_specs[signature].items()}
            try:
                _, inputs, row_format = rest.parse_predict_request(body, dtypes)
            except ValueError as error:
                raise invalid(f"Signature {signature!r}: {error}.") from None
            return rest.predict_response(servable.predict(signature, inputs), row_format)

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

    return Handler


class ModelServer:
    """gRPC (and optional REST) front ends over one `VersionedModel`.

    Port 0 picks a free port; `grpc_port` and `rest_port` hold the bound ones after `start()`.
    """

    def __init__(
        self,
        base_path,
        model_name=None,
        host="127.0.0.1",
        port=8500,
        rest_api_port=None,
        limits=Limits(),
        poll_seconds=1.0,
        workers=8,
    ):
        self.model = VersionedModel(model_name or os.path.basename(os.path.normpath(base_path)), base_path, limits, poll_seconds)
        self.host, self.limits, self.workers = host, limits, workers
        self.grpc_port, self.rest_port = port, rest_api_port
        self._grpc = self._http = None
        self.health = health.HealthServicer()

    def _set_health(self, _servable=None):
        status = health_pb2.HealthCheckResponse.SERVING
        for service in ("", PREDICTION_SERVICE):
            self.health.set(service, status)

    def start(self):
        for service in ("", PREDICTION_SERVICE):
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.model.on_change = self._set_health
        self.model.start()
        self._grpc = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self.workers),
            options=[("grpc.max_receive_message_length", self.limits.max_request_bytes)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(self.model), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.model), self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{self.grpc_port}")
        if not self.grpc_port:
            raise OSError(f"Cannot bind the gRPC port on {self.host}.")
        self._grpc.start()
        if self.rest_port is not None:
            self._http = http.server.ThreadingHTTPServer((self.host, self.rest_port), _rest_handler(self.model, self.limits))
            self._http.daemon_threads = True
            self.rest_port = self._http.server_address[1]
            threading.Thread(target=self._http.serve_forever, name="rest", daemon=True).start()
        return self

    def wait(self):
        self._grpc.wait_for_termination()

    def stop(self, grace=1.0):
        if self._http:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc:
            self._grpc.stop(grace).wait()
        self.model.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

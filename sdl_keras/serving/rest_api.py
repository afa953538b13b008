"""TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) over the
server's models, as tensorflow_serving/model_servers/http_rest_api_handler.cc routes it:

    GET  /v1/models/{name}[/versions/{v} | /labels/{l}]            model status
    GET  /v1/models/{name}[/versions/{v} | /labels/{l}]/metadata   signatures
    POST /v1/models/{name}[/versions/{v} | /labels/{l}]:predict    row or columnar JSON
    GET  {prometheus path}                                          metrics (--monitoring_config_file)

Any other /v1/ path is "Malformed request" (400), as in TF Serving; errors are
`{"error": message}` with TF Serving's mapping of status codes to HTTP.
One addition: `GET /v1/models` lists every served model with its versions' status (TF
Serving answers it "Missing model name in request.").
"""

import json
import re
import time
import urllib.parse

import grpc

from sdl_keras.serving import monitoring, rest
from sdl_keras.serving.errors import ServingError, invalid
from sdl_keras.serving.http_server import Response, error_response, json_response
from sdl_keras.serving.serving_api import proto_json

# kPredictionApiGegex and kModelStatusApiRegex (tensorflow_serving/model_servers/http_rest_api_util.cc).
_PREDICT = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
                      re.IGNORECASE)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                     re.IGNORECASE)


class RestApi:
    """`handle(method, target, headers, body)` -> http_server.Response, for http_server.HttpServer.

    `api` (serving_api.ServingApi) answers status and metadata and runs predictions.
    """

    def __init__(self, api, metrics_path=None):
        self.api, self.metrics_path = api, metrics_path

    def handle(self, method, target, headers, body):
        path = urllib.parse.urlsplit(target).path
        if self.metrics_path and path == self.metrics_path:
            if method != "GET":
                return error_response(405, f"{self.metrics_path} answers GET only.")
            return Response(200, monitoring.prometheus_text().encode("utf-8"), "text/plain; version=0.0.4")
        if not path.lower().startswith("/v1/"):
            return error_response(404, f"No such endpoint: {method} {path} (TF Serving's REST API is under /v1/).")
        try:
            return json_response(200, self._route(method, path, body))
        except ServingError as error:
            return error_response(error.http_status, error.message)

    def _route(self, method, path, body):
        predict = _PREDICT.fullmatch(path) if method == "POST" else None
        status = _STATUS.fullmatch(path) if method == "GET" else None
        if predict:
            name, version, label, verb = predict.groups()
            if verb.lower() != "predict":
                raise invalid(f":{verb} needs a classification or regression signature; this model's signatures are "
                              "predict signatures: use :predict.")
            return self._predict(*_spec(name, version, label), body)
        if status:
            name, version, label, subresource = status.groups()
            if not name:
                return self.api.list_models()
            spec = _spec(name, version, label)
            if subresource:
                return self.api.metadata(*spec, as_json=True)
            return proto_json(self.api.status(*spec))
        raise invalid(f"Malformed request: {method} {path}")

    def _predict(self, name, version, label, body):
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            request = _parse_json(body)
            signature = request.get("signature_name") if isinstance(request, dict) else None
            if signature is not None and not isinstance(signature, str):
                raise invalid("'signature_name' key must be a string value.")
            with self.api.acquire(name, version, label) as servable:
                signature = servable.signature(signature)
                dtypes = {k: spec.dtype.as_numpy_dtype for k, spec in servable.input_specs[signature].items()}
                try:
                    _, inputs, row_format = rest.parse_predict_request(request, dtypes)
                except ValueError as error:
                    raise invalid(f"Signature {signature!r}: {error}.") from None
                return rest.predict_response(servable.predict(signature, inputs), row_format)
        except ServingError as error:
            code = error.code
            raise
        finally:
            self.api.record_request(name, "Predict", "REST", code, time.perf_counter() - start)


def _spec(name, version, label):
    return urllib.parse.unquote(name), int(version) if version else None, urllib.parse.unquote(label) if label else None


def _parse_json(body):
    try:
        return json.loads(body or b"null")
    except RecursionError:
        raise invalid("The request body is not valid JSON: it nests deeper than the JSON decoder allows "
                      "(about 1,000 levels).") from None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise invalid(f"The request body is not valid JSON: {error}.") from None

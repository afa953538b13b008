"""Clients of TF Serving (or `sdl_keras.serving.server`) over gRPC or REST: the library
side of `python -m sdl_keras.serving.client`.

gRPC uses the `tensorflow-serving-api` stubs (PredictionService.Predict and
GetModelMetadata, ModelService.GetModelStatus); REST sends TF Serving's JSON with
`{"b64": ...}` images. Prints a table, or JSON lines with --format=jsonl.
"""

import json
import urllib.error
import urllib.request

import numpy as np

MAX_MESSAGE_BYTES = 256 << 20


class ServingClientError(Exception):
    """A request the server refused: `code` is the status name (INVALID_ARGUMENT, ...)."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class GrpcClient:
    """TF Serving's gRPC API: `target` is HOST:PORT (8500 by TF Serving's convention)."""

    def __init__(self, target, timeout=30.0):
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._predictions = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingClientError(error.code().name, error.details()) from None

    @staticmethod
    def _spec(spec, model, version, signature=None):
        spec.name = model
        if version:
            spec.version.value = int(version)
        if signature is not None:
            spec.signature_name = signature

    def predict(self, model, inputs, signature="serving_default", version=None):
        """{output: numpy array} for {input: array-like}; bytes inputs travel as DT_STRING."""
        return self.predict_versioned(model, inputs, signature, version)[1]

    def predict_versioned(self, model, inputs, signature="serving_default", version=None):
        """(the version that answered, {output: numpy array})."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, model, version, signature)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        response = self._call(self._predictions.Predict, request)
        return response.model_spec.version.value, {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def signatures(self, model, version=None):
        """The model's SignatureDefMap as JSON (GetModelMetadata)."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._spec(request.model_spec, model, version)
        response = self._call(self._predictions.GetModelMetadata, request)
        defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(defs)
        return json_format.MessageToDict(defs, preserving_proto_field_name=True)["signature_def"]

    def status(self, model, version=None):
        """[(version, state)] of the model's versions (GetModelStatus)."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec, model, version)
        response = self._call(self._models.GetModelStatus, request)
        states = get_model_status_pb2.ModelVersionStatus.State
        return [(s.version, states.Name(s.state)) for s in response.model_version_status]

    def close(self):
        self._channel.close()


class RestClient:
    """TF Serving's REST API: `target` is HOST:PORT (8501 by TF Serving's convention)."""

    def __init__(self, target, timeout=30.0):
        self.base = target if "://" in target else f"http://{target}"
        self.timeout = timeout

    def _request(self, path, body=None):
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("error", "")
            except ValueError:
                message = error.reason
            code = _REST_CODES.get(error.code, f"HTTP_{error.code}")
            raise ServingClientError(code, message) from None
        except urllib.error.URLError as error:
            raise ServingClientError("UNAVAILABLE", f"{self.base}: {error.reason}") from None

    @staticmethod
    def _path(model, version):
        return f"/v1/models/{model}" + (f"/versions/{int(version)}" if version else "")

    def predict(self, model, inputs, signature="serving_default", version=None):
        from sdl_keras.serving import rest

        body = self._request(self._path(model, version) + ":predict", rest.predict_request(inputs, signature))
        return rest.outputs_from_response(body, single_output=_SINGLE_OUTPUTS.get(signature, "output"))

    def signatures(self, model, version=None):
        body = self._request(self._path(model, version) + "/metadata")
        return body["metadata"]["signature_def"]["signature_def"]

    def status(self, model, version=None):
        body = self._request(self._path(model, version))
        return [(int(s["version"]), s["state"]) for s in body["model_version_status"]]

    def close(self):
        pass


# TF Serving's HTTP statuses back to status names (ToHTTPStatusCode), and the body limit's 413.
_REST_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED", 429: "RESOURCE_EXHAUSTED",
               500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
# TF Serving's REST API answers a one-output signature with the bare value.
_SINGLE_OUTPUTS = {"matrix": "matrix", "score_tags": "scores"}
_OUTPUT_ORDER = ("tags", "scores", "rows", "unseen")


def _row(array):
    """One image's output as JSON-ready lists (strings decoded)."""
    if array.dtype == object:
        return [value.decode("utf-8", errors="replace") for value in array]
    return array.tolist()


def tag_images(client, model, images, signature="serving_default", version=None, tags=None, tag_vectors=None, top_k=None):
    """One result dict per encoded image.

    serving_default: tags, scores, rows, unseen (the export's top K). score_tags: the
    given `tags` scored with `tag_vectors` (T, d), best first, `top_k` of them.
    matrix: the (M, d) matrix. Other signatures: their outputs as lists.
    """
    inputs = {"images": np.array(list(images), dtype=object)}
    if signature == "score_tags":
        if tags is None or tag_vectors is None:
            raise ValueError("score_tags needs tags and their vectors (--tags and --tag_vectors).")
        inputs["tag_vectors"] = np.asarray(tag_vectors, dtype=np.float32)
    outputs = client.predict(model, inputs, signature, version)
    results = []
    for i in range(len(images)):
        if signature == "score_tags":
            scores = outputs["scores"][i]
            order = np.argsort(-scores, kind="stable")[:top_k]
            results.append({"tags": [tags[j] for j in order], "scores": scores[order].tolist()})
            if "probabilities" in outputs:  # a calibrated export: through its unseen-tag map
                results[-1]["probabilities"] = outputs["probabilities"][i][order].tolist()
        else:
            # serving_default's outputs in their documented order, then any others.
            keys = [k for k in _OUTPUT_ORDER if k in outputs] + sorted(set(outputs) - set(_OUTPUT_ORDER))
            results.append({k: _row(outputs[k][i]) for k in keys})
    return results


def format_table(names, results):
    """A readable table: one line per tag (or per matrix row norm)."""
    lines = []
    width = max([len("image")] + [len(n) for n in names])
    for name, result in zip(names, results):
        if "tags" in result:
            # A calibrated export also gives each tag's probability (and serving_default its mask).
            probabilities = result.get("probabilities")
            if not lines:
                lines.append(f"{'image':<{width}}  {'tag':<20} {'score':>9} {'row':>4}  unseen"
                             + ("  probability" if probabilities else ""))
            rows, unseen = result.get("rows"), result.get("unseen")  # score_tags has neither
            for j, tag in enumerate(result["tags"]):
                label = name if j == 0 else ""
                row = rows[j] if rows else ""
                mark = "*" if unseen and unseen[j] else ""
                line = f"{label:<{width}}  {tag:<20} {result['scores'][j]:>9.4f} {row!s:>4}  {mark:<6}"
                if probabilities:
                    above = result.get("above_threshold")
                    line += f"  {probabilities[j]:.3f}" + (" (above threshold)" if above and above[j] else "")
                lines.append(line.rstrip())
        else:
            for key, value in result.items():
                array = np.asarray(value)
                detail = f"row norms {np.round(np.linalg.norm(array, axis=-1), 4).tolist()}" if array.ndim == 2 else value
                lines.append(f"{name:<{width}}  {key} {list(array.shape)} {detail}")
    return "\n".join(lines)


def connect(server=None, rest=None, timeout=30.0):
    """A GrpcClient for `server` (HOST:PORT), or a RestClient for `rest` when given."""
    return RestClient(rest, timeout) if rest else GrpcClient(server, timeout)


def tag_image_files(client, model, paths, batch_size=8, signature="serving_default", version=None, tags=None,
                    tag_vectors=None, top_k=None):
    """Yields (paths, results, error) per request of up to `batch_size` image files: the
    results of `tag_images`, or the ServingClientError that refused the batch."""
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        images = []
        for path in batch:
            with open(path, "rb") as f:
                images.append(f.read())
        try:
            yield batch, tag_images(client, model, images, signature, version, tags, tag_vectors, top_k), None
        except ServingClientError as error:
            yield batch, None, error

"""TF Serving's API calls, protocol-free: model status, metadata and the servable a
prediction runs on, for the gRPC services (grpc_services) and the REST API (rest_api) alike.
Answers are TF Serving's protos (GetModelStatusResponse, GetModelMetadataResponse).
"""

from sdl_keras.serving import monitoring
from sdl_keras.serving.errors import ServingError, invalid


def proto_json(message):
    """A proto as TF Serving's REST answers print it (JsonPrintOptions always_print_primitive_fields,
    preserve_proto_field_names)."""
    from google.protobuf import json_format

    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


class ServingApi:
    """Over a `manager.ModelManager`."""

    def __init__(self, manager):
        self.manager = manager

    def record_request(self, name, api, entrypoint, code, seconds):
        """Counts a request in TF Serving's metrics. Names the server does not serve count as
        "<unserved>": a label per name a client makes up would grow the metrics without bound."""
        served = {m.name for m in self.manager.models()}
        monitoring.record_request(name if name in served else "<unserved>", api, entrypoint, code, seconds)

    def acquire(self, name, version=None, label=None):
        """A context manager holding the servable a request names (latest, version or label)."""
        return self.manager.model(name).acquire(version, label)

    def status(self, name, version=None, label=None):
        """GetModelStatusResponse: every known version, newest first (ServableStateMonitor's order)."""
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        states = get_model_status_pb2.ModelVersionStatus.State
        for number, state, error in self.manager.model(name).status(version, label):
            row = response.model_version_status.add(version=number, state=states.Value(state))
            row.status.SetInParent()  # TF Serving always sends the status: error_code OK when healthy
            if error is not None:
                row.status.error_code = error.code.value[0]
                row.status.error_message = error.message
        return response

    def metadata(self, name, version=None, label=None, fields=("signature_def",), as_json=False):
        """GetModelMetadataResponse (or, `as_json`, TF Serving's REST metadata answer)."""
        from google.protobuf import any_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        fields = list(fields)
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        unsupported = [f for f in fields if f != "signature_def"]
        if unsupported:
            raise invalid(f"Metadata field {unsupported[0]} is not supported")
        with self.acquire(name, version, label) as servable:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            if as_json:
                return {"model_spec": proto_json(response.model_spec),
                        "metadata": {"signature_def": proto_json(servable.signature_defs)}}
            packed = any_pb2.Any()
            packed.Pack(servable.signature_defs)
            response.metadata["signature_def"].CopyFrom(packed)
            return response

    def list_models(self):
        """Every served model with its versions' status (an addition: TF Serving has no listing)."""
        models = []
        for model in sorted(self.manager.models(), key=lambda m: m.name):
            try:
                status = proto_json(self.status(model.name))["model_version_status"]
            except ServingError:  # no version found yet
                status = []
            models.append({"name": model.name, "model_version_status": status})
        return {"models": models}

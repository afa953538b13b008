"""TF Serving's gRPC services from the tensorflow-serving-api protos: `PredictionService`
(Predict, GetModelMetadata) and `ModelService` (GetModelStatus), with ModelSpec's version
or version_label, answering through `serving_api.ServingApi`."""

import logging
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc

from sdl_keras.serving.errors import ServingError, invalid

logger = logging.getLogger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


def model_spec_args(spec):
    """(name, version or None, label or None) of a ModelSpec (its version_choice oneof)."""
    choice = spec.WhichOneof("version_choice")
    return spec.name, spec.version.value if choice == "version" else None, spec.version_label or None


def as_numpy_inputs(tensors):
    """{name: numpy array} from {name: TensorProto}, INVALID_ARGUMENT for malformed ones."""
    arrays = {}
    for key, proto in tensors.items():
        try:
            arrays[key] = tf.make_ndarray(proto)
        except Exception as error:
            raise invalid(f"Input {key!r} is not a valid TensorProto: {error}") from None
    return arrays


def _answer(context, call, *args):
    """Runs a call, turning a ServingError into its status and any bug into INTERNAL (logged once)."""
    try:
        return call(*args)
    except ServingError as error:
        context.abort(error.code, error.message)
    except Exception as error:
        logger.exception("gRPC call failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, api):
        self.api = api

    def _predict(self, request):
        name, version, label = model_spec_args(request.model_spec)
        start, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            with self.api.acquire(name, version, label) as servable:
                signature = servable.signature(request.model_spec.signature_name)
                outputs = servable.predict(signature, as_numpy_inputs(request.inputs), list(request.output_filter))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.model_spec.signature_name = signature
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response
        except ServingError as error:
            code = error.code
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            self.api.record_request(name, "Predict", "GRPC", code, time.perf_counter() - start)

    def Predict(self, request, context):
        return _answer(context, self._predict, request)

    def GetModelMetadata(self, request, context):
        return _answer(context, lambda: self.api.metadata(*model_spec_args(request.model_spec),
                                                          fields=request.metadata_field))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, api):
        self.api = api

    def GetModelStatus(self, request, context):
        return _answer(context, lambda: self.api.status(*model_spec_args(request.model_spec)))

"""One loaded version of an exported model, as a server holds it: its signatures, the
checks every request goes through before it reaches the graph, optional server-side
batching, and TF Serving's warmup replay.

Protocol-free: the gRPC and REST front ends turn requests into numpy arrays, and
`ServingError`s into their status codes.
"""

import dataclasses
import logging
import os
import time

import grpc
import numpy as np
import tensorflow as tf

from pipelines.decode import check_image, error_text, find_undecodable
from sdl_keras.saved_model import WARMUP_FILE, read_saved_model
from sdl_keras.serving import monitoring
from sdl_keras.serving.batching import IMAGES, BatchScheduler
from sdl_keras.serving.errors import ServingError, grpc_code, invalid

logger = logging.getLogger(__name__)

# TF Serving reads at most this many warmup records (saved_model_warmup_util.cc).
MAX_WARMUP_RECORDS = 1000


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may hold. gRPC itself refuses messages over `max_request_bytes`
    (RESOURCE_EXHAUSTED), the REST layer bodies over it (413); the rest are checked per
    request, from each image's header before anything is decoded (INVALID_ARGUMENT)."""

    max_request_bytes: int = 64 << 20
    max_image_bytes: int = 16 << 20
    max_image_side: int = 8192
    # A decoded image costs 3 bytes a pixel (and 4x that as the float32 resize input): 25
    # megapixels, a 24 MP camera's photo, bound one image to about 375 MB while it is resized.
    max_image_pixels: int = 25_000_000
    max_batch_size: int = 64


def _spec_text(spec):
    return f"{spec.dtype.name} {spec.shape.as_list()}"


def read_signature_defs(saved_model_dir):
    """The SavedModel's SignatureDefMap (the proto TF Serving's GetModelMetadata returns)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    defs = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in read_saved_model(saved_model_dir).meta_graphs[0].signature_def.items():
        defs.signature_def[name].CopyFrom(signature)
    return defs


def _check_finite(key, array):
    finite = np.isfinite(array)
    if not finite.all():
        where = np.argwhere(~finite)
        first = tuple(int(i) for i in where[0])
        raise invalid(f"Input {key!r} holds {len(where)} non-finite value(s) (NaN or infinity), the first "
                      f"{array[first]} at {list(first)}; every value must be finite.")


class Servable:
    """One loaded version: `predict(signature, {input: array})` -> {output: array}.

    With `batching` (server_config.BatchingParameters), requests are batched per signature
    (sdl_keras.serving.batching) after they pass their checks.
    """

    def __init__(self, name, version, path, limits=Limits(), batching=None):
        self.name, self.version, self.path, self.limits = name, version, path, limits
        self._loaded = tf.saved_model.load(path)
        self.signatures = dict(self._loaded.signatures)
        self.signature_defs = read_signature_defs(path)
        self.input_specs = {n: fn.structured_input_signature[1] for n, fn in self.signatures.items()}
        self.batching = batching
        self._batcher = None
        if batching is not None:
            self._batcher = BatchScheduler(batching, self.run, name=f"batch-{name}-{version}")

    def signature(self, name):
        name = name or "serving_default"
        if name not in self.signatures:
            raise invalid(
                f"Serving signature name: {name!r} not found in model {self.name!r} version {self.version}; "
                f"it has {sorted(self.signatures)}."
            )
        return name

    def check_inputs(self, signature, inputs):
        """Raises INVALID_ARGUMENT naming the input that does not fit the signature or a limit."""
        specs = self.input_specs[signature]
        expected = ", ".join(f"{k} ({_spec_text(s)})" for k, s in sorted(specs.items()))
        unknown = sorted(set(inputs) - set(specs))
        missing = sorted(set(specs) - set(inputs))
        if unknown or missing:
            problem = f"unknown input(s) {unknown}" if unknown else f"missing input(s) {missing}"
            raise invalid(f"Signature {signature!r}: {problem}; it takes {expected}.")
        for key, spec in specs.items():
            array = inputs[key]
            if spec.dtype == tf.string:
                if array.dtype.kind not in "OS" or (array.dtype.kind == "O" and not all(
                        isinstance(v, bytes) for v in array.flat)):
                    raise invalid(f"Input {key!r} must be DT_STRING (encoded image bytes), got {array.dtype}.")
            elif array.dtype != spec.dtype.as_numpy_dtype:
                raise invalid(f"Input {key!r} must be {spec.dtype.name}, got {array.dtype}.")
            if not spec.shape.is_compatible_with(array.shape):
                raise invalid(f"Input {key!r} must have shape {spec.shape.as_list()}, got {list(array.shape)}.")
            if array.dtype.kind == "f":
                _check_finite(key, array)
        images = inputs.get(IMAGES)
        if images is None:
            return
        if images.size == 0:
            raise invalid("Input 'images' is an empty batch.")
        if images.size > self.limits.max_batch_size:
            raise invalid(f"Input 'images' holds {images.size} images, over the limit of {self.limits.max_batch_size}.")
        for index, data in enumerate(images):
            try:
                check_image(data, self.limits.max_image_bytes, self.limits.max_image_side, self.limits.max_image_pixels)
            except ValueError as error:
                raise invalid(f"images[{index}] {error}.") from None

    def predict(self, signature, inputs, output_filter=()):
        """Checks and runs a request (batched with others when batching is on); returns
        {output name: numpy array}."""
        signature = self.signature(signature)
        self.check_inputs(signature, inputs)
        outputs = self.signatures[signature].structured_outputs
        unknown = sorted(set(output_filter) - set(outputs))
        if unknown:
            raise invalid(f"output_filter names {unknown}, not outputs of signature {signature!r} "
                          f"(it has {sorted(outputs)}).")
        if self._batcher is not None and IMAGES in inputs:
            results = self._batcher.submit(signature, inputs)
        else:
            results = self.run(signature, inputs)
        return {k: v for k, v in results.items() if not output_filter or k in output_filter}

    def run(self, signature, inputs):
        """Runs a signature on checked numpy inputs, naming the image that fails to decode."""
        try:
            outputs = self.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.InvalidArgumentError as error:
            bad = find_undecodable(inputs[IMAGES]) if IMAGES in inputs else None
            if bad is not None:
                raise invalid(f"images[{bad[0]}] cannot be decoded: {bad[1]}") from None
            raise invalid(error_text(error)) from None
        except tf.errors.OpError as error:
            raise ServingError(grpc_code(error.error_code), error_text(error)) from None
        return {k: v.numpy() for k, v in outputs.items()}

    def warm_up(self):
        """Replays the version's TF Serving warmup requests (assets.extra/tf_serving_warmup_requests),
        as TF Serving does before it reports the version AVAILABLE; a failing one fails the load.
        Returns the number replayed."""
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        from tensorflow_serving.apis import prediction_log_pb2

        start, count, status = time.perf_counter(), 0, grpc.StatusCode.INTERNAL
        try:
            for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS + 1).as_numpy_iterator():
                count += 1
                if count > MAX_WARMUP_RECORDS:
                    raise invalid(f"{path} holds more than {MAX_WARMUP_RECORDS} warmup records.")
                log = prediction_log_pb2.PredictionLog.FromString(record)
                if log.WhichOneof("log_type") != "predict_log":
                    raise invalid(f"{path} record {count} is a {log.WhichOneof('log_type')}; this server replays "
                                  "predict_log records.")
                request = log.predict_log.request
                inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                # As TF Serving: straight into the graph, unbatched and past the request limits (the file is
                # the operator's), so each batch size the file holds runs once.
                self.run(self.signature(request.model_spec.signature_name), inputs)
            status = grpc.StatusCode.OK
        except ServingError as error:
            status = error.code
            raise ServingError(error.code, f"Warmup request {count} of {path} failed: {error.message}") from None
        finally:
            monitoring.WARMUP_LATENCY.add(self.path, status.name, value=(time.perf_counter() - start) * 1e6)
        return count

    def close(self):
        """Stops the batch threads and drops the graph (its memory goes with the last reference)."""
        if self._batcher is not None:
            self._batcher.stop()
        self.signatures, self._loaded = {}, None

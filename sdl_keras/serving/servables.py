"""The versions of one exported model, as a server holds them: TF Serving's latest-version
policy over `<base_path>/<integer version>/` SavedModels, with request checking.

Protocol-free: the gRPC and REST front ends of `sdl_keras.serving.server` turn requests
into numpy arrays and `ServingError`s into their status codes.
"""

import dataclasses
import logging
import os
import threading

import grpc
import tensorflow as tf

from sdl_keras.saved_model import WARMUP_FILE, list_versions, read_saved_model
from pipelines.decode import check_image, error_text, find_undecodable

logger = logging.getLogger(__name__)

IMAGES = "images"


class ServingError(Exception):
    """A request the server refuses: `code` is the grpc.StatusCode to answer with."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message):
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message):
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may hold. gRPC itself refuses messages over `max_request_bytes`
    (RESOURCE_EXHAUSTED); the rest are checked per request (INVALID_ARGUMENT)."""

    max_request_bytes: int = 64 << 20
    max_image_bytes: int = 16 << 20
    max_image_side: int = 8192
    max_batch_size: int = 64


def _spec_text(spec):
    return f"{spec.dtype.name} {spec.shape.as_list()}"


def read_signature_defs(saved_model_dir):
    """The SavedModel's SignatureDef map (the proto TF Serving's GetModelMetadata returns)."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    defs = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in read_saved_model(saved_model_dir).meta_graphs[0].signature_def.items():
        defs.signature_def[name].CopyFrom(signature)
    return defs


class Servable:
    """One loaded version of an exported model."""

    def __init__(self, name, version, path, limits):
        self.name, self.version, self.path, self.limits = name, version, path, limits
        self._loaded = tf.saved_model.load(path)
        self.signatures = dict(self._loaded.signatures)
        self.signature_defs = read_signature_defs(path)
        self.input_specs = {n: fn.structured_input_signature[1] for n, fn in self.signatures.items()}

    def signature(self, name):
        name = name or "serving_default"
        if name not in self.signatures:
            raise invalid(
                f"Serving signature name: {name!r} not found in model {self.name!r} version {self.version}; "
                f"it has {sorted(self.signatures)}."
            )
        return name

    def check_inputs(self, signature, inputs):
        """Raises INVALID_ARGUMENT naming the input that does not fit the signature."""
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
                if array.dtype.kind not in "OS":
                    raise invalid(f"Input {key!r} must be DT_STRING (encoded image bytes), got {array.dtype}.")
            elif array.dtype != spec.dtype.as_numpy_dtype:
                raise invalid(f"Input {key!r} must be {spec.dtype.name}, got {array.dtype}.")
            if not spec.shape.is_compatible_with(array.shape):
                raise invalid(f"Input {key!r} must have shape {spec.shape.as_list()}, got {list(array.shape)}.")
        images = inputs.get(IMAGES)
        if images is None:
            return
        if images.size == 0:
            raise invalid("Input 'images' is an empty batch.")
        if images.size > self.limits.max_batch_size:
            raise invalid(f"Input 'images' holds {images.size} images, over the limit of {self.limits.max_batch_size}.")
        for index, data in enumerate(images):
            try:
                check_image(data, self.limits.max_image_bytes, self.limits.max_image_side)
            except ValueError as error:
                raise invalid(f"images[{index}] {error}.") from None

    def predict(self, signature, inputs, output_filter=()):
        """Runs a signature on numpy inputs; returns {output name: numpy array}."""
        signature = self.signature(signature)
        self.check_inputs(signature, inputs)
        function = self.signatures[signature]
        unknown = sorted(set(output_filter) - set(function.structured_outputs))
        if unknown:
            raise invalid(
                f"output_filter names {unknown}, not outputs of signature {signature!r} "
                f"(it has {sorted(function.structured_outputs)})."
            )
        try:
            outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
        except tf.errors.InvalidArgumentError as error:
            bad = find_undecodable(inputs[IMAGES]) if IMAGES in inputs else None
            if bad is not None:
                raise invalid(f"images[{bad[0]}] cannot be decoded: {bad[1]}") from None
            raise invalid(error_text(error)) from None
        return {k: v.numpy() for k, v in outputs.items() if not output_filter or k in output_filter}

    def warm_up(self):
        """Replays the export's TF Serving warmup requests, so the version's first real
        request does not pay for graph initialization."""
        path = os.path.join(self.path, WARMUP_FILE)
        if not os.path.exists(path):
            return 0
        from tensorflow_serving.apis import prediction_log_pb2

        count = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            log = prediction_log_pb2.PredictionLog.FromString(record)
            request = log.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            self.predict(request.model_spec.signature_name, inputs)
            count += 1
        return count


class VersionedModel:
    """Serves the newest version under `base_path`, loading a new one without a restart.

    A background thread polls the folder every `poll_seconds` (TF Serving's
    --file_system_poll_wait_seconds); a newer version is loaded and warmed up before it
    replaces the one in service, so requests never wait for a load. A version that fails
    to load is reported by `status()` and skipped until its folder changes.
    """

    def __init__(self, name, base_path, limits=Limits(), poll_seconds=1.0):
        self.name, self.base_path, self.limits = name, base_path, limits
        self.poll_seconds = float(poll_seconds)
        self._servable = None
        self._failed = {}  # version -> (saved_model.pb mtime, error message)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.on_change = None  # called with the Servable after each swap

    def _candidates(self):
        versions = []
        for version in list_versions(self.base_path):
            pb = os.path.join(self.base_path, str(version), "saved_model.pb")
            if os.path.exists(pb):
                versions.append((version, os.path.getmtime(pb)))
        return versions

    def refresh(self):
        """Loads the newest loadable version if it is not the one in service."""
        current = self._servable.version if self._servable else None
        for version, mtime in reversed(self._candidates()):
            if version == current:
                return
            if self._failed.get(version, (None,))[0] == mtime:
                continue
            try:
                servable = Servable(self.name, version, os.path.join(self.base_path, str(version)), self.limits)
                servable.warm_up()
            except Exception as error:  # any load failure leaves the current version serving
                logger.error("Model %s version %d failed to load: %s", self.name, version, error)
                self._failed[version] = (mtime, f"{type(error).__name__}: {error}")
                continue
            with self._lock:
                self._servable = servable
            self._failed.pop(version, None)
            logger.info("Serving model %s version %d from %s", self.name, version, servable.path)
            if self.on_change:
                self.on_change(servable)
            return

    def start(self):
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name=f"poll-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _poll(self):
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # a polling error must not end the thread
                logger.exception("Polling %s failed", self.base_path)

    def servable(self, name, version=None):
        """The servable for a request, or NOT_FOUND naming what is available."""
        if name != self.name:
            raise not_found(f"Servable not found for request: model {name!r} is not served (this server serves {self.name!r}).")
        with self._lock:
            servable = self._servable
        if servable is None:
            raise not_found(f"Servable not found for request: no version of model {self.name!r} is loaded (none under {self.base_path}).")
        if version is not None and version != servable.version:
            raise not_found(
                f"Servable not found for request: model {self.name!r} version {version} is not available; "
                f"version {servable.version} is served."
            )
        return servable

    def status(self, version=None):
        """[(version, state name, error message)] in TF Serving's ModelVersionStatus terms."""
        with self._lock:
            servable = self._servable
        rows = [(v, "END", message) for v, (_, message) in self._failed.items()]
        if servable is not None:
            rows.append((servable.version, "AVAILABLE", ""))
        if version is not None:
            rows = [r for r in rows if r[0] == version]
            if not rows:
                raise not_found(f"Model {self.name!r} has no version {version} (known: {sorted(v for v, *_ in self.status())}).")
        return sorted(rows)


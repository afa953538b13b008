"""Exports a trained SDL model and its tag vocabulary as a TF Serving SavedModel (the
library side of `python -m sdl_keras.export --run_dir runs/demo --name demo`), which
writes `saved_models/<name>/<version>/` (the next free integer version unless
--version is given) with three signatures, all taking `images`, a batch of encoded
JPEG/PNG/GIF/BMP bytes, decoded and resized inside the graph:

  serving_default  -> tags (string [B, K]), scores (float [B, K]), rows (int32 [B, K],
                      the dominant principal direction of each tag), unseen (bool [B, K])
  matrix           -> matrix (float [B, M, d]), for indexing and retrieval
  score_tags       (+ tag_vectors float [T, d]) -> scores (float [B, T]): tags that did
                      not exist at export time, scored at serving time

and, beside the versions, the TF Serving deployment files `models.config`,
`batching_parameters.txt` and `monitoring.config` (saved_models/README.md shows the serving
command). Each version holds TF Serving's warmup file: every signature at every batch size
the batching parameters allow.

A calibrated run (RUN_DIR/calibration.json, sdl_keras.calibration) adds, as graph ops,
`probabilities` (float [B, K]) and `above_threshold` (bool [B, K], the run's tuned
thresholds or one given at export) to serving_default and `probabilities` (float [B, T],
through the unseen-tag map) to score_tags. `assets.extra/calibration.json` says whether
the export is calibrated and, if it is, holds the calibration and the mask's threshold.
"""

import json
import os
import shutil

import numpy as np

from pipelines.decode import decode_images
from sdl_keras.calibration import RANK_TOLERANCE
from sdl_keras.run_dir import RunDirectory
from sdl_keras.scoring import tag_scores

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
CALIBRATION_FILE = os.path.join("assets.extra", "calibration.json")

# TF Serving's --enable_batching: up to 32 images a batch, waiting at most 2 ms for them. A
# batch is padded to the next allowed size, so the warmup (run at each) covers every shape
# the server runs; powers of two waste less than half a batch on padding.
BATCHING_PARAMETERS = {"max_batch_size": 32, "batch_timeout_micros": 2000, "max_enqueued_batches": 100, "num_batch_threads": 4}
ALLOWED_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
# TF Serving's --monitoring_config_file: Prometheus metrics on the REST port, at TF Serving's path.
MONITORING_CONFIG = 'prometheus_config {\n  enable: true\n  path: "/monitoring/prometheus/metrics"\n}\n'
SIGNATURES = ("serving_default", "matrix", "score_tags")

# Ops that call back into the Python interpreter: a SavedModel holding one cannot
# be loaded by TF Serving (or anything without the exporting process).
PYTHON_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})


def _tf():
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "Exporting a SavedModel needs the TensorFlow backend; "
            f"KERAS_BACKEND is {keras.backend.backend()!r}."
        )
    return tf


def check_model(model, vocabulary, source="the model"):
    """(image_size, num_rows, embed_dim) of an SDL model, checked against the vocabulary."""
    in_shape, out_shape = tuple(model.input_shape), tuple(model.output_shape)
    if len(in_shape) != 4 or in_shape[1] != in_shape[2] or in_shape[1] is None or in_shape[3] != 3:
        raise ValueError(f"{source} takes inputs of shape {in_shape}; expected (batch, S, S, 3) images.")
    if len(out_shape) != 3 or None in out_shape[1:]:
        raise ValueError(f"{source} outputs shape {out_shape}; expected the matrix A (batch, M, d).")
    if out_shape[2] != vocabulary.dim:
        raise ValueError(
            f"{source} outputs {out_shape[2]}-dimensional principal directions but the vocabulary's "
            f"tag vectors have {vocabulary.dim} dimensions."
        )
    return in_shape[1], out_shape[1], out_shape[2]


class CalibrationOps:
    """A Calibration (sdl_keras.calibration) as TensorFlow ops: the same functions as its
    NumPy `probabilities` and `unseen_probabilities`, computed in float64 from float32
    scores and returned as float32.

    Shape contract: `probabilities(scores (B, C))` -> (B, C);
    `unseen_probabilities(scores (B, T), vocabulary_scores (B, C))` -> (B, T).
    """

    def __init__(self, calibration):
        tf = _tf()
        self.calibration = calibration
        is_unseen = np.zeros(len(calibration.tags), dtype=bool)
        is_unseen[calibration.unseen] = True
        self._is_unseen = tf.constant(is_unseen)
        self._maps = {name: self._constants(getattr(calibration, name)) for name in ("tag_map", "unseen_map")}

    @staticmethod
    def _constants(score_map):
        tf = _tf()
        names = ("slope", "bias") if score_map.kind == "logistic" else ("start", "step", "values")
        return score_map.kind, {n: tf.constant(getattr(score_map, n), tf.float64) for n in names}

    def _apply(self, name, x):
        tf = _tf()
        kind, c = self._maps[name]
        if kind == "logistic":
            return tf.sigmoid(c["slope"] * x + c["bias"])
        points = c["values"].shape[1]
        position = tf.clip_by_value((x - c["start"]) / c["step"], 0.0, points - 1.0)
        lower = tf.minimum(tf.floor(position), points - 2.0)
        fraction = position - lower
        rows = c["values"].shape[0]
        row = tf.zeros_like(lower, tf.int32) if rows == 1 else tf.broadcast_to(tf.range(rows), tf.shape(x))
        flat = tf.reshape(c["values"], [-1])
        index = row * points + tf.cast(lower, tf.int32)
        low, high = tf.gather(flat, index), tf.gather(flat, index + 1)
        return low + fraction * (high - low)

    def unseen_probabilities(self, scores, vocabulary_scores):
        tf = _tf()
        if self.calibration.unseen_pooling == "score":
            return tf.cast(self._apply("unseen_map", tf.cast(scores, tf.float64)), tf.float32)
        # Rank among the vocabulary: 1 + the vocabulary tags scoring higher (calibration.score_ranks).
        ordered = tf.sort(vocabulary_scores, axis=1)
        limits = scores + RANK_TOLERANCE * (1.0 + tf.abs(scores))
        at_or_below = tf.searchsorted(ordered, limits, side="right")
        rank = 1 + tf.shape(ordered, out_type=tf.int32)[1] - at_or_below
        return tf.cast(self._apply("unseen_map", -tf.math.log(tf.cast(rank, tf.float64))), tf.float32)

    def probabilities(self, scores):
        tf = _tf()
        seen = tf.cast(self._apply("tag_map", tf.cast(scores, tf.float64)), tf.float32)
        if not self.calibration.unseen:
            return seen
        return tf.where(self._is_unseen, self.unseen_probabilities(scores, scores), seen)


def build_export_archive(model, vocabulary, top_k=10, aggregation="max", crop="none", decode_mode="fast",
                         calibration=None, threshold=None):
    """A `keras.export.ExportArchive` holding the three SDL signatures (module docstring).

    `aggregation`, `crop` and `decode_mode` must be the run's (its config.json): tags are
    scored and images decoded as in training and evaluation. With a `calibration` (fitted for the
    vocabulary's tags), serving_default and score_tags also return probabilities, and
    serving_default the mask of `threshold` ("tuned", a probability, or None: the
    calibration's default, `Calibration.threshold_vector`).
    """
    import keras

    tf = _tf()
    image_size, _, embed_dim = check_model(model, vocabulary)
    if not 1 <= int(top_k) <= len(vocabulary):
        raise ValueError(f"top_k must be in [1, {len(vocabulary)}] (the vocabulary's size), got {top_k}.")
    top_k = int(top_k)
    tag_names = tf.constant(vocabulary.tags, dtype=tf.string)
    vocabulary_vectors = tf.constant(vocabulary.vectors, dtype=tf.float32)
    unseen = np.zeros(len(vocabulary), dtype=bool)
    unseen[list(vocabulary.unseen)] = True
    unseen = tf.constant(unseen)

    images_spec = tf.TensorSpec([None], tf.string, name="images")
    if calibration is not None:
        calibration.check_tags(vocabulary.tags)
        calibrated = CalibrationOps(calibration)
        thresholds = tf.constant(calibration.threshold_vector(threshold), tf.float64)

    def matrix_of(images):
        return model(decode_images(images, image_size, crop, decode_mode), training=False)

    def serving_default(images):
        scores, rows = tag_scores(matrix_of(images), vocabulary_vectors, aggregation)
        top_scores, top = tf.math.top_k(scores, k=top_k)
        outputs = {
            "tags": tf.gather(tag_names, top),
            "scores": top_scores,
            "rows": tf.gather(rows, top, batch_dims=1),
            "unseen": tf.gather(unseen, top),
        }
        if calibration is not None:
            probabilities = tf.gather(calibrated.probabilities(scores), top, batch_dims=1)
            outputs["probabilities"] = probabilities
            outputs["above_threshold"] = tf.cast(probabilities, tf.float64) >= tf.gather(thresholds, top)
        return outputs

    def matrix(images):
        return {"matrix": matrix_of(images)}

    def score_tags(images, tag_vectors):
        # Served tags are scored like the vocabulary's, whose vectors are l2-normalized
        # (DESIGN.md conventions); raw word vectors would otherwise score on another scale.
        matrices = matrix_of(images)
        scores, _ = tag_scores(matrices, tf.math.l2_normalize(tag_vectors, axis=-1), aggregation)
        if calibration is None:
            return {"scores": scores}
        vocabulary_scores = None
        if calibration.unseen_pooling == "rank":
            vocabulary_scores, _ = tag_scores(matrices, vocabulary_vectors, aggregation)
        return {"scores": scores, "probabilities": calibrated.unseen_probabilities(scores, vocabulary_scores)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_default, input_signature=[images_spec])
    archive.add_endpoint("matrix", matrix, input_signature=[images_spec])
    archive.add_endpoint(
        "score_tags",
        score_tags,
        input_signature=[images_spec, tf.TensorSpec([None, embed_dim], tf.float32, name="tag_vectors")],
    )
    return archive


def resolve_version_dir(path):
    """`path` itself when it is a SavedModel, else its newest integer version folder."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = [v for v in list_versions(path) if os.path.exists(os.path.join(path, str(v), "saved_model.pb"))]
    if not versions:
        raise FileNotFoundError(f"{path} is neither a SavedModel nor a folder of version folders holding one.")
    return os.path.join(path, str(versions[-1]))


def list_versions(base_path):
    """The integer version directories under a model's base path, ascending."""
    if not os.path.isdir(base_path):
        return []
    return sorted(int(d) for d in os.listdir(base_path) if d.isdigit() and os.path.isdir(os.path.join(base_path, d)))


def next_version(base_path):
    versions = list_versions(base_path)
    return versions[-1] + 1 if versions else 1


def write_warmup_requests(saved_model_dir, model_name, image_size, embed_dim, batch_sizes=ALLOWED_BATCH_SIZES):
    """TF Serving replays `assets.extra/tf_serving_warmup_requests` before it reports a version
    AVAILABLE, so no user request pays for graph initialization: one request per signature
    and batch size (score_tags with 8 tag vectors)."""
    tf = _tf()
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    image = tf.io.encode_jpeg(tf.fill([image_size, image_size, 3], tf.constant(128, tf.uint8))).numpy()
    tag_vectors = np.eye(8, embed_dim, dtype=np.float32)
    path = os.path.join(saved_model_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature in SIGNATURES:
            for size in batch_sizes:
                request = predict_pb2.PredictRequest()
                request.model_spec.name = model_name
                request.model_spec.signature_name = signature
                request.inputs["images"].CopyFrom(tf.make_tensor_proto([image] * size, dtype=tf.string))
                if signature == "score_tags":
                    request.inputs["tag_vectors"].CopyFrom(tf.make_tensor_proto(tag_vectors))
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())


def write_calibration_file(saved_model_dir, calibration=None, threshold=None, reason=None):
    """`assets.extra/calibration.json`: {"calibrated": false, "reason"} for an uncalibrated
    export; else {"calibrated": true, "above_threshold": the mask's threshold ("tuned" or a
    probability), "calibration": the Calibration's dict}."""
    if calibration is None:
        content = {"calibrated": False, "reason": reason or "the run has no calibration.json"}
    else:
        if threshold is None:
            threshold = "tuned" if calibration.probability_threshold is None else calibration.probability_threshold
        content = {"calibrated": True, "above_threshold": threshold, "calibration": calibration.to_dict()}
    path = os.path.join(saved_model_dir, CALIBRATION_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(content, f)


def read_calibration_file(saved_model_dir):
    """(Calibration or None, the export's calibration.json content) of an export folder;
    an export written before calibration existed reads as uncalibrated."""
    from sdl_keras.calibration import Calibration

    path = os.path.join(saved_model_dir, CALIBRATION_FILE)
    if not os.path.exists(path):
        return None, {"calibrated": False, "reason": f"{path} does not exist (an older export)"}
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    if not content.get("calibrated"):
        return None, content
    return Calibration.from_dict(content["calibration"], source=path), content


def write_serving_config(base_path, model_name, serving_base_path=None, num_versions=2):
    """Writes `models.config`, `batching_parameters.txt` and `monitoring.config` beside a
    model's versions.

    `models.config` is a ModelServerConfig text proto naming the newest `num_versions`
    exported versions (so a rollback target stays loaded); `serving_base_path` is where
    TF Serving sees this folder (the container path, `/models/<name>` by default).
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    versions = list_versions(base_path)
    if not versions:
        raise FileNotFoundError(f"No exported versions under {base_path}.")
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = serving_base_path or f"/models/{model_name}"
    model.model_platform = "tensorflow"
    model.model_version_policy.specific.versions.extend(versions[-max(1, int(num_versions)) :])
    with open(os.path.join(base_path, "models.config"), "w") as f:
        f.write(text_format.MessageToString(config))
    # BatchingParameters (tensorflow_serving/servables/tensorflow/session_bundle_config.proto),
    # whose Python module the serving API package does not ship: written as text.
    with open(os.path.join(base_path, "batching_parameters.txt"), "w") as f:
        for key, value in BATCHING_PARAMETERS.items():
            f.write(f"{key} {{ value: {value} }}\n")
        for size in ALLOWED_BATCH_SIZES:
            f.write(f"allowed_batch_sizes: {size}\n")
    # MonitoringConfig (tensorflow_serving/config/monitoring_config.proto), likewise not shipped.
    with open(os.path.join(base_path, "monitoring.config"), "w") as f:
        f.write(MONITORING_CONFIG)


def read_saved_model(saved_model_dir):
    """The SavedModel proto of an export folder (graphs and signature defs)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    return saved_model


def python_ops(saved_model_dir):
    """Sorted names of the ops in a SavedModel's graph (functions included) that TF
    Serving cannot run: Python-bound ops, and ops missing from TensorFlow's registry."""
    from tensorflow.python.framework import op_def_registry

    saved_model = read_saved_model(saved_model_dir)
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    function_names = {f.signature.name for mg in saved_model.meta_graphs for f in mg.graph_def.library.function}
    foreign = {op for op in ops if op not in function_names and op_def_registry.get(op) is None}
    return sorted((ops & PYTHON_OPS) | foreign)


def export_model(
    model,
    vocabulary,
    base_path,
    version=None,
    top_k=10,
    aggregation="max",
    crop="none",
    decode_mode="fast",
    model_name=None,
    serving_base_path=None,
    num_versions=2,
    calibration=None,
    threshold=None,
    uncalibrated_reason=None,
):
    """Writes `base_path/<version>/` and refreshes the deployment files; returns its path.

    `calibration` and `threshold` as `build_export_archive`; `uncalibrated_reason` is what
    an uncalibrated export's calibration.json says.

    The SavedModel is written to a hidden temporary folder and renamed into place, so
    a server polling `base_path` (TF Serving, `sdl_keras.serving.server`) never loads a
    half-written version.
    """
    image_size, _, embed_dim = check_model(model, vocabulary)
    model_name = model_name or os.path.basename(os.path.normpath(base_path))
    version = next_version(base_path) if version is None else int(version)
    if version < 1:
        raise ValueError(f"Versions are positive integers, got {version}.")
    target = os.path.join(base_path, str(version))
    if os.path.exists(target):
        raise FileExistsError(f"{target} exists; pick another --version or leave it unset for the next free one.")
    os.makedirs(base_path, exist_ok=True)
    staging = os.path.join(base_path, f".exporting-{version}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        build_export_archive(model, vocabulary, top_k, aggregation, crop, decode_mode, calibration,
                             threshold).write_out(staging, verbose=False)
        bad = python_ops(staging)
        if bad:
            raise ValueError(f"The exported graph holds ops TF Serving cannot run: {bad}")
        write_warmup_requests(staging, model_name, image_size, embed_dim)
        write_calibration_file(staging, calibration, threshold, uncalibrated_reason)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_serving_config(base_path, model_name, serving_base_path, num_versions)
    return target


def export_run(run_dir, output_dir="saved_models", name=None, version=None, top_k=10, serving_base_path=None,
               num_versions=2, checkpoint=None, vocabulary=None, threshold=None):
    """Exports a run directory (its model.keras, or `checkpoint`) with its vocabulary, scoring
    and decoding as the run's config says, calibrated when the run is (its calibration.json,
    fitted for the same model file and tags); returns (path of the version written, settings).

    `name` defaults to the run directory's name; `vocabulary` (an .npz path) to the run's;
    `threshold` is the above_threshold mask's ("tuned", a probability; default the
    calibration's own).
    """
    from sdl_keras import saving
    from sdl_keras.embeddings import TagVocabulary

    run = RunDirectory(run_dir)
    if checkpoint:
        model, config = saving.load_model(checkpoint, compile=False), run.config()
    else:
        model, _, config = run.load()
        checkpoint = run.model_path
    vocab = TagVocabulary.load(vocabulary) if vocabulary else run.vocabulary()
    check_model(model, vocab, source=checkpoint)
    name = name or run.name
    calibration, reason = run.calibration_for(checkpoint, vocab)
    if calibration is None and threshold is not None:
        raise ValueError(f"--threshold={threshold} needs a calibrated run: {reason}.")
    settings = {"aggregation": config.loss.aggregation, "crop": config.data.crop,
                "decode_mode": config.data.decode_mode}
    path = export_model(
        model, vocab, os.path.join(output_dir, name), version=version, top_k=top_k, model_name=name,
        serving_base_path=serving_base_path, num_versions=num_versions, calibration=calibration,
        threshold=threshold, uncalibrated_reason=reason, **settings,
    )
    return path, dict(settings, tags=len(vocab), unseen=len(vocab.unseen), calibrated=calibration is not None,
                      reason=reason)


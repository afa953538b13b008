"""Export: the CLI, the three signatures, parity with the Keras model, the graph's ops,
saved_model_cli, versions and the TF Serving deployment files (models.config, batching and
monitoring configs, the warmup requests)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from sdl_keras import calibration as cal, saved_model as export
from sdl_keras.config import TrainConfig
from sdl_keras.scoring import tag_scores
from tests import testing
from tests.sdl_keras.saved_model import tiny_export as tiny

REPO_CONFIGS = os.path.join(testing.REPO_ROOT, "configs")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Version 1 written by the CLI from a run directory whose config.json asks for the
    l2 aggregation; version 2 by the library, with the default max aggregation."""
    root = tmp_path_factory.mktemp("export")
    run_dir = root / "run"
    run_dir.mkdir()
    model, vocabulary = tiny.tiny_model(), tiny.tiny_vocabulary()
    model.save(run_dir / "model.keras")
    vocabulary.save(run_dir / "vocabulary.npz")
    TrainConfig.from_flat(aggregation="l2", num_rows=tiny.NUM_ROWS, image_size=tiny.IMAGE_SIZE).save(
        run_dir / "config.json")
    out = root / "saved_models"
    cli = subprocess.run(
        [sys.executable, "-m", "sdl_keras.export", f"--flagfile={REPO_CONFIGS}/export.flags",
         f"--run_dir={run_dir}", f"--output_dir={out}", "--name=tiny", f"--top_k={tiny.TOP_K}"],
        capture_output=True, text=True, env=testing.python_env(), timeout=300,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert f"with {len(vocabulary)} tags (3 unseen), l2 aggregation, crop none" in cli.stdout
    second = export.export_model(model, vocabulary, str(out / "tiny"), top_k=tiny.TOP_K)
    return {"base": out / "tiny", "model": model, "vocabulary": vocabulary, "second": second}


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported["base"] / "1"))


def test_versions_are_integer_folders_and_the_next_free_one(exported):
    assert exported["second"] == str(exported["base"] / "2")
    assert export.list_versions(exported["base"]) == [1, 2]
    assert export.next_version(exported["base"]) == 3
    assert not [d for d in os.listdir(exported["base"]) if d.startswith(".")], "staging folder left behind"
    with pytest.raises(FileExistsError, match="exists"):
        export.export_model(exported["model"], exported["vocabulary"], str(exported["base"]), version=2)


def test_signatures_inputs_and_outputs(loaded):
    assert {"serving_default", "matrix", "score_tags"} <= set(loaded.signatures)
    inputs = {n: fn.structured_input_signature[1] for n, fn in loaded.signatures.items()}
    assert inputs["serving_default"]["images"].dtype == tf.string
    assert inputs["score_tags"]["tag_vectors"].shape.as_list() == [None, tiny.EMBED_DIM]
    images = tf.constant([testing.encoded_image(seed=s)[0] for s in range(3)])
    out = loaded.signatures["serving_default"](images=images)
    assert {k: (v.dtype, tuple(v.shape)) for k, v in out.items()} == {
        "tags": (tf.string, (3, tiny.TOP_K)),
        "scores": (tf.float32, (3, tiny.TOP_K)),
        "rows": (tf.int32, (3, tiny.TOP_K)),
        "unseen": (tf.bool, (3, tiny.TOP_K)),
    }
    assert loaded.signatures["matrix"](images=images)["matrix"].shape == (3, tiny.NUM_ROWS, tiny.EMBED_DIM)


@pytest.mark.parametrize("version,aggregation", [(1, "l2"), (2, "max")])
def test_export_matches_the_keras_model(exported, version, aggregation):
    """Same image, same scores: a PNG at the model's size needs no resize, so the
    Keras model gets PIL's pixels and the export decodes the bytes in-graph."""
    loaded = tf.saved_model.load(str(exported["base"] / str(version)))
    model, vocabulary = exported["model"], exported["vocabulary"]
    data, pixels = zip(*[testing.encoded_image(seed=s) for s in range(4)])
    A = model.predict(np.stack(pixels).astype("float32"), verbose=0)
    scores, rows = (np.asarray(x) for x in tag_scores(A, vocabulary.vectors, aggregation))
    images = tf.constant(list(data))

    np.testing.assert_allclose(loaded.signatures["matrix"](images=images)["matrix"].numpy(), A, atol=1e-5)
    out = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=images).items()}
    top = np.argsort(-scores, axis=1)[:, : tiny.TOP_K]
    np.testing.assert_allclose(out["scores"], np.take_along_axis(scores, top, 1), atol=1e-5)
    assert out["tags"].tolist() == [[vocabulary.tags[j].encode() for j in row] for row in top]
    np.testing.assert_array_equal(out["rows"], np.take_along_axis(rows, top, 1))
    np.testing.assert_array_equal(out["unseen"], np.isin(top, vocabulary.unseen))

    # score_tags: vectors unknown at export time (unnormalized: the graph normalizes them).
    new = np.random.default_rng(5).normal(size=(7, tiny.EMBED_DIM)).astype("float32") * 3.0
    served = loaded.signatures["score_tags"](images=images, tag_vectors=tf.constant(new))["scores"].numpy()
    expected, _ = tag_scores(A, new / np.linalg.norm(new, axis=1, keepdims=True), aggregation)
    np.testing.assert_allclose(served, np.asarray(expected), atol=1e-5)


def test_graph_holds_no_python_ops(exported, tmp_path):
    assert export.python_ops(str(exported["base"] / "1")) == []

    # The check itself must catch a Python-bound op.
    module = tf.Module()
    module.f = tf.function(
        lambda x: tf.py_function(lambda v: v * 2, [x], tf.float32), input_signature=[tf.TensorSpec([None], tf.float32)]
    )
    tf.saved_model.save(module, str(tmp_path / "py"), signatures=module.f)
    assert export.python_ops(str(tmp_path / "py")) == ["EagerPyFunc"]


def test_an_uncalibrated_export_says_so(exported):
    calibration, metadata = export.read_calibration_file(str(exported["base"] / "1"))
    assert calibration is None and metadata["calibrated"] is False
    assert "calibration.json does not exist" in metadata["reason"]


@pytest.mark.parametrize("method", cal.METHODS)
@pytest.mark.parametrize("pooling", cal.UNSEEN_POOLINGS)
def test_calibration_ops_equal_the_numpy_calibration(method, pooling):
    """The graph ops the export runs and the NumPy reference, on the same float32 scores."""
    rng = np.random.default_rng(3)
    vocabulary = tiny.tiny_vocabulary()
    scores = (rng.normal(size=(300, len(vocabulary))) * 3).astype(np.float32)
    labels = (rng.random(scores.shape) < cal.sigmoid(1.5 * scores - 3)).astype(np.float32)
    labels[5:, 0] = 0  # "sky": too few positives, the shared map
    fitted = cal.fit_calibration(scores, labels, vocabulary.tags, vocabulary.unseen, method, pooling, min_positives=30)
    assert fitted.shared == [0]
    ops = export.CalibrationOps(fitted)
    test_scores = (rng.normal(size=(50, len(vocabulary))) * 4).astype(np.float32)
    np.testing.assert_allclose(ops.probabilities(tf.constant(test_scores)).numpy(), fitted.probabilities(test_scores),
                               rtol=0, atol=1e-6)
    new = test_scores[:, :5] + 0.5
    np.testing.assert_allclose(ops.unseen_probabilities(tf.constant(new), tf.constant(test_scores)).numpy(),
                               fitted.unseen_probabilities(new, test_scores), rtol=0, atol=1e-6)


def test_a_calibrated_export_with_a_threshold_given_at_export(exported, tmp_path):
    model, vocabulary = exported["model"], exported["vocabulary"]
    rng = np.random.default_rng(4)
    scores = (rng.normal(size=(200, len(vocabulary))) * 0.05).astype(np.float32)
    labels = (rng.random(scores.shape) < cal.sigmoid(40 * scores - 1)).astype(np.float32)
    fitted = cal.fit_calibration(scores, labels, vocabulary.tags, vocabulary.unseen, "isotonic", "score",
                                 min_positives=5)
    path = export.export_model(model, vocabulary, str(tmp_path / "calibrated"), top_k=tiny.TOP_K, calibration=fitted,
                               threshold=0.5)
    assert export.python_ops(path) == []
    restored, metadata = export.read_calibration_file(path)
    assert metadata["above_threshold"] == 0.5 and restored.method == "isotonic"
    signatures = tf.saved_model.load(path).signatures
    images = tf.constant([testing.encoded_image(seed=s)[0] for s in range(4)])
    out = {k: v.numpy() for k, v in signatures["serving_default"](images=images).items()}
    assert out["probabilities"].shape == out["above_threshold"].shape == (4, tiny.TOP_K)
    np.testing.assert_array_equal(out["above_threshold"], out["probabilities"] >= 0.5)
    served = signatures["score_tags"](images=images, tag_vectors=tf.constant(vocabulary.vectors[:3]))
    expected = fitted.unseen_probabilities(served["scores"].numpy())
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, rtol=0, atol=1e-6)


def _saved_model_cli(*args):
    result = subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args],
        capture_output=True, text=True, env=testing.python_env(), timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_saved_model_cli_shows_and_runs_serving_default(exported, loaded, tmp_path):
    version = str(exported["base"] / "1")
    shown = _saved_model_cli("show", "--all", "--dir", version)
    for signature in ("serving_default", "matrix", "score_tags"):
        assert f"signature_def['{signature}']" in shown
    assert "inputs['tag_vectors'] tensor_info" in shown and "outputs['unseen'] tensor_info" in shown

    photo = sorted(os.listdir(testing.shared_path("reference", "images")))[0]
    with open(testing.shared_path("reference", "images", photo), "rb") as f:
        data = f.read()
    # A JPEG ends in FF D9, so a fixed-width bytes array (no pickle) holds it whole.
    np.save(tmp_path / "images.npy", np.array([data]))
    ran = _saved_model_cli("run", "--dir", version, "--tag_set", "serve", "--signature_def", "serving_default",
                           "--inputs", f"images={tmp_path / 'images.npy'}")
    expected = loaded.signatures["serving_default"](images=tf.constant([data]))
    assert "Result for output key tags:" in ran
    assert all(repr(t) in ran for t in expected["tags"].numpy()[0]), ran


def test_deployment_files(exported):
    """models.config, batching_parameters.txt and monitoring.config, read as the server reads them."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    from sdl_keras.serving import server_config

    with open(exported["base"] / "models.config") as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (model,) = config.model_config_list.config
    assert (model.name, model.base_path, model.model_platform) == ("tiny", "/models/tiny", "tensorflow")
    assert list(model.model_version_policy.specific.versions) == [1, 2]
    batching = server_config.read_batching_parameters(str(exported["base"] / "batching_parameters.txt"))
    assert (batching.max_batch_size, batching.batch_timeout_micros, batching.num_batch_threads) == (32, 2000, 4)
    assert batching.allowed_batch_sizes == export.ALLOWED_BATCH_SIZES == (1, 2, 4, 8, 16, 32)
    assert server_config.read_monitoring_config(str(exported["base"] / "monitoring.config")) == \
        "/monitoring/prometheus/metrics"


def test_warmup_covers_every_signature_at_every_allowed_batch_size(exported, loaded):
    from tensorflow_serving.apis import prediction_log_pb2

    path = exported["base"] / "1" / export.WARMUP_FILE
    requests = [prediction_log_pb2.PredictionLog.FromString(r).predict_log.request
                for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]
    seen = [(r.model_spec.signature_name, tf.make_ndarray(r.inputs["images"]).shape[0]) for r in requests]
    assert seen == [(s, n) for s in ("serving_default", "matrix", "score_tags") for n in export.ALLOWED_BATCH_SIZES]
    for request in requests:
        assert request.model_spec.name == "tiny"
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert all(v.shape[0] == inputs["images"].shape[0] for v in outputs.values())
    assert tf.make_ndarray(requests[-1].inputs["tag_vectors"]).shape == (8, tiny.EMBED_DIM)


def test_bad_inputs_fail_inside_the_graph(loaded):
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="images is an empty batch"):
        serve(images=tf.constant([], dtype=tf.string))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        serve(images=tf.constant([testing.encoded_image()[0], b"not an image"]))


def test_bad_model_or_vocabulary_named(exported, tmp_path):
    from sdl_keras.embeddings import TagVocabulary

    model, vocabulary = exported["model"], exported["vocabulary"]
    wrong_dim = TagVocabulary(["a", "b"], np.ones((2, 8)))
    with pytest.raises(ValueError, match="16-dimensional principal directions but the vocabulary's tag vectors have 8"):
        export.build_export_archive(model, wrong_dim)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, 12\]"):
        export.build_export_archive(model, vocabulary, top_k=13)
    with pytest.raises(FileNotFoundError, match="nowhere.keras"):
        export.export_run(str(tmp_path), checkpoint=str(tmp_path / "nowhere.keras"))


if __name__ == "__main__":
    testing.run(__file__)

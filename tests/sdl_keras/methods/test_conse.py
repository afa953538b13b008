"""CONSE: the embedding layer and loss against a direct NumPy computation, and the method
trained, evaluated and exported through the project's own train / evaluate / export."""

import keras
import numpy as np

from sdl_keras.methods.conse import ConSEEmbedding, conse_loss
from tests import testing
from tests.sdl_keras.methods import method_runs


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_embedding_is_the_normalized_probability_weighted_mean_of_the_top_t_seen_vectors():
    rng = np.random.default_rng(0)
    seen = unit(rng.standard_normal((6, 5))).astype(np.float32)
    logits = rng.standard_normal((3, 6)).astype(np.float32)
    layer = ConSEEmbedding(seen, top_t=3)
    A = keras.ops.convert_to_numpy(layer(logits))
    assert A.shape == (3, 1, 5)
    p = 1 / (1 + np.exp(-logits))
    for i in range(3):
        top = np.argsort(-p[i])[:3]
        expected = unit((p[i, top, None] * seen[top]).sum(0) / p[i, top].sum())
        np.testing.assert_allclose(A[i, 0], expected, atol=1e-6)
    assert ConSEEmbedding(seen, top_t=50)(logits).shape == (3, 1, 5)  # T above S uses every seen tag
    testing.check_config_round_trip(layer)


def test_loss_is_sigmoid_cross_entropy_over_labelled_tags():
    labels = np.array([[1, 0, -1], [0, 0, 0]], np.float32)
    logits = np.array([[2.0, -1.0, 0.5], [0.3, -0.2, 1.0]], np.float32)
    bce = lambda z, y: np.log1p(np.exp(-z)) if y else np.log1p(np.exp(z))  # noqa: E731
    as_negative = keras.ops.convert_to_numpy(conse_loss(labels, logits, unknown_as_negative=True))
    ignored = keras.ops.convert_to_numpy(conse_loss(labels, logits, unknown_as_negative=False))
    np.testing.assert_allclose(as_negative[0], (bce(2.0, 1) + bce(-1.0, 0) + bce(0.5, 0)) / 3, rtol=1e-5)
    np.testing.assert_allclose(ignored[0], (bce(2.0, 1) + bce(-1.0, 0)) / 2, rtol=1e-5)
    np.testing.assert_allclose(as_negative[1], np.mean([bce(z, 0) for z in logits[1]]), rtol=1e-5)


def test_trains_evaluates_and_exports(tmp_path):
    run = method_runs.train_evaluate_export("conse", str(tmp_path), conse_top_t=4)
    config, vocabulary, results, model, exported = run
    assert (config.model.method, config.model.num_rows, config.loss.aggregation) == ("conse", 1, "max")
    assert model.output_shape == (None, 1, vocabulary.dim)
    assert np.isfinite(results["model"]["zsl/mAP"]) and 0 < results["model"]["gzsl/mAP"] <= 100
    matrix = method_runs.check_export_serves_the_model(model, vocabulary, exported)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=-1), 1.0, atol=1e-5)  # cosine scores


if __name__ == "__main__":
    testing.run(__file__)

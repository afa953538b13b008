"""Semantic Softmax: the head and the multi-label loss against a direct NumPy computation,
and the method trained, evaluated and exported through the project's own train / evaluate / export."""

import keras
import numpy as np

from sdl_keras.methods.semantic_softmax import SemanticSoftmaxHead, semantic_softmax_loss
from sdl_keras.scoring import tag_scores
from tests import testing
from tests.sdl_keras.methods import method_runs


def test_head_scores_are_the_semantic_softmax_logits():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((3, 7)).astype(np.float32)
    tags = rng.standard_normal((4, 5)).astype(np.float32)
    head = SemanticSoftmaxHead(5)
    A = head(features)
    W = keras.ops.convert_to_numpy(head.kernel)
    scores, rows = tag_scores(A, tags)
    # max over the one row of A t = f^T W t, the logit of the semantic softmax layer.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scores), features @ W @ tags.T, rtol=1e-5, atol=1e-5)
    assert not keras.ops.convert_to_numpy(rows).any()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head.prototypes(tags)), tags @ W.T, rtol=1e-5, atol=1e-6)
    testing.check_config_round_trip(head)


def reference_loss(labels, features, W, seen, l2_weight, unknown_as_negative):
    losses, counted = [], []
    for y, f in zip(labels, features):
        positive = y == 1
        if not positive.any():
            losses.append(0.0)
            counted.append(0.0)
            continue
        in_softmax = (y != -1) | unknown_as_negative
        logits = (f @ W @ seen.T)[in_softmax]
        log_softmax = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        cross_entropy = -log_softmax[positive[in_softmax]].mean()
        prototype = W @ seen[positive].mean(axis=0)
        losses.append(cross_entropy + l2_weight * np.mean((f - prototype) ** 2))
        counted.append(1.0)
    return np.array(losses), np.array(counted)


def test_multi_label_loss_spreads_the_target_and_constrains_to_the_mean_prototype():
    rng = np.random.default_rng(1)
    seen = rng.standard_normal((5, 4)).astype(np.float32)
    W = rng.standard_normal((6, 4)).astype(np.float32) * 0.3
    features = rng.standard_normal((4, 6)).astype(np.float32)
    labels = np.array([[1, 0, 1, 0, -1], [0, 0, 0, 0, 0], [0, 1, -1, -1, 0], [1, 1, 1, 0, 0]], np.float32)
    matrix = (features @ W)[:, None, :]
    for unknown_as_negative in (True, False):
        losses, counted = semantic_softmax_loss(labels, matrix, features, W, seen, 0.5, unknown_as_negative)
        expected, expected_counted = reference_loss(labels, features, W, seen, 0.5, unknown_as_negative)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(losses), expected, rtol=1e-5)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(counted), expected_counted)


def test_trains_evaluates_and_exports(tmp_path):
    config, vocabulary, results, model, exported = method_runs.train_evaluate_export("semantic_softmax", str(tmp_path))
    assert (config.model.method, config.model.num_rows, config.loss.aggregation) == ("semantic_softmax", 1, "max")
    assert model.output_shape == (None, 1, vocabulary.dim)
    assert np.isfinite(results["model"]["zsl/mAP"]) and 0 < results["model"]["gzsl/mAP"] <= 100
    method_runs.check_export_serves_the_model(model, vocabulary, exported)


if __name__ == "__main__":
    testing.run(__file__)

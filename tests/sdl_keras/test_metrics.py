"""SDLMetrics: exact streaming P/R/F1@K, the measured error of its binned mAP, and
use inside model.compile / fit."""

import keras
import numpy as np
import pytest

from sdl_keras.evaluation import evaluate_scores
from sdl_keras.metrics import SDLMetrics
from tests import testing


def as_matrices(scores):
    """A (N, 1, C) with identity tag vectors: SDL scores equal to the given ones."""
    return scores[:, None, :].astype(np.float32), np.eye(scores.shape[1], dtype=np.float32)


def streamed(metric, labels, A, batch=97):
    for start in range(0, len(labels), batch):
        metric.update_state(labels[start:start + batch], A[start:start + batch])
    return {key: float(value) for key, value in metric.result().items()}


@pytest.mark.parametrize("name", ["metrics_n400_c30", "metrics_n1000_c81", "metrics_n600_c40_empty_tags"])
def test_streaming_figures_against_official_golden(name):
    golden = np.load(testing.shared_path("golden", f"{name}.npz"))
    A, T = as_matrices(golden["scores"])
    metric = SDLMetrics(T, unseen=golden["unseen"], ks=(3, 5))
    results = streamed(metric, golden["labels"], A)
    for task in ("zsl", "gzsl"):
        for k in (3, 5):
            for m in ("P", "R", "F1"):
                assert results[f"{task}/{m}@{k}"] == pytest.approx(float(golden[f"{m}@{k}_{task}"]), abs=1e-3)
        # mAP is binned: the documented approximation, its error measured here.
        assert abs(results[f"{task}/mAP"] - float(golden[f"mAP_{task}"])) < 0.5


def test_skipping_empty_tags_matches_evaluate_scores():
    golden = np.load(testing.shared_path("golden", "metrics_n600_c40_empty_tags.npz"))
    A, T = as_matrices(golden["scores"])
    results = streamed(SDLMetrics(T, unseen=golden["unseen"], empty_tags="skip"), golden["labels"], A)
    expected = evaluate_scores(golden["scores"], golden["labels"], golden["unseen"], empty_tags="skip")
    for task in ("zsl", "gzsl"):
        assert abs(results[f"{task}/mAP"] - expected[f"{task}/mAP"]) < 0.5
        assert expected[f"{task}/mAP"] > float(golden[f"mAP_{task}"]) + 0.7  # skipping inflates it
    assert testing.check_config_round_trip(SDLMetrics(T, empty_tags="skip")).empty_tags == "skip"


def test_matches_evaluate_scores_with_unknown_labels_and_resets():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((500, 3, 8)).astype(np.float32)
    T = rng.standard_normal((20, 8)).astype(np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    labels = (rng.random((500, 20)) < 0.15).astype(np.float32)
    labels[rng.random((500, 20)) < 0.1] = -1
    scores = np.einsum("bmd,cd->bmc", A, T).max(1)
    expected = evaluate_scores(scores, labels, [2, 5, 9], ks=(3,))
    metric = SDLMetrics(T, unseen=[2, 5, 9], ks=(3,))
    first = streamed(metric, labels, A)
    for key, value in first.items():
        tolerance = 0.5 if key.endswith("mAP") else 1e-3
        assert value == pytest.approx(expected[key], abs=tolerance), key
    metric.reset_state()
    assert streamed(metric, labels, A) == pytest.approx(first)


def test_without_unseen_tags_keys_have_no_prefix_and_config_round_trips():
    T = np.eye(4, dtype=np.float32)
    metric = SDLMetrics(T, ks=(1, 2), num_bins=50, score_scale=2.0, aggregation="l2", name="seen")
    assert sorted(streamed(metric, np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32)[:, None, :])) == sorted(
        ["P@1", "R@1", "F1@1", "P@2", "R@2", "F1@2", "mAP"])
    clone = testing.check_config_round_trip(metric)
    assert clone.unseen == () and clone.ks == (1, 2) and clone.num_bins == 50
    with pytest.raises(ValueError, match="out of range"):
        SDLMetrics(T, unseen=[4])


def test_reports_in_model_fit():
    rng = np.random.default_rng(1)
    T = np.eye(6, dtype=np.float32)
    inputs = keras.Input((5,))
    model = keras.Model(inputs, keras.layers.Reshape((1, 6))(keras.layers.Dense(6)(inputs)))
    model.compile(optimizer="adam", loss="mse", metrics=[SDLMetrics(T, unseen=[4, 5], ks=(2,))])
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = (rng.random((32, 6)) < 0.3).astype(np.float32)
    logs = model.fit(x, y, epochs=1, verbose=0).history
    assert {"zsl/P@2", "gzsl/mAP", "gzsl/F1@2"} <= set(logs)


if __name__ == "__main__":
    testing.run(__file__)

"""The calibration library (NumPy): Platt, temperature and isotonic maps recover known
probabilities, every map is monotone in the score, tags with few positives fall back to the
shared map, the unseen map pools by score or by rank, thresholds maximize F1, and a
calibration survives its JSON file."""

import types

import numpy as np
import pytest

from sdl_keras import calibration as cal
from sdl_keras.run_dir import RunDirectory
from tests import testing


def synthetic(num_images=600, num_tags=6, unseen=(4, 5), seed=0, slopes=None):
    """Scores and labels where P(positive | s) = sigmoid(slope_c s + bias_c); the last tag of
    the seen ones has only a handful of positives."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(num_images, num_tags)).astype(np.float32) * 2
    slopes = np.linspace(1.0, 3.0, num_tags) if slopes is None else np.asarray(slopes)
    labels = (rng.random(scores.shape) < cal.sigmoid(slopes * scores - 2.0)).astype(np.float32)
    labels[:, 3] = 0
    labels[:4, 3] = 1  # too few positives for a map of its own
    labels[rng.random(scores.shape) < 0.02] = -1
    tags = [f"tag{i}" for i in range(num_tags)]
    return scores, labels, tags, list(unseen)


def test_platt_recovers_the_generating_map_and_temperature_has_no_bias():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40000) * 2
    y = rng.random(x.size) < cal.sigmoid(2.0 * x - 1.0)
    slope, bias = cal.fit_logistic(x, y)
    assert slope == pytest.approx(2.0, abs=0.1) and bias == pytest.approx(-1.0, abs=0.1)
    slope, bias = cal.fit_logistic(x, rng.random(x.size) < cal.sigmoid(0.5 * x), fit_bias=False)
    assert slope == pytest.approx(0.5, abs=0.05) and bias == 0.0
    # Scores that fall with the labels: the slope stays at its floor (monotone), the bias fits the rate.
    slope, bias = cal.fit_logistic(x, x < 0)
    assert slope == cal.MIN_SLOPE and cal.sigmoid(bias) == pytest.approx(0.5, abs=0.02)


def test_pool_adjacent_violators_and_the_isotonic_grid():
    centres, means = cal.pool_adjacent_violators(np.array([1.0, 2, 3, 4, 5]), np.array([0, 1, 0, 1, 1]))
    np.testing.assert_allclose(means, [0, 0.5, 1])
    np.testing.assert_allclose(centres, [1, 2.5, 4.5])
    start, step, values = cal.fit_isotonic(np.array([1.0, 2, 3, 4, 5]), np.array([0, 1, 0, 1, 1]), points=5)
    assert (start, step) == (1.0, 1.0)
    # Linear between the block centres (1, 0), (2.5, 0.5), (4.5, 1), read at the grid points.
    np.testing.assert_allclose(values, [0, 1 / 3, 0.625, 0.875, 1])
    grid_map = cal.ScoreMap("isotonic", start=[start], step=[step], values=[values])
    np.testing.assert_allclose(grid_map.apply(np.array([[0.0], [2.5], [9.0]])), [[0], [(1 / 3 + 0.625) / 2], [1]])


@pytest.mark.parametrize("method", cal.METHODS)
@pytest.mark.parametrize("pooling", cal.UNSEEN_POOLINGS)
def test_probabilities_are_monotone_in_the_score_for_each_tag(method, pooling):
    scores, labels, tags, unseen = synthetic()
    fitted = cal.fit_calibration(scores, labels, tags, unseen, method, pooling, min_positives=10)
    # Each tag's score swept over a range, every other score of the image fixed.
    sweep = np.linspace(-8, 8, 161)
    for image in scores[:5]:
        for tag in range(len(tags)):
            grid = np.repeat(image[None], len(sweep), axis=0)
            grid[:, tag] = sweep
            probabilities = fitted.probabilities(grid)[:, tag]
            assert np.all(np.diff(probabilities) >= -1e-12), (method, pooling, tag)
            assert ((0 <= probabilities) & (probabilities <= 1)).all()
    # The lowest scores get low probabilities (temperature's one parameter gives score 0 a half;
    # the rank map gives an image's best tag its rank-1 probability, whatever the score).
    if method != "temperature" and pooling == "score":
        assert fitted.probabilities(np.full((1, len(tags)), -8.0)).max() < 0.2


def test_few_positives_use_the_shared_map_and_threshold():
    scores, labels, tags, unseen = synthetic()
    fitted = cal.fit_calibration(scores, labels, tags, unseen, "platt", "score", min_positives=10)
    assert fitted.shared == [3] and fitted.seen == [0, 1, 2, 3]
    seen = fitted.seen
    known = labels[:, seen] != -1
    shared = cal.fit_map(scores[:, seen][known], labels[:, seen][known], "platt")
    np.testing.assert_allclose(fitted.tag_map.take([3]).slope, shared.slope)
    np.testing.assert_allclose(fitted.tag_map.take([3]).bias, shared.bias)
    # The score-pooled unseen map is the shared map; its tags use the unseen threshold.
    np.testing.assert_allclose(fitted.unseen_map.slope, shared.slope)
    assert fitted.thresholds[3] == fitted.shared_threshold
    assert (fitted.thresholds[unseen] == fitted.unseen_threshold).all()
    # Tags with enough positives: their own map, close to the generating slopes 1.0 .. 3.0.
    np.testing.assert_allclose(fitted.tag_map.slope[:3], np.linspace(1.0, 3.0, 6)[:3], rtol=0.3)


def test_rank_pooling_maps_each_tag_by_its_rank_in_the_image():
    scores, labels, tags, unseen = synthetic()
    fitted = cal.fit_calibration(scores, labels, tags, unseen, "platt", "rank")
    ranks = cal.score_ranks(scores[:, unseen], scores)
    expected = fitted.unseen_map.apply(-np.log(ranks))
    np.testing.assert_allclose(fitted.probabilities(scores)[:, unseen], expected)
    # A rank is 1 + the vocabulary tags scoring strictly higher; a new tag ranks as if added.
    vocabulary_scores = np.array([[3.0, 1.0, 2.0, 2.0]], np.float32)
    np.testing.assert_array_equal(cal.score_ranks(vocabulary_scores, vocabulary_scores), [[1, 4, 2, 2]])
    np.testing.assert_array_equal(cal.score_ranks(np.array([[5.0, 2.0, 0.0]]), vocabulary_scores), [[1, 2, 5]])
    # A vocabulary tag scored again, up to rounding, does not outrank itself.
    np.testing.assert_array_equal(cal.score_ranks(np.array([[2.0 - 1e-6, 3.0 - 2e-6]]), vocabulary_scores), [[2, 1]])
    with pytest.raises(ValueError, match="needs the images' vocabulary scores"):
        fitted.unseen_probabilities(scores[:, :2])


def test_tag_probabilities_by_name():
    scores, labels, tags, unseen = synthetic()
    fitted = cal.fit_calibration(scores, labels, tags, unseen, "platt", "rank")
    columns = [1, 4, 2]
    named = fitted.tag_probabilities(scores[:, columns], ["tag1", "tag4", "a word outside"], scores)
    full = fitted.probabilities(scores)
    np.testing.assert_allclose(named[:, :2], full[:, [1, 4]])
    np.testing.assert_allclose(named[:, 2], fitted.unseen_probabilities(scores[:, [2]], scores)[:, 0])


def test_best_f1_threshold():
    probabilities = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.2])
    labels = np.array([1, 1, 0, 1, 0, 0])
    threshold, f1 = cal.best_f1_threshold(probabilities, labels)
    # Keeping the top four: TP 3, 4 predicted, 3 positives -> F1 6/7; the cut is halfway to 0.3.
    assert f1 == pytest.approx(6 / 7) and threshold == pytest.approx(0.45)
    assert cal.best_f1_threshold(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0]))[0] == pytest.approx(0.3)
    assert cal.best_f1_threshold(probabilities, np.zeros(6)) == (1.0, 0.0)


def test_thresholds_default_tuned_or_user_set():
    scores, labels, tags, unseen = synthetic()
    fitted = cal.fit_calibration(scores, labels, tags, unseen)
    np.testing.assert_array_equal(fitted.threshold_vector(), fitted.thresholds)
    np.testing.assert_array_equal(fitted.threshold_vector(0.3), np.full(len(tags), 0.3))
    for tag in (0, 1, 2):
        column = labels[:, tag] != -1
        expected, _ = cal.best_f1_threshold(fitted.probabilities(scores)[column, tag], labels[column, tag])
        assert fitted.thresholds[tag] == pytest.approx(expected)
    user = cal.fit_calibration(scores, labels, tags, unseen, probability_threshold=0.6)
    np.testing.assert_array_equal(user.threshold_vector(), np.full(len(tags), 0.6))
    np.testing.assert_array_equal(user.threshold_vector("tuned"), user.thresholds)
    assert cal.parse_threshold("tuned") == "tuned" and cal.parse_threshold("0.25") == 0.25
    for bad in ("1.5", "half"):
        with pytest.raises(ValueError, match="probability in \\[0, 1\\]"):
            cal.parse_threshold(bad)


@pytest.mark.parametrize("method", cal.METHODS)
def test_a_run_directory_keeps_the_calibration(tmp_path, method):
    scores, labels, tags, unseen = synthetic()
    fitted = cal.fit_calibration(scores, labels, tags, unseen, method, "rank",
                                 fitted_on={"validation": "v.jsonl", "model": RunDirectory.MODEL})
    run = RunDirectory(tmp_path)
    assert run.calibration() is None
    run.write_calibration(fitted)
    restored = run.calibration()
    np.testing.assert_allclose(restored.probabilities(scores), fitted.probabilities(scores), rtol=0, atol=1e-12)
    assert restored.fitted_on["validation"] == "v.jsonl" and restored.fitted_on["images"] == len(scores)
    with pytest.raises(ValueError, match="first differ at position 1"):
        restored.check_tags(["tag0", "other", *tags[2:]])
    # Export, evaluate and search use it only for the model file and the tags it was fitted for.
    vocabulary = types.SimpleNamespace(tags=tuple(tags))
    assert run.calibration_for(run.model_path, vocabulary)[0] is not None
    calibration, reason = run.calibration_for(run.best_model_path, vocabulary)
    assert calibration is None and "was fitted for model.keras, not best.keras" in reason
    assert "other tags" in run.calibration_for(run.model_path, types.SimpleNamespace(tags=tags[::-1]))[1]


def test_bad_input_is_named():
    scores, labels, tags, unseen = synthetic()
    with pytest.raises(ValueError, match="calibration needs both"):
        cal.fit_calibration(scores, np.zeros_like(labels), tags, unseen)
    with pytest.raises(ValueError, match="calibration method must be one of"):
        cal.fit_calibration(scores, labels, tags, unseen, method="beta")
    with pytest.raises(ValueError, match=r"must both be \(N, 6\)"):
        cal.fit_calibration(scores[:, :5], labels[:, :5], tags, unseen)
    with pytest.raises(ValueError, match="not a calibration"):
        cal.Calibration.from_dict({"format": "something else"})


if __name__ == "__main__":
    testing.run(__file__)

"""evaluate_scores: parity with the official evaluation's goldens, a brute-force
reference for unknown labels and ties, and the table layout; the threshold metrics
(CP/CR/CF1, OP/OR/OF1) and the expected calibration error on hand-counted cases."""

import numpy as np
import pytest

from sdl_keras import evaluation
from tests import testing


GOLDENS = ["metrics_n400_c30", "metrics_n1000_c81", "metrics_n600_c40_empty_tags"]


@pytest.mark.parametrize("name", GOLDENS)
def test_matches_official_golden(name):
    golden = np.load(testing.shared_path("golden", f"{name}.npz"))
    ks = sorted({int(key[2:].split("_")[0]) for key in golden.files if key.startswith("P@")})
    results = evaluation.evaluate_scores(golden["scores"], golden["labels"], golden["unseen"], ks)
    for task in ("zsl", "gzsl"):
        for metric in ["mAP"] + [f"{m}@{k}" for k in ks for m in ("P", "R", "F1")]:
            assert results[f"{task}/{metric}"] == pytest.approx(float(golden[f"{metric}_{task}"]), abs=1e-3), (
                task, metric)


def test_tags_without_positives_count_zero_unless_skipped():
    """The official mAP averages over every evaluated tag; "skip" averages over the tags
    with a positive, which the golden's three empty tags (one unseen) inflate."""
    golden = np.load(testing.shared_path("golden", "metrics_n600_c40_empty_tags.npz"))
    scores, labels, unseen = golden["scores"], golden["labels"], golden["unseen"]
    official = evaluation.evaluate_scores(scores, labels, unseen)
    skipped = evaluation.evaluate_scores(scores, labels, unseen, empty_tags="skip")
    assert (official["gzsl/num_empty_tags"], official["zsl/num_empty_tags"]) == (3, 1)
    assert skipped["gzsl/mAP"] == pytest.approx(official["gzsl/mAP"] * 40 / 37)
    assert skipped["zsl/mAP"] == pytest.approx(official["zsl/mAP"] * 10 / 9)
    assert skipped["gzsl/P@3"] == official["gzsl/P@3"]  # only mAP depends on the rule
    with pytest.raises(ValueError, match="empty_tags must be one of"):
        evaluation.evaluate_scores(scores, labels, unseen, empty_tags="drop")


def brute_force_ap(scores, labels):
    """AP of one tag by walking the ranking one image at a time (continuous scores: no ties)."""
    keep = labels != -1
    scores, labels = scores[keep], labels[keep]
    order = np.argsort(-scores)
    hits, precisions = 0, []
    for rank, i in enumerate(order, start=1):
        if labels[i] == 1:
            hits += 1
            precisions.append(hits / rank)
    return float(np.mean(precisions)) if precisions else 0.0


def test_average_precision_handles_unknowns_and_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=(80, 7)).astype(np.float32)  # many ties
    labels = (rng.random((80, 7)) < 0.3).astype(np.float32)
    labels[rng.random((80, 7)) < 0.2] = -1
    ap, has_positive = evaluation.average_precisions(scores, labels)
    for tag in range(7):
        column, y = scores[:, tag], labels[:, tag]
        keep = y != -1
        expected = []
        for s in column[keep & (y == 1)]:
            at_or_above = keep & (column >= s)
            expected.append((at_or_above & (y == 1)).sum() / at_or_above.sum())
        assert ap[tag] == pytest.approx(np.mean(expected))
        assert has_positive[tag]


def test_continuous_scores_equal_walking_the_ranking():
    rng = np.random.default_rng(1)
    scores = rng.standard_normal((200, 9)).astype(np.float32)
    labels = (rng.random((200, 9)) < 0.2).astype(np.float32)
    labels[rng.random((200, 9)) < 0.1] = -1
    ap, _ = evaluation.average_precisions(scores, labels)
    for tag in range(9):
        assert ap[tag] == pytest.approx(brute_force_ap(scores[:, tag], labels[:, tag]))


def test_unknown_labels_are_never_hits_and_subsets_follow_the_protocol():
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.9, 0.8], [0.5, 0.4, 0.3]], np.float32)
    labels = np.array([[-1, 1, 0], [0, 0, 1], [0, 0, 0]], np.float32)
    results = evaluation.evaluate_scores(scores, labels, unseen=[2], ks=(1,))
    # GZSL: images 0 and 1 (image 2 has no positive); top-1 hits: image 0 -> tag 0 (unknown, no hit),
    # image 1 -> tag 1 (negative).
    assert results["gzsl/num_images"] == 2 and results["gzsl/P@1"] == 0.0
    # ZSL: only tag 2, only image 1, whose top-1 among unseen tags is a hit.
    assert results["zsl/num_images"] == 1 and results["zsl/P@1"] == 100.0 and results["zsl/mAP"] == 100.0


def test_random_scores_sit_at_chance_and_table_has_paper_layout():
    rng = np.random.default_rng(2)
    labels = (rng.random((3000, 20)) < 0.1).astype(np.float32)
    results = evaluation.evaluate_scores(evaluation.random_scores(labels.shape), labels, range(15, 20))
    assert results["gzsl/mAP"] == pytest.approx(100 * labels[labels.any(1)].mean(), abs=3)
    table = evaluation.format_table({"random": results}, ks=(3, 5)).splitlines()
    assert [cell.strip() for cell in table[0].split("|")] == [
        "Method", "Task", "P@3", "R@3", "F1@3", "P@5", "R@5", "F1@5", "mAP"]
    assert [line.split("|")[1].strip() for line in table[2:]] == ["ZSL", "GZSL"]


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"scores \(2, 3\) and labels \(2, 4\)"):
        evaluation.evaluate_scores(np.zeros((2, 3)), np.zeros((2, 4)), [0])
    with pytest.raises(ValueError, match="unseen indices"):
        evaluation.evaluate_scores(np.zeros((2, 3)), np.zeros((2, 3)), [3])


def test_threshold_metrics_by_hand():
    # 3 images x 3 tags; tag 2 is unseen. Predictions p >= 0.5.
    probabilities = np.array([[0.9, 0.6, 0.7], [0.2, 0.8, 0.1], [0.7, 0.1, 0.9]])
    labels = np.array([[1, 0, 1], [0, 1, -1], [0, -1, 1]])
    figures = evaluation.threshold_metrics(probabilities, labels, 0.5, unseen=[2])
    # GZSL: tag 0: 2 predicted, 1 hit, 1 positive; tag 1: 2 predicted (the -1 of image 3 is
    # neither hit nor miss), 1 hit, 1 positive; tag 2: 2 predicted, 2 hits, 2 positives.
    assert figures["gzsl/CP"] == pytest.approx(100 * 2 / 3) and figures["gzsl/CR"] == pytest.approx(100.0)
    assert figures["gzsl/CF1"] == pytest.approx(80.0)
    assert figures["gzsl/OP"] == pytest.approx(100 * 4 / 6) and figures["gzsl/OR"] == pytest.approx(100.0)
    # ZSL: tag 2 only, images 1 and 3 (the unseen positives): 2 predicted, 2 hits.
    assert figures["zsl/CP"] == figures["zsl/CR"] == figures["zsl/OF1"] == pytest.approx(100.0)
    # Per-tag thresholds; tag 0 has a positive but no prediction: precision 0.
    per_tag = evaluation.threshold_metrics(probabilities, labels, np.array([0.95, 0.5, 0.5]), unseen=[2])
    assert per_tag["gzsl/CP"] == pytest.approx(50.0) and per_tag["gzsl/CR"] == pytest.approx(100 * 2 / 3)


def test_expected_calibration_error_by_hand():
    probabilities = np.array([0.05, 0.05, 0.95, 0.95, 0.5, 0.99])
    labels = np.array([0, 1, 1, 1, 0, -1])
    curve = evaluation.reliability_curve(probabilities, labels)
    assert curve["count"].sum() == 5 and curve["count"][0] == 2 and curve["count"][14] == 2
    # Bins: [0.05, 0.05] -> frequency 0.5, gap 0.45; [0.95, 0.95] -> 1.0, gap 0.05; [0.5] -> 0, gap 0.5.
    expected = (2 * 0.45 + 2 * 0.05 + 0.5) / 5
    assert evaluation.expected_calibration_error(probabilities, labels) == pytest.approx(expected)


def test_calibration_errors_of_the_top_pairs_per_image():
    scores = np.array([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    labels = np.array([[1, 0, 0, 0], [0, 0, 1, 1]])
    probabilities = np.array([[1.0, 0.0, 0.9, 0.9], [0.0, 0.0, 0.1, 1.0]])
    errors = evaluation.calibration_errors(probabilities, scores, labels, unseen=[3], k=2)
    # Top-2 pairs: image 1 tags 0, 1 (seen, calibrated), image 2 tags 3 (unseen, right), 2 (seen, p 0.1 for a hit).
    assert errors["ece/seen@2/pairs"] == 3 and errors["ece/unseen@2/pairs"] == 1
    assert errors["ece/seen@2"] == pytest.approx(0.9 / 3) and errors["ece/unseen@2"] == 0.0
    assert errors["ece/unseen"] == pytest.approx(0.9 / 2)
    tables = evaluation.format_calibration_table({"calibrated": errors}, k=2)
    assert tables.splitlines()[2].split("|")[1].strip() == f"{0.9 / 3:.3f}"
    rows = [{"probabilities": "calibrated", "thresholds": "tuned", **evaluation.threshold_metrics(
        probabilities, labels, 0.5, [3])}]
    table = evaluation.format_threshold_table(rows).splitlines()
    assert [cell.strip() for cell in table[0].split("|")] == [
        "Probabilities", "Thresholds", "Task", "CP", "CR", "CF1", "OP", "OR", "OF1"]
    assert [line.split("|")[2].strip() for line in table[2:]] == ["ZSL", "GZSL"]


if __name__ == "__main__":
    testing.run(__file__)

"""Zero-shot (ZSL) and generalized (GZSL) evaluation, as the official evaluation computes it.

- mAP (tag-based retrieval): per tag, the average precision of ranking the test images
  by that tag's score; the mean over every evaluated tag, where a tag without a positive
  image counts as AP 0 (`empty_tags="zero"`, the official `mAP`, which divides each tag's
  precision sum by its positives + eps). `empty_tags="skip"` leaves such tags out of the
  mean instead: a documented option, never the default.
- P/R/F1@K (image tagging): the top-K tags of each image; micro precision
  TP / (images x K), recall TP / all positives, F1 their harmonic mean.
- ZSL: only the unseen tags, only images with at least one unseen positive.
  GZSL: all tags, all images with at least one positive.
Labels are 1 (positive), 0 (negative) or -1 (unknown). An unknown label is left out of
its tag's ranking for AP and never counts as a hit for P/R. Figures are in percent.

Ties in score are counted pessimistically (a positive ranks below every image that
scores the same); with continuous scores there are none, and the result equals the
official argsort-based computation.
"""

import concurrent.futures
import os

import numpy as np
from keras import ops

from sdl_keras.config import EMPTY_TAGS  # how mAP counts a tag without a positive: "zero" or "skip"


def check_empty_tags(empty_tags):
    if empty_tags not in EMPTY_TAGS:
        raise ValueError(f"empty_tags must be one of {EMPTY_TAGS}, got {empty_tags!r}.")
    return empty_tags


def mean_average_precision(ap, has_positive, empty_tags="zero"):
    """The mean of per-tag APs (fractions): over every tag (an empty one counts 0), or over
    the tags with a positive (`empty_tags="skip"`)."""
    check_empty_tags(empty_tags)
    if empty_tags == "skip":
        return float(ap[has_positive].mean()) if has_positive.any() else 0.0
    return float(np.mean(np.where(has_positive, ap, 0.0))) if ap.size else 0.0


def average_precisions(scores, labels, images=None):
    """Per-tag AP (fractions) of ranking the images (rows) by each tag's score (column).

    Each column is sorted once; a positive's precision is then (positives scoring >= it)
    / (images scoring >= it), two binary searches. Column blocks run on all cores
    (NumPy's sort releases the GIL); within a block the loop runs over tags, each step
    vectorized over all images.

    Args:
        scores: (N, C) float scores.
        labels: (N, C) labels in {1, 0, -1}; -1 entries are left out of their tag's ranking.
        images: optional (N,) bool mask of the images to rank (default: all).

    Returns:
        (ap, has_positive): (C,) float64 APs (0 where a tag has no positive) and a
        (C,) bool mask of tags with at least one positive.
    """
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels)
    num_tags = scores.shape[1]
    ap = np.zeros(num_tags)
    has_positive = np.zeros(num_tags, dtype=bool)

    def rank_block(tags):
        if not tags.size:
            return
        block = slice(tags[0], tags[-1] + 1)
        columns = np.array(scores[:, block].T)
        block_labels = labels[:, block].T
        positives = block_labels == 1
        left_out = block_labels == -1
        if images is not None:
            left_out |= ~images[None, :]
            positives &= images[None, :]
        if left_out.any():
            # Left-out images get -inf: never at or above a positive's finite score.
            np.putmask(columns, left_out, -np.inf)
        for column, is_positive, tag in zip(columns, positives, tags):
            pos = column[is_positive]
            if not pos.size:
                continue
            # Only images scoring at least the lowest positive can rank above a positive.
            ahead = np.sort(column[column >= pos.min()])
            images_at_or_above = ahead.size - np.searchsorted(ahead, pos, side="left")
            positives_at_or_above = pos.size - np.searchsorted(np.sort(pos), pos, side="left")
            ap[tag] = np.mean(positives_at_or_above / images_at_or_above)
            has_positive[tag] = True

    _parallel(rank_block, num_tags)
    return ap, has_positive


def top_k_indices(scores, k):
    """(N, k) indices of each row's k highest scores, best first (lower index on ties)."""
    scores = np.asarray(scores, dtype=np.float32)
    _, indices = ops.top_k(scores, min(int(k), scores.shape[1]))
    return ops.convert_to_numpy(indices)


def _parallel(fn, size):
    """Runs fn over contiguous index blocks of range(size) on all cores."""
    workers = max(1, min(os.cpu_count() or 1, 8))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, np.array_split(np.arange(size), workers * 4)))


def precision_recall_f1(scores, labels, ks=(3, 5), images=None):
    """Micro P/R/F1@K over the images (rows, optionally masked), in percent: {"P@K", "R@K", "F1@K"}."""
    positive = np.asarray(labels) == 1
    hits = np.take_along_axis(positive, top_k_indices(scores, max(ks)), axis=1)
    if images is not None:
        positive, hits = positive[images], hits[images]
    num_images, total_positives = positive.shape[0], positive.sum()
    results = {}
    for k in ks:
        tp = hits[:, :k].sum()
        precision = tp / max(num_images * k, 1)
        recall = tp / max(total_positives, 1)
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        results.update({f"P@{k}": 100 * precision, f"R@{k}": 100 * recall, f"F1@{k}": 100 * f1})
    return results


def _evaluate_subset(scores, labels, ks, empty_tags):
    images = (labels == 1).any(axis=1)
    results = {"num_images": int(images.sum())}
    if not images.any():
        results.update({"mAP": 0.0, **{f"{m}@{k}": 0.0 for k in ks for m in ("P", "R", "F1")}})
        return results
    ap, has_positive = average_precisions(scores, labels, images)
    results["mAP"] = 100 * mean_average_precision(ap, has_positive, empty_tags)
    results["num_empty_tags"] = int((~has_positive).sum())
    results.update({key: float(v) for key, v in precision_recall_f1(scores, labels, ks, images).items()})
    return results


def evaluate_scores(scores, labels, unseen, ks=(3, 5), empty_tags="zero"):
    """ZSL and GZSL tagging and retrieval figures, in percent.

    Args:
        scores: (N, C) scores over the whole vocabulary (seen and unseen tags).
        labels: (N, C) labels in {1, 0, -1}.
        unseen: indices of the unseen tags (the ZSL columns); may be empty.
        ks: the K values of P/R/F1@K.
        empty_tags: how mAP counts a tag without a positive image: "zero" (AP 0, the
            official evaluation) or "skip" (left out of the mean).

    Returns:
        dict with "zsl/mAP", "zsl/P@K", "zsl/R@K", "zsl/F1@K", "zsl/num_images",
        "zsl/num_empty_tags" (evaluated tags without a positive) and the same under
        "gzsl/".
    """
    check_empty_tags(empty_tags)
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (N, C).")
    unseen = np.asarray(unseen, dtype=np.int64).reshape(-1)
    if unseen.size and (unseen.min() < 0 or unseen.max() >= scores.shape[1]):
        raise ValueError(f"unseen indices must lie in [0, {scores.shape[1]}), got {unseen.min()}..{unseen.max()}.")
    ks = tuple(int(k) for k in ks)
    results = {}
    for name, value in _evaluate_subset(scores[:, unseen], labels[:, unseen], ks, empty_tags).items():
        results[f"zsl/{name}"] = value
    for name, value in _evaluate_subset(scores, labels, ks, empty_tags).items():
        results[f"gzsl/{name}"] = value
    return results


def random_scores(shape, seed=0):
    """Scores of a random ranker, the chance level the tables are read against."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def format_table(rows, ks=(3, 5)):
    """The paper's Table 1 layout: one line per (method, ZSL/GZSL) with P/R/F1 at each K and mAP.

    Args:
        rows: mapping method name -> `evaluate_scores` result (a figure it lacks, such as
            the mAP the paper does not report for COCO, prints as "-").
    """

    def cell(result, key):
        return f"{result[key]:.1f}" if key in result else "-"

    header = ["Method", "Task"]
    for k in ks:
        header += [f"P@{k}", f"R@{k}", f"F1@{k}"]
    header.append("mAP")
    lines = [header]
    for method, result in rows.items():
        for task in ("zsl", "gzsl"):
            line = [method, task.upper()]
            for k in ks:
                line += [cell(result, f"{task}/{m}@{k}") for m in ("P", "R", "F1")]
            line.append(cell(result, f"{task}/mAP"))
            lines.append(line)
    return _text_table(lines)


def _text_table(lines):
    """Rows of cells (the first one the header) as an aligned text table."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    rule = "-+-".join("-" * w for w in widths)
    text = [" | ".join(cell.ljust(w) for cell, w in zip(lines[0], widths)), rule]
    text += [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines[1:]]
    return "\n".join(text)


# -- probabilities: thresholds and calibration ------------------------------------------------------
def threshold_precision_recall(probabilities, labels, thresholds, images=None):
    """Per-class and overall precision and recall of the rule p >= threshold, in percent.

    CP, CR: means over the classes (columns) that have a positive among the images of
    per-class precision (0 for a class with no prediction) and recall; CF1 their harmonic
    mean. OP, OR, OF1: the same pooled over all (image, tag) pairs. An unknown (-1) label
    is neither a hit nor a miss.

    Args:
        probabilities, labels: (N, C); thresholds: (C,) or a scalar; images: optional (N,) mask.
    """
    labels = np.asarray(labels)
    predicted = np.asarray(probabilities) >= np.asarray(thresholds, dtype=np.float64)
    if images is not None:
        predicted, labels = predicted[images], labels[images]
    known = labels != -1
    predicted &= known
    positive = labels == 1
    true_positives, predictions, positives = (predicted & positive).sum(0), predicted.sum(0), positive.sum(0)
    classes = positives > 0
    if not classes.any():
        return {name: 0.0 for name in ("CP", "CR", "CF1", "OP", "OR", "OF1")}
    class_precision = np.where(predictions > 0, true_positives / np.maximum(predictions, 1), 0.0)[classes].mean()
    class_recall = (true_positives / np.maximum(positives, 1))[classes].mean()
    overall_precision = true_positives.sum() / max(predictions.sum(), 1)
    overall_recall = true_positives.sum() / max(positives.sum(), 1)

    def f1(p, r):
        return 2 * p * r / (p + r) if p + r > 0 else 0.0

    return {name: 100 * float(value) for name, value in (
        ("CP", class_precision), ("CR", class_recall), ("CF1", f1(class_precision, class_recall)),
        ("OP", overall_precision), ("OR", overall_recall), ("OF1", f1(overall_precision, overall_recall)))}


def threshold_metrics(probabilities, labels, thresholds, unseen):
    """CP/CR/CF1/OP/OR/OF1 (percent) at `thresholds` for ZSL (unseen tags, images with an
    unseen positive) and GZSL (all tags, images with a positive): {"zsl/CP", ..., "gzsl/OF1"}."""
    probabilities, labels = np.asarray(probabilities), np.asarray(labels)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (labels.shape[1],))
    unseen = np.asarray(unseen, dtype=np.int64).reshape(-1)
    results = {}
    for task, columns in (("zsl", unseen), ("gzsl", np.arange(labels.shape[1]))):
        task_labels = labels[:, columns]
        images = (task_labels == 1).any(axis=1)
        figures = threshold_precision_recall(probabilities[:, columns], task_labels, thresholds[columns], images)
        results.update({f"{task}/{name}": value for name, value in figures.items()})
    return results


def reliability_curve(probabilities, labels, bins=15):
    """Equal-width probability bins over [0, 1] of the (image, tag) pairs with a known label:
    {"count", "confidence" (mean probability), "frequency" (fraction positive)}, each (bins,)."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    known = labels != -1
    probabilities, positive = probabilities[known], labels[known] == 1
    which = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins)
    total = np.bincount(which, weights=probabilities, minlength=bins)
    hits = np.bincount(which, weights=positive, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"count": count, "confidence": np.where(count, total / np.maximum(count, 1), np.nan),
                "frequency": np.where(count, hits / np.maximum(count, 1), np.nan)}


def expected_calibration_error(probabilities, labels, bins=15):
    """ECE (a fraction, not percent): sum over equal-width bins of |frequency - confidence|
    weighted by the bin's share of the pairs; pairs with an unknown label are left out."""
    curve = reliability_curve(probabilities, labels, bins)
    count = curve["count"]
    if not count.sum():
        return 0.0
    gaps = np.abs(np.nan_to_num(curve["frequency"]) - np.nan_to_num(curve["confidence"]))
    return float((gaps * count).sum() / count.sum())


def top_k_mask(scores, k):
    """(N, C) bool: each image's k best-scoring tags."""
    scores = np.asarray(scores)
    mask = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(mask, top_k_indices(scores, k), True, axis=1)
    return mask


def calibration_errors(probabilities, scores, labels, unseen, k=10, bins=15):
    """ECE of seen and of unseen tags over the images with a positive (GZSL's): over each
    image's top-k pairs by score (the pairs a tagger shows: "ece/seen@10") and over all
    pairs ("ece/seen", which the many easy negatives pull towards 0)."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    images = (labels == 1).any(axis=1)
    is_unseen = np.zeros(labels.shape[1], dtype=bool)
    is_unseen[np.asarray(unseen, dtype=np.int64)] = True
    top = top_k_mask(scores, k)[images]
    probabilities, labels = probabilities[images], labels[images]
    results = {}
    for name, columns in (("seen", ~is_unseen), ("unseen", is_unseen)):
        pairs = np.broadcast_to(columns, labels.shape)
        results[f"ece/{name}@{k}"] = expected_calibration_error(probabilities[pairs & top], labels[pairs & top], bins)
        results[f"ece/{name}"] = expected_calibration_error(probabilities[pairs], labels[pairs], bins)
        results[f"ece/{name}@{k}/pairs"] = int((pairs & top & (labels != -1)).sum())
    return results


THRESHOLD_METRICS = ("CP", "CR", "CF1", "OP", "OR", "OF1")


def format_threshold_table(rows):
    """The threshold metrics, one line per (probabilities, thresholds, ZSL/GZSL).

    Args:
        rows: dicts with "probabilities", "thresholds" and `threshold_metrics`' figures.
    """
    lines = [["Probabilities", "Thresholds", "Task", *THRESHOLD_METRICS]]
    for row in rows:
        for task in ("zsl", "gzsl"):
            lines.append([row["probabilities"], row["thresholds"], task.upper(),
                          *(f"{row[f'{task}/{m}']:.1f}" for m in THRESHOLD_METRICS)])
    return _text_table(lines)


def format_calibration_table(errors, k=10):
    """Expected calibration errors, one line per kind of probabilities.

    Args:
        errors: mapping probabilities name -> `calibration_errors` result.
    """
    lines = [["Probabilities", f"ECE seen, top-{k}", f"ECE unseen, top-{k}", "ECE seen, all pairs",
              "ECE unseen, all pairs"]]
    for name, figures in errors.items():
        lines.append([name, *(f"{figures[key]:.3f}" for key in (f"ece/seen@{k}", f"ece/unseen@{k}", "ece/seen",
                                                                 "ece/unseen"))])
    return _text_table(lines)

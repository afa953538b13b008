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
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rule = "-+-".join("-" * w for w in widths)
    text = [" | ".join(cell.ljust(w) for cell, w in zip(lines[0], widths)), rule]
    text += [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines[1:]]
    return "\n".join(text)

"""evaluate_scores on a NUS-WIDE-sized test set: 83,898 images x 1006 tags, 81 unseen,
ZSL and GZSL, K = 3 and 5; beside a per-tag loop written the way the official
evaluation helpers compute the same figures (argsort per tag, argsort per image).

    python benchmarks/evaluation.py [--images=83898] [--baseline]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from sdl_keras.evaluation import evaluate_scores  # noqa: E402

flags.DEFINE_integer("images", 83898, "Test images.")
flags.DEFINE_integer("tags", 1006, "Tags (seen + unseen).")
flags.DEFINE_integer("unseen", 81, "Unseen tags (the last ones).")
flags.DEFINE_bool("baseline", True, "Also time the per-tag loop baseline.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions of evaluate_scores.")
FLAGS = flags.FLAGS


def make_inputs(images, tags, seed=0):
    """Scores correlated with sparse labels (about 2.5 positives per image, like NUS-WIDE)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((images, tags), dtype=np.float32) < 2.5 / tags).astype(np.float32)
    scores = rng.standard_normal((images, tags), dtype=np.float32) + 1.5 * labels
    return scores, labels


def loop_baseline(scores, labels, unseen, ks):
    """One tag (and one image) at a time, with full sorts: the official helpers' approach."""

    def subset(s, y):
        keep = (y == 1).any(axis=1)
        s, y = s[keep], y[keep]
        aps = []
        for tag in range(s.shape[1]):
            order = np.argsort(-s[:, tag])
            hits = y[order, tag] == 1
            if hits.any():
                precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
                aps.append(precision[hits].mean())
        result = {"mAP": 100 * np.mean(aps)}
        order = np.argsort(-s, axis=1)
        for k in ks:
            tp = sum((y[i, order[i, :k]] == 1).sum() for i in range(s.shape[0]))
            p, r = tp / (s.shape[0] * k), tp / (y == 1).sum()
            result.update({f"P@{k}": 100 * p, f"R@{k}": 100 * r, f"F1@{k}": 200 * p * r / (p + r)})
        return result

    out = {f"zsl/{k}": v for k, v in subset(scores[:, unseen], labels[:, unseen]).items()}
    out.update({f"gzsl/{k}": v for k, v in subset(scores, labels).items()})
    return out


def main(argv):
    del argv
    scores, labels = make_inputs(FLAGS.images, FLAGS.tags)
    unseen = np.arange(FLAGS.tags - FLAGS.unseen, FLAGS.tags)
    ks = (3, 5)
    times = []
    for _ in range(FLAGS.repeats):
        start = time.perf_counter()
        ours = evaluate_scores(scores, labels, unseen, ks)
        times.append(time.perf_counter() - start)
    rows = [("evaluate_scores (vectorized)", float(np.median(times)), ours)]
    if FLAGS.baseline:
        start = time.perf_counter()
        baseline = loop_baseline(scores, labels, unseen, ks)
        rows.append(("per-tag loop (official approach)", time.perf_counter() - start, baseline))
        gap = max(abs(ours[key] - baseline[key]) for key in baseline)
    print(f"\nevaluate_scores: {FLAGS.images} images x {FLAGS.tags} tags ({FLAGS.unseen} unseen), ZSL + GZSL, "
          f"K={ks}, CPU ({os.cpu_count()} cores)\n")
    print(f"{'implementation':34s} | {'seconds':>7s} | {'ZSL mAP':>7s} | {'GZSL mAP':>8s} | {'GZSL F1@3':>9s}")
    print("-" * 35 + "+" + "-" * 9 + "+" + "-" * 9 + "+" + "-" * 10 + "+" + "-" * 10)
    for name, seconds, result in rows:
        print(f"{name:34s} | {seconds:7.2f} | {result['zsl/mAP']:7.3f} | {result['gzsl/mAP']:8.3f} | "
              f"{result['gzsl/F1@3']:9.3f}")
    if FLAGS.baseline:
        print(f"\nlargest difference between the two over all figures: {gap:.2e} points")


if __name__ == "__main__":
    app.run(main)

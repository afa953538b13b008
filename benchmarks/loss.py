"""SDLLoss forward + backward at the NUS-WIDE training configuration.

B=192 images, M=7 rows, d=300, C=925 seen tags, 1-7 positives per image, XLA-compiled
on this machine's CPU; beside it, the official implementation's algorithm (a PyTorch
loop over images, re-implemented here from its description) when torch is installed.

    python benchmarks/loss.py [--repeats=20]
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_integer("repeats", 20, "Timed repetitions (after warm-up).")
flags.DEFINE_integer("batch", 192, "Images per batch.")
flags.DEFINE_integer("rows", 7, "M.")
flags.DEFINE_integer("dim", 300, "d.")
flags.DEFINE_integer("tags", 925, "Seen tags C.")
FLAGS = flags.FLAGS


def make_inputs(batch, rows, dim, tags, seed=0):
    rng = np.random.default_rng(seed)
    A = (0.1 * rng.standard_normal((batch, rows, dim))).astype(np.float32)
    T = rng.standard_normal((tags, dim)).astype(np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    labels = np.zeros((batch, tags), np.float32)
    for i, count in enumerate(rng.integers(1, 8, size=batch)):
        labels[i, rng.choice(tags, size=count, replace=False)] = 1
    return A, labels, T


def time_ms(fn, repeats):
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times)), float(np.min(times))


def ours(A, labels, T, repeats, jit):
    import tensorflow as tf

    from sdl_keras.losses import SDLLoss, max_positives_needed

    loss = SDLLoss(T, reg_weight=0.3, max_positives=max_positives_needed(labels))
    variable = tf.Variable(A)
    labels = tf.constant(labels)

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            value = loss(labels, variable)
        return value, tape.gradient(value, variable)

    return time_ms(lambda: [t.numpy() for t in step()], repeats), float(step()[0])


def official_loop(A, labels, T, repeats, reg_weight=0.3):
    """The official algorithm: a Python loop over the images of the batch."""
    import torch

    A = torch.tensor(A, requires_grad=True)
    T = torch.tensor(T)
    labels = torch.tensor(labels)

    def step():
        per_image = []
        for i in range(A.shape[0]):
            scores = (A[i] @ T.T).max(dim=0).values
            pos = labels[i] == 1
            s_pos, s_neg = scores[pos], scores[~pos]
            rank = torch.log1p(torch.exp(s_neg[None, :] - s_pos[:, None])).sum()
            weight = 1 + (T[pos].var(dim=0).sum() if pos.sum() > 1 else 0)
            reg = A[i].var(dim=0).sum()
            per_image.append(2 * ((1 - reg_weight) * weight * rank / pos.sum() + reg_weight * reg))
        value = torch.stack(per_image).mean()
        (grad,) = torch.autograd.grad(value, A)
        return value.item(), grad

    return time_ms(step, repeats), step()[0]


def main(argv):
    del argv
    A, labels, T = make_inputs(FLAGS.batch, FLAGS.rows, FLAGS.dim, FLAGS.tags)
    shape = f"B={FLAGS.batch} M={FLAGS.rows} d={FLAGS.dim} C={FLAGS.tags} P<={int(labels.sum(1).max())}"
    rows = []
    (median, best), value = ours(A, labels, T, FLAGS.repeats, jit=True)
    rows.append(("SDLLoss, XLA (jit_compile=True)", median, best, value))
    (median, best), value = ours(A, labels, T, FLAGS.repeats, jit=False)
    rows.append(("SDLLoss, tf.function graph", median, best, value))
    try:
        (median, best), value = official_loop(A, labels, T, max(3, FLAGS.repeats // 5))
        rows.append(("official per-image loop (PyTorch)", median, best, value))
    except ImportError:
        rows.append(("official per-image loop (PyTorch)", float("nan"), float("nan"), float("nan")))
        print("torch is not installed: the official loop is not measured (pip install torch==2.13.0).")
    print(f"\nSDL loss forward + backward, {shape}, CPU ({os.cpu_count()} cores)\n")
    print(f"{'implementation':40s} | {'median ms':>9s} | {'best ms':>8s} | {'loss':>10s}")
    print("-" * 41 + "+" + "-" * 11 + "+" + "-" * 10 + "+" + "-" * 11)
    for name, median, best, value in rows:
        print(f"{name:40s} | {median:9.1f} | {best:8.1f} | {value:10.3f}")


if __name__ == "__main__":
    app.run(main)

"""Training speed of the full SDL step (model, SDLLoss, SDLMetrics, LossParts, AdamW) per
strategy, XLA mode and precision, on this machine.

    python benchmarks/train_step.py                         # the demo model and TResNet-M, every mode
    python benchmarks/train_step.py --models=demo --steps=20

Each configuration runs in its own process (logical devices, TF_XLA_FLAGS and the
dtype policy are per process): `training.build_compiled_model` on random uint8 images
and labels fed by tf.data (from memory, so the step, not decoding, is measured), under
  default   one device, XLA off / jit (the whole step) / auto_clustering;
  mirrored  MirroredStrategy over two logical CPU devices (the host's cores shared),
            off / auto_clustering / jit (which XLA rejects: reported as the error).
"XLA programs" counts the XLA modules compiled (from --xla_dump_to): 1 for jit, one per
auto-clustered subgraph otherwise. "first" is the time to the end of the first step
(tracing, compilation). The table is printed at the end; figures depend on the host.
"""

import contextlib
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_list("models", ["demo", "tresnet_m"], "demo (small_cnn, 48 px) and/or tresnet_m (224 px).")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16", "mixed_float16"], "Precision policies.")
flags.DEFINE_integer("steps", 10, "Timed steps (after the first, untimed).")
flags.DEFINE_integer("tresnet_steps", 3, "Timed steps for TResNet-M.")
flags.DEFINE_integer("timeout", 1200, "Seconds per configuration.")
flags.DEFINE_string("child", None, "Internal: run one configuration (JSON) and print its result.")
FLAGS = flags.FLAGS

MODELS = {
    # backbone, image size, global batch, tags, word-vector size
    "demo": ("small_cnn", 48, 64, 32, 64),
    "tresnet_m": ("tresnet_m", 224, 8, 925, 300),
}


def configurations(models, precisions):
    for model in models:
        for precision in precisions:
            for xla in ("off", "jit", "auto_clustering"):
                yield {"model": model, "strategy": "default", "xla": xla, "precision": precision}
        if model == "demo":
            for xla in ("off", "auto_clustering", "jit"):
                yield {"model": model, "strategy": "mirrored", "xla": xla, "precision": "float32"}


WARMUP = 2  # untimed steps: the first traces and compiles


class StepClock(keras.callbacks.Callback):
    """The time of each training step's end, so neither `fit`'s set-up nor compilation is timed."""

    def on_train_begin(self, logs=None):
        self.start, self.ends = time.perf_counter(), []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def run_child(spec, steps):
    """Runs inside the child process: one configuration, timed."""
    import numpy as np
    import tensorflow as tf

    if spec["strategy"] == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from sdl_keras import training
    from sdl_keras.config import TrainConfig
    from sdl_keras.training import distribute
    from sdl_keras.embeddings import TagVocabulary

    backbone, size, batch, tags, dim = MODELS[spec["model"]]
    rng = np.random.default_rng(0)
    vocabulary = TagVocabulary([f"tag{i}" for i in range(tags)], rng.standard_normal((tags, dim)))
    config = TrainConfig.from_flat(backbone=backbone, image_size=size, num_rows=7, batch_size=batch,
                                  precision=spec["precision"], strategy=spec["strategy"])
    images = rng.integers(0, 256, (batch, size, size, 3)).astype(np.uint8)
    labels = (rng.random((batch, tags)) < 3.0 / tags).astype(np.float32)
    labels[:, 0] = 1.0
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    strategy = distribute.select_strategy(spec["strategy"])
    if spec["xla"] == "jit" and spec["strategy"] != "default":
        # What distribute.resolve_xla_mode refuses, run anyway to record XLA's own error.
        mode = contextlib.nullcontext("jit")
    else:
        mode = distribute.xla_mode(spec["xla"], strategy)
    with mode as xla:
        with strategy.scope():
            model = training.build_compiled_model(config, vocabulary, max_positives=int(labels.sum(1).max()),
                                                  total_steps=1000, jit_compile=xla == "jit")
        if spec["strategy"] != "default":
            distribute.prepare_for_fit(model, strategy, (images[:1], labels[:1]))
            distribute.synchronize_batch_norm(model)
        clock = StepClock()
        model.fit(dataset, steps_per_epoch=WARMUP + steps, epochs=1, verbose=0, callbacks=[clock])
    first = clock.ends[0] - clock.start
    seconds = clock.ends[-1] - clock.ends[WARMUP - 1]
    return {"first_s": first, "steps_per_s": steps / seconds, "images_per_s": steps * batch / seconds}


def measure(spec, steps):
    """Runs one configuration in a child process; the result row."""
    with tempfile.TemporaryDirectory() as dump:
        env = dict(os.environ, TF_XLA_FLAGS="--tf_xla_cpu_global_jit", XLA_FLAGS=f"--xla_dump_to={dump}")
        try:
            process = subprocess.run(
                [sys.executable, os.path.abspath(__file__), f"--child={json.dumps(spec)}", f"--steps={steps}"],
                env=env, capture_output=True, text=True, timeout=FLAGS.timeout,
            )
        except subprocess.TimeoutExpired:
            return dict(spec, programs=0, error=f"timed out after {FLAGS.timeout} s")
        programs = {os.path.basename(p).split(".")[0] for p in glob.glob(os.path.join(dump, "*before_optimizations*"))}
    row = dict(spec, programs=len(programs))
    lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    if process.returncode or not lines:
        row["error"] = _error_summary(process.stderr)
    else:
        row.update(json.loads(lines[-1][len("RESULT "):]))
    return row


def _error_summary(stderr):
    """The message of the child's last exception, shortened (resource paths elided)."""
    messages = [line.strip() for line in stderr.splitlines()
                if re.match(r"^\w+(Error|Exception)\b", line.strip()) or line.startswith("Trying to access resource")]
    message = messages[-1] if messages else stderr.strip().splitlines()[-1]
    return re.sub(r" \(defined @ [^)]*\)", "", message).replace("/job:localhost/replica:0/task:0/device:", "")[:150]


def format_table(rows):
    header = ("model", "strategy", "XLA", "precision", "images/s", "steps/s", "first (s)", "XLA programs")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            figures = [f"fails: {row['error']}", "", "", ""]
        else:
            figures = [f"{row['images_per_s']:.1f}", f"{row['steps_per_s']:.2f}", f"{row['first_s']:.1f}",
                       str(row["programs"])]
        lines.append("| " + " | ".join([row["model"], row["strategy"], row["xla"], row["precision"], *figures]) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.child:
        print("RESULT " + json.dumps(run_child(json.loads(FLAGS.child), FLAGS.steps)))
        return
    rows = []
    for spec in configurations(FLAGS.models, FLAGS.precisions):
        steps = FLAGS.tresnet_steps if spec["model"] == "tresnet_m" else FLAGS.steps
        rows.append(measure(spec, steps))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nCPU: {os.cpu_count()} cores; demo = small_cnn 48 px batch 64, tresnet_m = 224 px batch 8.\n")
    print(format_table(rows))


if __name__ == "__main__":
    app.run(main)

"""Backbone speed: inference and training-step images/s of the SDL model on this machine.

    python benchmarks/backbone.py                                  # TResNet-M, 224 px, batch 32
    python benchmarks/backbone.py --backbones=tresnet_m,resnet50 --batch_size=16 --jit_compile

Inference is `model.predict_on_batch` (compiled), training one `train_on_batch` step
(Adam, a squared-error loss on A: the backbone dominates the cost). Both run on
random uint8-range images after --warmup untimed batches, and print a table. Runs on
whatever Keras backend KERAS_BACKEND names (the code is keras.ops only).
Published anchors (Ridnik et al. 2021, V100, mixed precision): TResNet-M 2,930 img/s
inference and 730 img/s training.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from sdl_keras.models import build_sdl_model  # noqa: E402

flags.DEFINE_list("backbones", ["tresnet_m"], "Backbone names (sdl_keras.models.backbones).")
flags.DEFINE_integer("image_size", 224, "Square input size.")
flags.DEFINE_integer("batch_size", 32, "Images per batch.")
flags.DEFINE_integer("warmup", 1, "Untimed batches first (compilation).")
flags.DEFINE_integer("steps", 3, "Timed batches.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile (TensorFlow) / jit (JAX) the steps.")
flags.DEFINE_bool("mixed_precision", False, "mixed_float16 (on GPUs).")
flags.DEFINE_bool("train", True, "Also time training steps.")
FLAGS = flags.FLAGS


def _images_per_second(step, batch, warmup, steps):
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - start)


def measure(backbone, image_size, batch_size, warmup, steps, jit_compile, train):
    model = build_sdl_model(backbone, num_rows=7, embed_dim=300, image_size=image_size)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size, image_size, image_size, 3)).astype("float32")
    targets = rng.normal(size=(batch_size, 7, 300)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="mse", jit_compile=jit_compile)
    infer = _images_per_second(lambda: model.predict_on_batch(images), batch_size, warmup, steps)
    fit = None
    if train:
        fit = _images_per_second(lambda: model.train_on_batch(images, targets), batch_size, warmup, steps)
    return model.count_params(), infer, fit


def main(argv):
    del argv
    if FLAGS.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    print(f"backend={keras.backend.backend()} devices={_devices()} image_size={FLAGS.image_size} "
          f"batch={FLAGS.batch_size} jit_compile={FLAGS.jit_compile} mixed_precision={FLAGS.mixed_precision} "
          f"cpus={os.cpu_count()}")
    print(f"| {'backbone':<18} | {'params (M)':>10} | {'inference img/s':>15} | {'train img/s':>11} |")
    print(f"|{'-' * 20}|{'-' * 12}|{'-' * 17}|{'-' * 13}|")
    for backbone in FLAGS.backbones:
        params, infer, fit = measure(backbone, FLAGS.image_size, FLAGS.batch_size, FLAGS.warmup, FLAGS.steps,
                                     FLAGS.jit_compile, FLAGS.train)
        fit_text = f"{fit:11.1f}" if fit is not None else f"{'-':>11}"
        print(f"| {backbone:<18} | {params / 1e6:10.2f} | {infer:15.1f} | {fit_text} |", flush=True)


def _devices():
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return ",".join(d.device_type for d in tf.config.list_physical_devices()) or "cpu"
    if backend == "jax":
        import jax

        return ",".join(str(d) for d in jax.devices())
    return "?"


if __name__ == "__main__":
    app.run(main)

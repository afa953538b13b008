"""The decode modes of pipelines/decode.py against PIL, on the six NUS-WIDE photos in
../shared/reference/images (the official inference example's): for each mode, the mean
absolute difference in grey levels from PIL's `Image.open(...).convert("RGB").resize`
with BILINEAR (the official train.py's torchvision `Resize`) and with BICUBIC
(`Image.resize`'s default, the official infer.py), and the decode + resize throughput.

    python benchmarks/decode.py [--image_size=224] [--repeats=20]
"""

import io
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_string("images", None, "Folder of photos; default ../shared/reference/images.")
flags.DEFINE_integer("image_size", 224, "The model's input size.")
flags.DEFINE_integer("repeats", 20, "Timed passes over the photos (after a warm-up pass).")
FLAGS = flags.FLAGS

# The PIL filter each mode mirrors; "fast" mirrors none (it is compared with both).
MIRRORS = {"fast": None, "pil_bilinear": "BILINEAR", "pil_bicubic": "BICUBIC"}


def pil_reference(data, size, filter_name):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB").resize((size, size), getattr(Image, filter_name)), np.float64)


def main(argv):
    del argv
    import tensorflow as tf

    from pipelines.decode import MODES, decode_images

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    folder = FLAGS.images or os.path.normpath(os.path.join(root, "..", "shared", "reference", "images"))
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    photos = [open(os.path.join(folder, n), "rb").read() for n in names]
    size = FLAGS.image_size
    references = {f: [pil_reference(p, size, f) for p in photos] for f in ("BILINEAR", "BICUBIC")}
    batch = tf.constant(photos)
    print(f"{len(photos)} photos of {folder} ({', '.join(n[:12] for n in names)}), resized to {size}x{size}; "
          f"TensorFlow {tf.__version__}.\n")
    print("| mode | mirrors | MAD vs PIL BILINEAR (mean, max over photos) | MAD vs PIL BICUBIC (mean, max) "
          "| decode + resize, images/s |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        decode = tf.function(lambda images, mode=mode: decode_images(images, size, "none", mode))
        decoded = decode(batch).numpy().astype(np.float64)
        cells = []
        for filter_name in ("BILINEAR", "BICUBIC"):
            per_photo = [np.abs(d - r).mean() for d, r in zip(decoded, references[filter_name])]
            cell = f"{np.mean(per_photo):.3f}, {np.max(per_photo):.3f}"
            cells.append(f"**{cell}**" if MIRRORS[mode] == filter_name else cell)
        start = time.perf_counter()
        for _ in range(FLAGS.repeats):
            decode(batch).numpy()
        rate = FLAGS.repeats * len(photos) / (time.perf_counter() - start)
        print(f"| {mode} | {MIRRORS[mode] or '-'} | {cells[0]} | {cells[1]} | {rate:,.0f} |")
    for filter_name in ("BILINEAR", "BICUBIC"):
        start = time.perf_counter()
        for _ in range(FLAGS.repeats):
            for photo in photos:
                pil_reference(photo, size, filter_name)
        rate = FLAGS.repeats * len(photos) / (time.perf_counter() - start)
        print(f"| PIL itself, one image at a time | {filter_name} | - | - | {rate:,.0f} |")
    print("\nBold: the PIL filter the mode mirrors (target: mean absolute difference < 0.5 grey levels).")


if __name__ == "__main__":
    app.run(main)

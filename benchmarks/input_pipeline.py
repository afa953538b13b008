"""Input pipeline throughput: decode + resize to 224 + batch, per CPU core.

Generates NUS-WIDE-sized (240 x 180, Flickr's "medium" size) and COCO-sized (640 x 480)
JPEGs, then measures in one run, alternating rounds:
  pil       a plain PIL + NumPy loader, one image at a time: open, convert("RGB"),
            resize((224, 224), BILINEAR), np.asarray, np.stack per batch (the official
            PyTorch code's approach, without the framework around it)
  tf files  pipelines.files.image_label_dataset over the image files
  tf records pipelines.tfrecord.records.tfrecord_dataset over TFRecord shards of the same images
  tf records checked  the same from the shards' RecordSet, as training reads them: each shard's
            records counted against its conversion's count (a damaged shard is skipped and counted)
The tf.data pipelines are built with repeat=True, as sdl_keras.training's are, and each
measurement reads several passes through one iterator: a new iterator per pass would
add TensorFlow's function instantiation (tens of ms) to every pass of a few hundred
images, where a real epoch amortizes it over a hundred thousand. The CPU time counted
runs until the iterator is deleted, so work prefetched beyond the images counted is
charged to its pipeline, not to the next loader measured.
Per-core figures are images per CPU-second (user + sys) of the loader: over all of this
process's threads for tf.data; for PIL, of the thread of a separate process without
TensorFlow, which does all its work there. So they hold on a shared machine and compare a one-thread loader with a pipeline
that uses every core; wall-clock images/s are shown beside them.

  python benchmarks/input_pipeline.py [--images=400] [--rounds=3]
"""

import gc
import multiprocessing
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from PIL import Image  # noqa: E402

flags.DEFINE_integer("images", 400, "JPEGs generated per image size.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds; each loader's best is kept.")
flags.DEFINE_integer("passes", 4, "Passes over the images per measurement.")
FLAGS = flags.FLAGS

IMAGE_SIZE = 224
BATCH = 64
SIZES = {"NUS-WIDE 240x180": (240, 180), "COCO 640x480": (640, 480)}


def photo_like(width, height, rng):
    """Smooth shapes plus fine texture: JPEG sizes like real photos' (~1.5 bits per pixel)."""
    coarse = rng.integers(0, 256, (height // 24 + 2, width // 24 + 2, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    image = image + rng.normal(0, 6, (height, width, 1)).astype(np.int16)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def make_images(folder, size, count, seed):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"{i:05d}.jpg")
        photo_like(*size, rng).save(path, quality=90)
        paths.append(path)
    return paths


def pil_loader(paths):
    for start in range(0, len(paths), BATCH):
        batch = []
        for path in paths[start:start + BATCH]:
            with Image.open(path) as image:
                batch.append(np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)))
        yield np.stack(batch)


def measure(make_batches, images, clock=time.process_time):
    """(images per wall second, images per CPU second) reading `images` images from a
    new iterator `make_batches()`; `clock` tells the CPU time."""
    gc.collect()
    count = 0
    wall, cpu = time.perf_counter(), clock()
    batches = make_batches()
    while count < images:
        count += int(next(batches).shape[0])
    wall = time.perf_counter() - wall
    del batches
    time.sleep(0.5)  # lets a deleted pipeline's threads finish, on this loader's account
    return count / wall, count / (clock() - cpu)


def pil_batches(paths):
    while True:
        yield from pil_loader(paths)


def measure_pil(paths, images):
    # PIL works in the calling thread only, so that thread's CPU time is the loader's.
    return measure(lambda: pil_batches(paths), images, time.thread_time)


def main(argv):
    del argv
    # The PIL loader runs in its own process, started before TensorFlow is imported, as a
    # PyTorch DataLoader worker would: in a process that has loaded TensorFlow, the same
    # loop measured about 7% slower here.
    pil_process = multiprocessing.get_context("spawn").Pool(1)
    import tensorflow as tf

    from pipelines import files
    from pipelines.readers.manifest import LabeledImages
    from pipelines.tfrecord import convert, records
    from pipelines.tfrecord.format import shard_pattern

    cores = os.cpu_count()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name, size in SIZES.items():
            folder = os.path.join(root, name.split()[0])
            os.makedirs(folder)
            paths = make_images(folder, size, FLAGS.images, seed=len(rows))
            labels = np.zeros((len(paths), 1006), np.float32)
            images = LabeledImages(paths, [str(i) for i in range(len(paths))], labels)
            record_dir = os.path.join(folder, "records")
            convert.convert(images, record_dir, "train", num_shards=8)
            mean_kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
            from_files = files.image_label_dataset(paths, labels, IMAGE_SIZE, BATCH, repeat=True)
            from_records = records.tfrecord_dataset(
                shard_pattern(record_dir, "train"), labels.shape[1], IMAGE_SIZE, BATCH, repeat=True,
                deterministic=False,
            )
            record_set = records.open_record_set(record_dir, "train")
            from_checked = records.tfrecord_dataset(
                record_set, labels.shape[1], IMAGE_SIZE, BATCH, repeat=True, deterministic=False,
                unreadable=records.UnreadableRecordCounter(record_set),
            )
            # Each measures `images` images and returns (wall, per core).
            methods = {
                "pil": lambda images: pil_process.apply(measure_pil, (paths, images)),
                "tf files": lambda images: measure(lambda: (x for x, _ in from_files), images),
                "tf records": lambda images: measure(lambda: (x for x, _ in from_records), images),
                "tf records checked": lambda images: measure(lambda: (x for x, _ in from_checked), images),
            }
            for method in methods.values():  # warm-up: graph tracing, file cache
                method(len(paths))
            best = {key: (0.0, 0.0) for key in methods}
            for _ in range(FLAGS.rounds):
                for key, method in methods.items():
                    best[key] = max(best[key], method(FLAGS.passes * len(paths)), key=lambda r: r[1])
            for key in methods:
                rows.append((name, f"{mean_kb:.0f} KB", key, *best[key], best[key][1] / best["pil"][1]))

    print(f"\nDecode + resize to {IMAGE_SIZE} + batch {BATCH}; {FLAGS.images} JPEGs per size (quality 90); "
          f"{cores} CPU cores; TensorFlow {tf.__version__}; best of {FLAGS.rounds} rounds.\n")
    header = ("images", "mean file", "loader", "images/s (wall)", "images/s per core", "per core vs PIL")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, kb, key, wall, per_core, ratio in rows:
        print(f"| {name} | {kb} | {key} | {wall:,.0f} | {per_core:,.0f} | {ratio:.2f}x |")
    pil_process.close()


if __name__ == "__main__":
    app.run(main)

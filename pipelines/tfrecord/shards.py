"""A conversion's shards, shared by the converter of this process (convert.py) and the
Apache Beam one (beam.py): which images each shard holds, the bytes stored for an image,
writing a shard and its progress entry, finding on a rerun the shards already finished,
and the summary (SPLIT-info.json).

Each image is validated with the decoder training uses, so a record set holds no
unreadable image: missing, zero-byte, truncated or corrupt files are skipped and listed
(or, with `strict`, the first is an error naming it); formats TensorFlow cannot decode
(TIFF, ...) are decoded with Pillow and stored as JPEG.

Resuming: shard k holds images [k N / S, (k + 1) N / S) of the input, so a shard's
content does not depend on the others or on who writes it. Each shard is written under a
temporary name and renamed when complete, then recorded in SPLIT-progress.jsonl with its
size; a rerun skips the shards listed there whose files have that size, rewrites the others
and never leaves a partial shard under a final name. SPLIT-conversion.json pins the
settings, so a restart with different ones is refused instead of mixing two conversions.

Statistics: each progress entry also records its shard's largest number of positive
tags in one image (`max_positives`) and, when the converter is told the unseen
columns, the same over the seen tags (`max_seen_positives`), the images with an
unseen positive (`unseen_positive_images`) and which columns were unseen
(`unseen_sha1`), so training from the records sizes its loss without reading them
(pipelines/tfrecord/records.py).
"""

import dataclasses
import hashlib
import io
import json
import logging
import os

import numpy as np
import tensorflow as tf

from pipelines.decode import UnreadableImageError
from pipelines.tfrecord.format import (
    columns_sha1,
    finished_shards,
    positives_statistics,
    shard_path,
    shard_pattern,
)

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95
DEFAULT_IMAGES_PER_SHARD = 1024


def _resize_to(image, max_side):
    height, width = image.shape[0], image.shape[1]
    scale = max_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = tf.image.resize(image, size, antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def prepare_image(path, max_side=None):
    """The bytes to store for an image file: its own bytes if it is a JPEG that
    TensorFlow decodes (and no side exceeds `max_side`), else a JPEG re-encoding.

    Raises:
        UnreadableImageError: missing, zero-byte, or not decodable.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UnreadableImageError(path, e.strerror or type(e).__name__) from None
    if not data:
        raise UnreadableImageError(path, "zero-byte file")
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        decodable = True
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        # TensorFlow has no TIFF (or other rarer) decoder; Pillow has, and is as strict
        # about truncated files. What it decodes is stored re-encoded.
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as opened:
                image = tf.constant(np.asarray(opened.convert("RGB")))
        except UnidentifiedImageError:
            # Pillow's message names its in-memory buffer's address: noise, and never the same twice.
            raise UnreadableImageError(path, "cannot decode (neither TensorFlow nor Pillow reads its format)") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise UnreadableImageError(path, f"cannot decode ({e})") from None
        decodable = False
    too_big = max_side and max(image.shape[0], image.shape[1]) > max_side
    if decodable and data[:3] == b"\xff\xd8\xff" and not too_big:
        return data
    if too_big:
        image = _resize_to(image, max_side)
    return tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy()


@dataclasses.dataclass
class ConversionSummary:
    """What a conversion wrote: examples per shard, the images it skipped (path, reason)
    and the positives statistics (`positives_statistics`)."""

    split: str
    num_shards: int
    num_examples: int
    skipped: list
    files: list
    statistics: dict = dataclasses.field(default_factory=dict)


def _fingerprint(ids):
    sha = hashlib.sha1()
    for image_id in ids:
        sha.update(str(image_id).encode("utf-8") + b"\0")
    return sha.hexdigest()


def _atomic_write_json(path, value):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _check_settings(path, settings):
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
        differ = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if differ:
            raise ValueError(
                f"{path}: the output folder holds a conversion with other settings ({', '.join(differ)} "
                "differ); use another output folder, or delete this one to start over."
            )
    else:
        _atomic_write_json(path, settings)


def write_shard(path, examples):
    """Writes serialized examples under a temporary name, then renames: a shard file
    under its final name is always complete. Returns its size in bytes."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for example in examples:
                writer.write(example)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return os.path.getsize(path)


def append_progress(path, entry):
    """Appends a finished shard's entry to SPLIT-progress.jsonl in one write: lines of
    several processes (Beam's workers) interleave whole."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _end_torn_line(path):
    """Ends a progress line a kill tore, so the entries appended next stand on lines of their own."""
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _verified(entry, path):
    """Whether a shard the progress file lists is complete on disk: its size is the one
    recorded (or, for entries without one, its records are counted)."""
    if not os.path.exists(path):
        return False
    if "bytes" in entry:
        return os.path.getsize(path) == int(entry["bytes"])
    try:
        return sum(1 for _ in tf.data.TFRecordDataset(path)) == int(entry["written"])
    except tf.errors.DataLossError:
        return False


@dataclasses.dataclass
class ConversionPlan:
    """What a conversion is to do: its pinned settings, the shards' image ranges (shard k
    holds images [bounds[k], bounds[k + 1])) and the shards already written and verified."""

    output_dir: str
    split: str
    settings: dict
    bounds: list
    done: dict
    unseen: np.ndarray

    @property
    def num_shards(self):
        return len(self.bounds) - 1

    @property
    def progress_path(self):
        return os.path.join(self.output_dir, f"{self.split}-progress.jsonl")

    def shard_path(self, k):
        return shard_path(self.output_dir, self.split, k, self.num_shards)

    def todo(self):
        return [k for k in range(self.num_shards) if k not in self.done]

    def new_entry(self, k):
        entry = {"shard": k, "written": 0, "skipped": [], "max_positives": 0}
        if self.unseen is not None:
            entry.update(max_seen_positives=0, unseen_positive_images=0, unseen_sha1=columns_sha1(self.unseen))
        return entry

    def count(self, entry, row):
        """Counts one written record's label row into its shard's entry."""
        entry["written"] += 1
        _count_positives(entry, np.asarray(row), self.unseen)


def plan_conversion(images, output_dir, split, num_shards=None, images_per_shard=DEFAULT_IMAGES_PER_SHARD,
                    max_side=None, metadata=None, unseen=None):
    """The ConversionPlan of `convert`'s arguments: checks them, pins the settings (a restart
    with other ones is refused), removes a killed run's partial files and finds the
    finished shards (listed in SPLIT-progress.jsonl and verified on disk)."""
    total = len(images)
    if total == 0:
        raise ValueError(f"No images to convert for split {split!r}.")
    num_shards = max(1, min(num_shards or -(-total // images_per_shard), total))
    num_classes = int(images.labels.shape[1])
    if unseen is not None:
        unseen = np.asarray(sorted({int(c) for c in unseen}), dtype=np.int64)
        if unseen.size and not (0 <= unseen[0] and unseen[-1] < num_classes):
            raise ValueError(f"Unseen columns must lie in [0, {num_classes}), got {unseen.tolist()[:10]}...")
    os.makedirs(output_dir, exist_ok=True)
    settings = {
        "split": split,
        "num_images": total,
        "num_classes": num_classes,
        "num_shards": num_shards,
        "max_side": max_side,
        "image_ids_sha1": _fingerprint(images.ids),
        **(metadata or {}),
    }
    _check_settings(os.path.join(output_dir, f"{split}-conversion.json"), settings)
    for name in os.listdir(output_dir):
        if name.startswith(f"{split}-") and ".tmp-" in name:
            os.remove(os.path.join(output_dir, name))  # partial files of a killed run
    plan = ConversionPlan(output_dir, split, settings, [total * k // num_shards for k in range(num_shards + 1)], {},
                          unseen)
    _end_torn_line(plan.progress_path)
    plan.done = {k: v for k, v in finished_shards(plan.progress_path).items() if _verified(v, plan.shard_path(k))}
    if plan.done:
        logger.info("Resuming %s: %d of %d shards already written.", split, len(plan.done), num_shards)
    return plan


def finish_conversion(plan):
    """The ConversionSummary of a plan's finished shards (re-read from the progress file),
    also written to SPLIT-info.json."""
    done = {k: v for k, v in finished_shards(plan.progress_path).items() if k < plan.num_shards}
    summary = ConversionSummary(
        split=plan.split,
        num_shards=plan.num_shards,
        num_examples=sum(entry["written"] for entry in done.values()),
        skipped=[item for k in sorted(done) for item in done[k]["skipped"]],
        files=[plan.shard_path(k) for k in range(plan.num_shards)],
        statistics=positives_statistics(done.values()),
    )
    _atomic_write_json(
        os.path.join(plan.output_dir, f"{plan.split}-info.json"),
        {
            **plan.settings,
            "num_examples": summary.num_examples,
            "pattern": os.path.basename(shard_pattern(plan.output_dir, plan.split)),
            **summary.statistics,
            "skipped": summary.skipped,
        },
    )
    return summary


def _count_positives(entry, row, unseen):
    positive = row == 1
    count = int(positive.sum())
    entry["max_positives"] = max(entry["max_positives"], count)
    if unseen is not None:
        unseen_count = int(positive[unseen].sum()) if unseen.size else 0
        entry["max_seen_positives"] = max(entry["max_seen_positives"], count - unseen_count)
        entry["unseen_positive_images"] += int(unseen_count > 0)

"""TFRecord shards of (encoded image, label vector, image id): the record format and a
resumable, sharded converter.

Record (tf.train.Example) features:
  image/encoded      JPEG bytes (other formats are re-encoded at conversion, so the
                     reader can always decode with libjpeg's fast paths)
  image/id           the dataset's image id
  label/num_classes  C, checked against the reader's vocabulary size
  label/default      the value of every tag not listed below: 0 (fully annotated
                     data) or -1 (partially annotated data)
  label/positive, label/negative, label/unknown
                     indices of the tags whose label is 1, 0 and -1, whichever are
                     not the default: a 7,586-tag Open Images row takes a few dozen
                     integers, and any {1, 0, -1} row round-trips exactly.

Conversion validates each image with the decoder training uses, so a record set holds
no unreadable image: missing, zero-byte, truncated or corrupt files are skipped and
listed (or, with `strict`, the first is an error naming it); formats TensorFlow cannot
decode (TIFF, ...) are decoded with Pillow and stored as JPEG.

Resuming: shard k holds images [k N / S, (k + 1) N / S) of the input, so a shard's
content does not depend on the others. Each shard is written under a temporary name
and renamed when complete, then recorded in SPLIT-progress.jsonl; a killed conversion
restarts without redoing finished shards and never leaves a partial shard under a
final name. SPLIT-conversion.json pins the settings, so a restart with different
ones is refused instead of mixing two conversions.
"""

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import logging
import os

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

JPEG_QUALITY = 95
DEFAULT_IMAGES_PER_SHARD = 1024
_LABEL_KEYS = (("label/positive", 1.0), ("label/negative", 0.0), ("label/unknown", -1.0))
FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "label/num_classes": tf.io.FixedLenFeature([], tf.int64),
    "label/default": tf.io.FixedLenFeature([], tf.float32),
    **{key: tf.io.VarLenFeature(tf.int64) for key, _ in _LABEL_KEYS},
}


class UnreadableImageError(ValueError):
    """An image file that cannot be read or decoded; the message names the file."""

    def __init__(self, path, reason):
        super().__init__(f"Unreadable image {path}: {reason}")
        self.path = path
        self.reason = reason


def _int64s(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def make_example(image_bytes, image_id, labels):
    """A serialized tf.train.Example for one image and its (C,) label row in {1, 0, -1}."""
    labels = np.asarray(labels, dtype=np.float32)
    values, counts = np.unique(labels, return_counts=True)
    if not np.isin(values, (1.0, 0.0, -1.0)).all():
        raise ValueError(f"Image {image_id}: labels must be 1, 0 or -1, got {sorted(set(values.tolist()))}.")
    # The most frequent value is the default, so only the exceptions are stored.
    default = 0.0 if not counts.size else float(values[np.argmax(counts)])
    feature = {
        "image/encoded": _bytes(image_bytes),
        "image/id": _bytes(str(image_id).encode("utf-8")),
        "label/num_classes": _int64s([labels.size]),
        "label/default": tf.train.Feature(float_list=tf.train.FloatList(value=[default])),
    }
    for key, value in _LABEL_KEYS:
        feature[key] = _int64s([] if value == default else np.flatnonzero(labels == value))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse_labels(serialized, num_classes):
    """A batch of serialized records (B,) -> (B, C) float32 labels; graph-safe. Parsing a
    whole batch at once costs far less per record than one record at a time."""
    features = tf.io.parse_example(serialized, {k: v for k, v in FEATURES.items() if k.startswith("label/")})
    check = tf.debugging.assert_equal(
        features["label/num_classes"],
        tf.constant(num_classes, tf.int64),
        message=f"A record's label/num_classes differs from the {num_classes} tags of the vocabulary",
    )
    with tf.control_dependencies([check]):
        labels = tf.tile(features["label/default"][:, None], [1, num_classes])
    for key, value in _LABEL_KEYS:
        indices = features[key]  # SparseTensor: indices (row, position), values tag index
        where = tf.stack([indices.indices[:, 0], indices.values], axis=1)
        labels = tf.tensor_scatter_nd_update(labels, where, tf.fill(tf.shape(indices.values), value))
    return labels


def parse_image(serialized):
    """The encoded image of one serialized record."""
    return tf.io.parse_single_example(serialized, {"image/encoded": FEATURES["image/encoded"]})["image/encoded"]


def parse_example(serialized, num_classes):
    """One serialized record -> (encoded image bytes, (C,) float32 labels, image id)."""
    features = tf.io.parse_single_example(serialized, {k: FEATURES[k] for k in ("image/encoded", "image/id")})
    labels = parse_labels(serialized[None], num_classes)[0]
    return features["image/encoded"], labels, features["image/id"]


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
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise UnreadableImageError(path, f"cannot decode ({e})") from None
        decodable = False
    too_big = max_side and max(image.shape[0], image.shape[1]) > max_side
    if decodable and data[:3] == b"\xff\xd8\xff" and not too_big:
        return data
    if too_big:
        image = _resize_to(image, max_side)
    return tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy()


def shard_path(output_dir, split, index, num_shards):
    return os.path.join(output_dir, f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord")


def shard_pattern(output_dir, split):
    """The glob of a split's shards, for pipelines.data.tfrecord_dataset."""
    return os.path.join(output_dir, f"{split}-?????-of-?????.tfrecord")


@dataclasses.dataclass
class ConversionSummary:
    """What a conversion wrote: examples per shard and the images it skipped (path, reason)."""

    split: str
    num_shards: int
    num_examples: int
    skipped: list
    files: list


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


def _finished_shards(progress_path):
    done = {}
    if os.path.exists(progress_path):
        with open(progress_path, encoding="utf-8") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a kill: that shard is simply redone
                done[int(entry["shard"])] = entry
    return done


def _write_shard(path, examples):
    """Writes serialized examples under a temporary name, then renames: a shard file
    under its final name is always complete."""
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


def convert(
    images,
    output_dir,
    split,
    num_shards=None,
    images_per_shard=DEFAULT_IMAGES_PER_SHARD,
    max_side=None,
    strict=False,
    workers=4,
    progress=None,
    metadata=None,
):
    """Writes `images` (LabeledImages; `labels` may be any row-indexable (N, C) matrix,
    such as open_images.SparseRows) as TFRecord shards in `output_dir`.

    Args:
        num_shards: how many shards; default ceil(N / images_per_shard).
        max_side: re-encode images whose longer side exceeds this, scaled down to it.
        strict: the first unreadable image raises UnreadableImageError.
        workers: threads reading and validating images (decoding releases the GIL).
        progress: called as progress(images_done, total) after each shard.
        metadata: a JSON-able dict (e.g. dataset, source, tag-list digest) pinned with
            the settings, so a restart on other data is refused, and kept in the info file.

    Returns:
        ConversionSummary (including shards finished by an earlier, interrupted run).
    """
    total = len(images)
    if total == 0:
        raise ValueError(f"No images to convert for split {split!r}.")
    num_shards = max(1, min(num_shards or -(-total // images_per_shard), total))
    num_classes = int(images.labels.shape[1])
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
    progress_path = os.path.join(output_dir, f"{split}-progress.jsonl")
    done = {
        k: v
        for k, v in _finished_shards(progress_path).items()
        if os.path.exists(shard_path(output_dir, split, k, num_shards))
    }
    bounds = [total * k // num_shards for k in range(num_shards + 1)]
    completed = sum(bounds[k + 1] - bounds[k] for k in done)
    if done:
        logger.info("Resuming %s: %d of %d shards already written.", split, len(done), num_shards)
    if progress is not None:
        progress(completed, total)

    def prepare(i):
        try:
            return prepare_image(images.paths[i], max_side), None
        except UnreadableImageError as error:
            if strict:
                raise
            return None, error

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for k in range(num_shards):
            if k in done:
                continue
            indices = range(bounds[k], bounds[k + 1])
            entry = {"shard": k, "written": 0, "skipped": []}

            def examples():
                for i, (data, error) in zip(indices, pool.map(prepare, indices)):
                    if error is not None:
                        entry["skipped"].append([error.path, error.reason])
                        continue
                    entry["written"] += 1
                    yield make_example(data, images.ids[i], images.labels[i])

            _write_shard(shard_path(output_dir, split, k, num_shards), examples())
            with open(progress_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
                f.flush()
                os.fsync(f.fileno())
            done[k] = entry
            completed += len(indices)
            if progress is not None:
                progress(completed, total)

    summary = ConversionSummary(
        split=split,
        num_shards=num_shards,
        num_examples=sum(entry["written"] for entry in done.values()),
        skipped=[item for k in sorted(done) for item in done[k]["skipped"]],
        files=[shard_path(output_dir, split, k, num_shards) for k in range(num_shards)],
    )
    _atomic_write_json(
        os.path.join(output_dir, f"{split}-info.json"),
        {
            **settings,
            "num_examples": summary.num_examples,
            "pattern": os.path.basename(shard_pattern(output_dir, split)),
            "skipped": summary.skipped,
        },
    )
    return summary

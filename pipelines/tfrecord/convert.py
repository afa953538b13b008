"""A resumable, sharded converter of LabeledImages to TFRecord shards (the record format:
pipelines/tfrecord/format.py), and the library side of `python -m pipelines.to_tfrecord`.

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

Statistics: each progress entry also records its shard's largest number of positive
tags in one image (`max_positives`) and, when the converter is told the unseen
columns, the same over the seen tags (`max_seen_positives`), the images with an
unseen positive (`unseen_positive_images`) and which columns were unseen
(`unseen_sha1`), so training from the records sizes its loss without reading them
(pipelines/tfrecord/records.py).
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

from pipelines.decode import UnreadableImageError
from pipelines.readers import dataset_vocabulary, load_split, open_images
from pipelines.text import read_lines, read_unique_lines
from pipelines.tfrecord.format import (
    columns_sha1,
    finished_shards,
    make_example,
    positives_statistics,
    shard_path,
    shard_pattern,
    tags_sha1,
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
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
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
    unseen=None,
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
        unseen: the unseen tags' column indices, for the seen-only statistics of each
            shard (max_seen_positives, unseen_positive_images); None records only the
            all-tags max_positives.

    Returns:
        ConversionSummary (including shards finished by an earlier, interrupted run).
    """
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
    progress_path = os.path.join(output_dir, f"{split}-progress.jsonl")
    done = {
        k: v
        for k, v in finished_shards(progress_path).items()
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
            entry = {"shard": k, "written": 0, "skipped": [], "max_positives": 0}
            if unseen is not None:
                entry.update(max_seen_positives=0, unseen_positive_images=0, unseen_sha1=columns_sha1(unseen))

            def examples():
                for i, (data, error) in zip(indices, pool.map(prepare, indices)):
                    if error is not None:
                        entry["skipped"].append([error.path, error.reason])
                        continue
                    entry["written"] += 1
                    row = np.asarray(images.labels[i])
                    _count_positives(entry, row, unseen)
                    yield make_example(data, images.ids[i], row)

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
        statistics=positives_statistics(done.values()),
    )
    _atomic_write_json(
        os.path.join(output_dir, f"{split}-info.json"),
        {
            **settings,
            "num_examples": summary.num_examples,
            "pattern": os.path.basename(shard_pattern(output_dir, split)),
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




def read_for_conversion(dataset, source, split, tags, unseen_tags):
    """LabeledImages for a split; Open Images' labels stay sparse (a dense train split
    would not fit in memory), the others come from the pipelines.readers reader."""
    if dataset == "open_images":
        images, report = open_images.read_open_images(source, split, tags, unseen_tags)
        (logger.warning if report.skipped else logger.info)("%s", report.summary(f"Open Images {split}"))
        return images
    return load_split(dataset, source, split, tags, unseen_tags)


def _write_lines(path, lines):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)


def write_tag_lists(output_dir, tags, unseen, dataset="", classes_dir=""):
    """tags.txt and unseen_tags.txt (and Open Images' class names, tag_names.txt) for the
    train command's --tags and --unseen_tags."""
    os.makedirs(output_dir, exist_ok=True)
    _write_lines(os.path.join(output_dir, "tags.txt"), tags)
    _write_lines(os.path.join(output_dir, "unseen_tags.txt"), unseen)
    if dataset == "open_images" and classes_dir:
        _write_lines(os.path.join(output_dir, "tag_names.txt"), open_images.class_names(classes_dir, tags))


def split_vocabulary(dataset, source, tags_file="", unseen_tags_file="", zero_shot_split="", classes_dir="",
                     allow_pickle=False):
    """(tags, unseen_tags) a conversion labels with: the files given, else the dataset's own
    zero-shot vocabulary (pipelines.readers.dataset_vocabulary); unseen tags must be tags."""
    if tags_file:
        tags = read_unique_lines(tags_file)
        unseen = read_lines(unseen_tags_file) if unseen_tags_file else []
    else:
        tags, unseen = dataset_vocabulary(dataset, source, zero_shot_split, classes_dir, allow_pickle)
        if unseen_tags_file:
            unseen = read_lines(unseen_tags_file)
    known = set(tags)
    unknown = [tag for tag in unseen if tag not in known]
    if unknown:
        raise ValueError(
            f"{unseen_tags_file or 'The unseen tag list'}: {len(unknown)} unseen tag(s) not in the tag list "
            f"(e.g. {unknown[:5]})."
        )
    return tags, unseen


def convert_split(dataset, source, split, output_dir, tags, unseen, classes_dir="", progress=None, **options):
    """Reads one split of a dataset and converts it (`convert`, with `options`), then writes
    the tag lists beside the shards; returns the ConversionSummary.

    `progress(done, total)` is called as shards complete; `total` is known once the split
    has been read.
    """
    index = {tag: i for i, tag in enumerate(tags)}
    images = read_for_conversion(dataset, source, split, tags, unseen)
    logger.info("%s %s: %d images to convert.", dataset, split, len(images))
    summary = convert(
        images,
        output_dir,
        split,
        progress=progress,
        metadata={"dataset": dataset, "source": os.path.abspath(source), "tags_sha1": tags_sha1(tags)},
        # The training command reads the seen-only positives bound from these statistics.
        unseen=[index[tag] for tag in unseen],
        **options,
    )
    # Written after the conversion, whose settings check refuses a folder made with other tags.
    write_tag_lists(output_dir, tags, unseen, dataset, classes_dir)
    return summary

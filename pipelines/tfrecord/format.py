"""The TFRecord record format and the files beside the shards.

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

Shards are SPLIT-NNNNN-of-NNNNN.tfrecord; SPLIT-progress.jsonl lists the finished ones
with their statistics (pipelines/tfrecord/convert.py).
"""

import hashlib
import json
import os

import numpy as np
import tensorflow as tf

_LABEL_KEYS = (("label/positive", 1.0), ("label/negative", 0.0), ("label/unknown", -1.0))
FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "label/num_classes": tf.io.FixedLenFeature([], tf.int64),
    "label/default": tf.io.FixedLenFeature([], tf.float32),
    **{key: tf.io.VarLenFeature(tf.int64) for key, _ in _LABEL_KEYS},
}



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


def parse_example(serialized, num_classes):
    """One serialized record -> (encoded image bytes, (C,) float32 labels, image id).

    One record at a time, so a tf.data map can parse and decode in the same call: a
    batch-level label parse would need the whole records carried through the decode and
    copied into the batch, which costs more than building each label row here."""
    features = tf.io.parse_single_example(serialized, FEATURES)
    check = tf.debugging.assert_equal(
        features["label/num_classes"],
        tf.constant(num_classes, tf.int64),
        message=f"A record's label/num_classes differs from the {num_classes} tags of the vocabulary",
    )
    with tf.control_dependencies([check]):
        labels = tf.fill([num_classes], features["label/default"])
    for key, value in _LABEL_KEYS:
        indices = features[key].values
        labels = tf.tensor_scatter_nd_update(labels, indices[:, None], tf.fill(tf.shape(indices), value))
    return features["image/encoded"], labels, features["image/id"]


def shard_path(output_dir, split, index, num_shards):
    return os.path.join(output_dir, f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord")


def shard_pattern(output_dir, split):
    """The glob of a split's shards, for pipelines.tfrecord.records.tfrecord_dataset."""
    return os.path.join(output_dir, f"{split}-?????-of-?????.tfrecord")


def tags_sha1(tags):
    """The digest of a tag list that pipelines.to_tfrecord pins in SPLIT-conversion.json."""
    return hashlib.sha1("\n".join(tags).encode("utf-8")).hexdigest()


def columns_sha1(columns):
    """A digest of a set of column indices (the unseen tags a conversion's statistics
    used), to compare with a vocabulary's without storing the list in every entry."""
    return hashlib.sha1(",".join(str(c) for c in sorted({int(c) for c in columns})).encode("ascii")).hexdigest()


def finished_shards(progress_path):
    """{shard index: its progress entry} of the shards a conversion finished (the last
    entry of a shard written twice wins)."""
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


def positives_statistics(entries):
    """The positives statistics of a set of shards' progress entries: max_positives (all
    tags) when every entry has it; max_seen_positives, unseen_positive_images and
    unseen_sha1 when every entry has them for the same unseen columns. Entries written
    by a converter that kept no statistics leave the keys out."""
    entries = list(entries)
    stats = {}
    if entries and all("max_positives" in e for e in entries):
        stats["max_positives"] = max(int(e["max_positives"]) for e in entries)
        digests = {e.get("unseen_sha1") for e in entries}
        if len(digests) == 1 and None not in digests:
            stats.update(
                max_seen_positives=max(int(e["max_seen_positives"]) for e in entries),
                unseen_positive_images=sum(int(e["unseen_positive_images"]) for e in entries),
                unseen_sha1=digests.pop(),
            )
    return stats

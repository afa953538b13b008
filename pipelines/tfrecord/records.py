"""Reading TFRecord shards: `tfrecord_dataset` (batches from any shards), and a
conversion (pipelines.to_tfrecord) as the data of a training run or an evaluation:
`--dataset=tfrecord` in sdl_keras.train and sdl_keras.evaluate.

A source is the records folder, whose SPLIT-NNNNN-of-NNNNN.tfrecord shards are used,
or a glob of shard files (one split, one folder). Everything a run needs before its
first step comes from the conversion's own files, never from the records: the number
of images from SPLIT-progress.jsonl (which also says that every shard is complete),
the tag count and tag-list digest from SPLIT-conversion.json, the tag list from
tags.txt, and the loss's bound on positives per image from the statistics each
progress entry records (pipelines/tfrecord/convert.py). A 9-million-image split thus starts
training without a dense label matrix in memory and without a scan of its records.

The training batches keep only the seen tags' label columns; the unseen columns are
checked for positives on the way (a leak of the zero-shot tags is an error, as
`training.seen_labels` makes it for label matrices), and so is the positives bound.

Damaged shards: a corrupted or truncated record (a checksum that does not match) ends its
shard's pass, as TFRecordDataset cannot read past it; each shard's records are counted
against the number its conversion wrote. Training by default skips what a shard lost and
counts it per pass in an `UnreadableRecordCounter` (logged each epoch with the shards'
names), as unreadable images are counted; with `--strict`, and always for evaluation, the
first damaged shard is an `UnreadableShardError` naming it. A damaged shard is rewritten by
deleting it and rerunning its pipelines.to_tfrecord command, which resumes.
"""

import contextlib
import dataclasses
import json
import os
import re
from typing import Optional

import tensorflow as tf

from pipelines.decode import check_crop, decode_resize
from pipelines.files import UnreadableImageCounter, distribute
from pipelines.readers import TFRECORD
from pipelines.tfrecord.format import (
    columns_sha1,
    finished_shards,
    parse_example,
    positives_statistics,
    shard_pattern,
    tags_sha1,
)


NAME = TFRECORD
_SHARD_NAME = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")


@dataclasses.dataclass
class RecordSet:
    """The shards of one split of a conversion and what its files say about them.

    Statistics are None where the conversion did not record them (a converter older
    than the statistics, or one not told the unseen tags)."""

    source: str
    split: str
    folder: str
    files: list
    num_examples: int
    num_classes: int
    tags_sha1: Optional[str]
    max_positives: Optional[int]
    max_seen_positives: Optional[int]
    unseen_positive_images: Optional[int]
    unseen_sha1: Optional[str]
    # Records the conversion wrote in each of `files`, and its settings (SPLIT-conversion.json).
    file_counts: list = dataclasses.field(default_factory=list)
    settings: dict = dataclasses.field(default_factory=dict)

    def path(self, kind):
        """The conversion's file SPLIT-KIND (conversion.json, progress.jsonl)."""
        return os.path.join(self.folder, f"{self.split}-{kind}")

    @property
    def tags_path(self):
        return os.path.join(self.folder, "tags.txt")


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def open_record_set(source, split):
    """The RecordSet of `source`: a records folder (its `split` shards) or a glob of shard
    files, whose names give the split.

    Raises:
        FileNotFoundError: no shards, or no conversion files beside them.
        ValueError: shards the progress file does not list as finished (an interrupted
            conversion), or of another conversion.
    """
    if not source:
        raise ValueError(f"No TFRecord source for split {split!r}: pass the records folder.")
    if os.path.isdir(source):
        files = sorted(tf.io.gfile.glob(shard_pattern(source, split)))
        if not files:
            raise FileNotFoundError(
                f"{source} holds no {split} shards ({split}-NNNNN-of-NNNNN.tfrecord): convert the split with "
                f"python -m pipelines.to_tfrecord --split={split} --output_dir={source}."
            )
    else:
        files = sorted(tf.io.gfile.glob(source))
        if not files:
            raise FileNotFoundError(f"No TFRecord files match {source!r}.")
    folders = sorted({os.path.dirname(f) for f in files})
    if len(folders) > 1:
        raise ValueError(f"{source}: shards from several folders ({', '.join(folders)}); use one conversion's.")
    names = [_SHARD_NAME.match(os.path.basename(f)) for f in files]
    bad = [f for f, name in zip(files, names) if name is None]
    if bad:
        raise ValueError(f"{bad[0]} is not a shard written by pipelines.to_tfrecord (SPLIT-NNNNN-of-NNNNN.tfrecord).")
    splits = sorted({name["split"] for name in names})
    if len(splits) > 1:
        raise ValueError(f"{source}: shards of several splits ({', '.join(splits)}); use one split's.")
    folder, split = folders[0], splits[0]

    conversion_path = os.path.join(folder, f"{split}-conversion.json")
    progress_path = os.path.join(folder, f"{split}-progress.jsonl")
    for path in (conversion_path, progress_path):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: the shards in {folder} need the files pipelines.to_tfrecord writes beside them."
            )
    settings = _read_json(conversion_path)
    for key in ("num_classes", "num_shards"):
        if key not in settings:
            raise ValueError(f"{conversion_path} has no {key!r}: not a conversion of pipelines.to_tfrecord.")
    num_shards = int(settings["num_shards"])
    if os.path.isdir(source) and len(files) < num_shards:
        raise ValueError(
            f"{source} holds {len(files)} of the {num_shards} {split} shards: the conversion is unfinished; "
            "rerun its pipelines.to_tfrecord command to complete it."
        )
    finished = finished_shards(progress_path)
    entries = []
    for path, name in zip(files, names):
        index, count = int(name["index"]), int(name["count"])
        if count != num_shards:
            raise ValueError(
                f"{path} belongs to a conversion in {count} shards, {conversion_path} to one in {num_shards}."
            )
        if index not in finished:
            raise ValueError(
                f"{path} is not listed as finished in {progress_path}: the conversion was interrupted; "
                "rerun its pipelines.to_tfrecord command to complete it."
            )
        entries.append(finished[index])
    stats = positives_statistics(entries)
    records = RecordSet(
        source=source,
        split=split,
        folder=folder,
        files=files,
        num_examples=sum(int(entry["written"]) for entry in entries),
        num_classes=int(settings["num_classes"]),
        tags_sha1=settings.get("tags_sha1"),
        max_positives=stats.get("max_positives"),
        max_seen_positives=stats.get("max_seen_positives"),
        unseen_positive_images=stats.get("unseen_positive_images"),
        unseen_sha1=stats.get("unseen_sha1"),
        file_counts=[int(entry["written"]) for entry in entries],
        settings=settings,
    )
    if not records.num_examples:
        raise ValueError(f"{source}: the {split} shards hold no records ({progress_path}).")
    return records


def _first_difference(expected, actual):
    for i, (a, b) in enumerate(zip(expected, actual)):
        if a != b:
            return f"tag {i + 1} is {a!r} there, {b!r} in the vocabulary"
    return f"{len(expected)} tags there, {len(actual)} in the vocabulary"


def check_vocabulary(records, tags):
    """Raises ValueError, naming the file, unless the records' label columns are `tags`
    in this order: the count (SPLIT-conversion.json), the tag list beside the records
    (tags.txt) and the list's digest pinned at conversion, where present."""
    tags = list(tags)
    hint = f"train with --tags={records.tags_path}" if os.path.exists(records.tags_path) else (
        "train with the --tags the records were converted with")
    listed = None
    if os.path.exists(records.tags_path):
        with open(records.tags_path, encoding="utf-8") as f:
            listed = [line.strip() for line in f if line.strip()]
    if records.num_classes != len(tags):
        detail = f"; {_first_difference(listed, tags)}" if listed is not None else ""
        raise ValueError(
            f"{records.path('conversion.json')}: the {records.split} records hold labels over {records.num_classes} "
            f"tags, the vocabulary has {len(tags)}{detail}: {hint}."
        )
    if records.tags_sha1 is not None and records.tags_sha1 != tags_sha1(tags):
        detail = f" ({_first_difference(listed, tags)})" if listed is not None else ""
        raise ValueError(
            f"{records.path('conversion.json')}: the {records.split} records were converted with another tag list "
            f"or order than the vocabulary's{detail}: {hint}."
        )
    if listed is not None and listed != tags and records.tags_sha1 is None:
        raise ValueError(
            f"{records.tags_path}: the records' tag list differs from the vocabulary's "
            f"({_first_difference(listed, tags)}): {hint}."
        )


def positives_bound(records, unseen_columns):
    """(bound, seen_only, what it counts): the largest number of positives in one training
    image, from the conversion's statistics. Counted over the seen tags (seen_only) when
    the conversion's unseen columns are `unseen_columns`; otherwise over all tags, still
    an upper bound of the seen ones; (None, False, why) without statistics.

    Raises:
        ValueError: the statistics count training images with an unseen positive.
    """
    if records.unseen_sha1 is not None and records.unseen_sha1 == columns_sha1(unseen_columns):
        if records.unseen_positive_images:
            raise ValueError(
                f"{records.path('progress.jsonl')}: {records.unseen_positive_images} {records.split} record(s) "
                "are labelled with an unseen tag: training on them would leak the zero-shot tags."
            )
        return records.max_seen_positives, True, "the seen tags' statistics recorded at conversion"
    if records.max_positives is not None:
        why = ("the conversion was not told the unseen tags" if records.unseen_sha1 is None
               else "the conversion's unseen tags differ from the vocabulary's")
        return records.max_positives, False, f"the all-tags statistics recorded at conversion, as {why}"
    return None, False, f"{records.path('progress.jsonl')} records no positives statistics (an older conversion)"


# Starts the message of the error a damaged shard raises in a pipeline (`raising_unreadable_shards`).
UNREADABLE_SHARD = "Unreadable TFRecord shard"


class UnreadableShardError(ValueError):
    """A TFRecord shard with a record that cannot be read; the message names the shard and
    says how to write it again."""


def regenerate_hint(records, shards="the shard"):
    """How to write a conversion's damaged shards again: pipelines.to_tfrecord resumes,
    rewriting only the shards missing from the folder."""
    settings = records.settings
    flags = " ".join(f"--{key}={settings[key]}" for key in ("dataset", "source") if settings.get(key))
    return (f"delete {shards} and rerun the pipelines.to_tfrecord command that wrote it (python -m pipelines.to_tfrecord "
            f"{flags + ' ' if flags else ''}--split={records.split} --output_dir={records.folder} ...): it resumes, "
            "writing only the missing shards")


class UnreadableRecordCounter(UnreadableImageCounter):
    """Per shard of a RecordSet, the records a training pipeline could not read, added once
    per pass over the shard: a corrupted or truncated record ends its shard's pass, so the
    records after it are lost as well."""

    what = "unreadable TFRecord record(s)"

    def __init__(self, records, name="unreadable_records"):
        self.name = name
        self.records = records
        # Per shard: the records lost over every pass, and in its last pass.
        self.variable = tf.Variable(tf.zeros([len(records.files)], tf.int64), trainable=False, name=name)
        self.last_pass = tf.Variable(tf.zeros([len(records.files)], tf.int64), trainable=False, name=f"{name}_last")

    @property
    def total(self):
        return int(self.variable.numpy().sum())

    def add(self, index, lost):
        """The graph ops adding a pass of shard `index` that lost `lost` records."""
        return [self.variable.scatter_nd_add([[index]], [lost]), self.last_pass.scatter_nd_update([[index]], [lost])]

    def detail(self):
        """Which shards lose records, and what to do about it."""
        lost = self.last_pass.numpy()
        shards = [f"{os.path.basename(path)} ({int(n)} of its {count} records a pass)"
                  for path, count, n in zip(self.records.files, self.records.file_counts, lost) if n]
        if not shards:
            return ""
        return f"{', '.join(shards)} in {self.records.folder}: " + regenerate_hint(
            self.records, "the shard" if len(shards) == 1 else "these shards")


@contextlib.contextmanager
def raising_unreadable_shards():
    """Turns the error a damaged shard raises inside a pipeline (a TensorFlow
    InvalidArgumentError somewhere in a traceback) into an UnreadableShardError saying what
    to do."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        found = re.search(re.escape(UNREADABLE_SHARD) + r" ([^\]\n]*)", error.message)
        if found is None:
            raise
        raise UnreadableShardError(found.group(1).strip()) from None


# Shards are counted in blocks of this many records: a tf.data function call per record cost
# ~40 us of CPU (measured; a decode costs ~600 us), per block of 64 the cost was within the
# noise of reading and parsing alone (benchmarks/input_pipeline.py measures the whole pipeline).
_COUNTED_BLOCK = 64


def _checked_shards(records, unreadable):
    """A function (path, shard index) -> the records of one shard, counted against
    `records.file_counts`: at the shard's end, what it lacks is added to `unreadable` (an
    UnreadableRecordCounter) or, when that is None, raises naming the shard."""
    expected = tf.constant(records.file_counts, tf.int64)
    prefixes = tf.constant([f"{UNREADABLE_SHARD} {path}: record " for path in records.files])
    suffix = (" cannot be read (corrupted or truncated; the conversion wrote {count} records): "
              + regenerate_hint(records) + ".")
    suffixes = tf.constant([suffix.format(count=count) for count in records.file_counts])

    def read(path, index):
        def check(block, end, count):
            def at_end():
                lost = tf.maximum(expected[index] - count, 0)
                if unreadable is not None:
                    done = unreadable.add(index, lost)
                else:
                    message = tf.strings.join([prefixes[index], tf.strings.as_string(count + 1), suffixes[index]])
                    done = [tf.debugging.Assert(tf.equal(lost, 0), [message])]
                with tf.control_dependencies(done):
                    return tf.constant(False)

            return tf.cond(end, at_end, lambda: tf.constant(True))

        # ignore_errors: a damaged record ends the shard (TFRecordDataset moves on to its next file).
        blocks = tf.data.TFRecordDataset(path, buffer_size=1 << 22).ignore_errors().batch(_COUNTED_BLOCK)
        flagged = tf.data.Dataset.zip((blocks, tf.data.Dataset.from_tensors(False).repeat()))
        flagged = flagged.concatenate(tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), True)))
        # (block, end, records before it): the end block's count is the shard's.
        counted = flagged.scan(
            tf.constant(0, tf.int64), lambda count, element: (count + tf.size(element[0], tf.int64), (*element, count))
        )
        return counted.filter(check).map(lambda block, end, count: block).unbatch()

    return read


def tfrecord_dataset(
    file_pattern,
    num_classes,
    image_size,
    batch_size,
    shuffle=False,
    seed=None,
    repeat=False,
    deterministic=None,
    drop_remainder=False,
    crop="none",
    shuffle_buffer=8192,
    input_context=None,
    decode_mode="fast",
    unreadable=None,
):
    """Batches of (uint8 images (B, S, S, 3), float32 labels (B, C) with -1 unknowns) from
    TFRecord shards (pipelines.tfrecord; `file_pattern` a glob, a list of files, or a
    RecordSet, whose shards are checked).

    Shards are read `interleave`d in parallel; with `shuffle`, the shard order is
    shuffled each pass and records go through a `shuffle_buffer`. Records are parsed
    and their images decoded one by one, in parallel. `deterministic=False`
    lets records come out as they are ready (faster when a read stalls); True or None
    keeps the order fixed for a seed. The converter stored only images that decode,
    so nothing is skipped here: a record that fails is damaged storage, an error.
    Under tf.distribute, build it in `strategy.distribute_datasets_from_function` with
    the per-replica batch size and the `input_context`, which splits the shards
    between input pipelines (see `distribute`).
    """
    check_crop(crop, decode_mode)
    if isinstance(file_pattern, RecordSet):
        files, read = list(file_pattern.files), _checked_shards(file_pattern, unreadable)
    else:
        files = sorted(tf.io.gfile.glob(file_pattern)) if isinstance(file_pattern, str) else list(file_pattern)
        read = lambda path, _: tf.data.TFRecordDataset(path, buffer_size=1 << 22)  # noqa: E731
    if not files:
        raise FileNotFoundError(f"No TFRecord files match {file_pattern!r}.")
    dataset = tf.data.Dataset.from_tensor_slices((files, tf.range(len(files), dtype=tf.int64)))
    if input_context is not None and input_context.num_input_pipelines > 1:
        if len(files) < input_context.num_input_pipelines:
            raise ValueError(
                f"{len(files)} TFRecord files for {input_context.num_input_pipelines} input pipelines: "
                "convert with more shards (--num_shards)."
            )
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.interleave(
        read,
        cycle_length=min(len(files), 16),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic is not False,
    )
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()

    def decode(serialized):
        image, labels, _ = parse_example(serialized, num_classes)
        return decode_resize(image, image_size, crop, decode_mode), labels

    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)


def training_dataset(
    records,
    seen_columns,
    unseen_columns,
    image_size,
    global_batch_size,
    max_positives=None,
    seed=None,
    strategy=None,
    crop="none",
    decode_mode="fast",
    unreadable=None,
):
    """Repeated, shuffled batches of (uint8 images, float32 labels over the seen tags) from
    the records; under a strategy with several replicas (or workers), a distributed
    dataset with per-replica batches, each input pipeline reading its share of the shards.

    Each batch is checked: an unseen positive, or more than `max_positives` seen positives
    in one image (the loss would drop the extra ones), stops training with an error. A
    damaged shard is an error naming it, or, with an UnreadableRecordCounter as
    `unreadable`, skipped and counted there (`tfrecord_dataset`).
    """
    seen = tf.constant(list(seen_columns), tf.int32)
    unseen = tf.constant(list(unseen_columns), tf.int32)
    source = records.source

    def select(images, labels):
        checks = []
        if unseen_columns:
            leaked = tf.reduce_any(tf.equal(tf.gather(labels, unseen, axis=1), 1.0))
            checks.append(tf.debugging.Assert(
                tf.logical_not(leaked),
                [f"{source}: a training record is labelled with an unseen tag (a leak of the zero-shot tags)"],
            ))
        labels = tf.gather(labels, seen, axis=1)
        if max_positives is not None:
            most = tf.reduce_max(tf.reduce_sum(tf.cast(tf.equal(labels, 1.0), tf.int32), axis=1))
            checks.append(tf.debugging.Assert(
                most <= max_positives,
                [f"{source}: a training record has more seen positives than max_positives={max_positives} "
                 "(the loss would drop the extra ones); most in this batch:", most],
            ))
        with tf.control_dependencies(checks):
            return images, tf.identity(labels)

    def build(batch_size, input_context=None):
        dataset = tfrecord_dataset(
            records,
            records.num_classes,
            image_size,
            batch_size,
            shuffle=True,
            seed=seed,
            repeat=True,
            drop_remainder=True,
            crop=crop,
            input_context=input_context,
            decode_mode=decode_mode,
            unreadable=unreadable,
        )
        return dataset.map(select, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    if strategy is None or strategy.num_replicas_in_sync == 1:
        return build(global_batch_size)
    return distribute(strategy, global_batch_size, build)


def evaluation_batches(records, image_size, batch_size, crop="none", decode_mode="fast"):
    """One pass, in order, over the records: batches of (uint8 images, float32 labels over
    every tag, -1 unknown); a damaged shard is an error naming it."""
    return tfrecord_dataset(records, records.num_classes, image_size, batch_size, crop=crop, decode_mode=decode_mode)

"""What a training run reads: its vocabulary, its training batches (labels over the seen
tags only) and its validation split (labels over every tag).

The validation split is held out of the training images (`validation_fraction`, which
images fixed by the seed) or read from `validation_source`; never the test set. The
zero-shot evaluation during training, the best-model checkpoint and the calibration
(sdl_keras.training.calibrate) use it; `sdl_keras.evaluate` alone reads the test split.
"""

import dataclasses
import logging

import numpy as np

from pipelines.files import check_positives_bound, image_label_dataset
from pipelines.readers import TFRECORD, LabeledImages, load_split
from pipelines.tfrecord import records
from sdl_keras.embeddings import TagVocabulary
from sdl_keras.losses import max_positives_needed

logger = logging.getLogger(__name__)


def load_vocabulary(data):
    """The run's TagVocabulary from the files a DataConfig names."""
    for field in ("tags", "word_vectors"):
        if not getattr(data, field):
            raise ValueError(f"--{field} is empty: the vocabulary needs a tag list and vectors.")
    return TagVocabulary.from_files(
        data.tags, data.word_vectors, data.unseen_tags or None, allow_pickle=data.allow_pickle,
        vector_tags=data.word_vector_tags or None,
    )


def seen_labels(labels, vocabulary, source=""):
    """Training labels restricted to the seen tags; an unseen positive in training is an error
    (it would leak the zero-shot tags into training)."""
    labels = np.asarray(labels)
    if vocabulary.unseen:
        leaked = np.nonzero((labels[:, list(vocabulary.unseen)] == 1).any(axis=0))[0]
        if leaked.size:
            names = [vocabulary.unseen_tags[i] for i in leaked[:10]]
            raise ValueError(f"{source}: training images are labelled with unseen tag(s) {names}.")
    return labels[:, list(vocabulary.seen)]


@dataclasses.dataclass
class TrainingData:
    """What `train` fits on: batches of (images, labels over the seen tags), repeated (or
    a distributed dataset), with the facts the run is sized by."""

    dataset: object
    num_images: int
    num_seen: int
    max_positives: int
    max_positives_from: str
    # Counts the unreadable images (pipelines.files) or TFRecord records
    # (pipelines.tfrecord.records) the pipeline drops, or None.
    unreadable_images: object = None
    # The images held out of the training split as the validation split (LabeledImages), or None.
    held_out: object = None


def held_out_indices(count, fraction, seed):
    """The sorted indices of the `round(fraction * count)` images (at least one when
    fraction > 0) a seeded permutation holds out of `count` training images."""
    if not fraction:
        return np.zeros(0, np.int64)
    size = min(max(int(round(fraction * count)), 1), count - 1)
    return np.sort(np.random.default_rng(seed).permutation(count)[:size])


def split_off(images, indices):
    """(kept, held out) LabeledImages: `images` without and with the rows `indices`."""
    mask = np.zeros(len(images), dtype=bool)
    mask[indices] = True

    def subset(rows):
        rows = np.nonzero(rows)[0]
        return LabeledImages([images.paths[i] for i in rows], [images.ids[i] for i in rows], images.labels[rows])

    return subset(~mask), subset(mask)


def _carves_validation(config):
    return bool(config.evaluation.validation_fraction) and not config.evaluation.validation_source


def _training_images(config, vocabulary):
    """(training images, held-out validation images or None) of a reader's training split."""
    data = config.data
    images = load_split(data.dataset, data.train_source, "train", vocabulary.tags, vocabulary.unseen_tags)
    if not len(images):
        raise ValueError(f"{data.train_source}: no training images.")
    if not _carves_validation(config):
        return images, None
    if len(images) < 2:
        raise ValueError(f"{data.train_source}: {len(images)} training image(s) cannot also give a validation "
                         "split; set --validation_fraction=0 or give --validation_source.")
    return split_off(images, held_out_indices(len(images), config.evaluation.validation_fraction,
                                              config.runtime.seed))


def _file_training_data(config, vocabulary):
    """The training split read by a pipelines.readers reader, labels in memory."""
    data = config.data
    train_images, held_out = _training_images(config, vocabulary)
    labels = seen_labels(train_images.labels, vocabulary, data.train_source)
    bound = config.loss.max_positives
    max_positives = bound or max(max_positives_needed(labels), 1)
    check_positives_bound(labels, max_positives, train_images.ids)
    dataset = image_label_dataset(
        train_images.paths,
        labels,
        data.image_size,
        data.batch_size,
        shuffle=True,
        seed=config.runtime.seed,
        repeat=True,
        drop_remainder=True,
        crop=data.crop,
        strict=data.strict,
        decode_mode=data.decode_mode,
    )
    origin = "max_positives" if bound else "the labels"
    return TrainingData(dataset, len(train_images), labels.shape[1], max_positives, origin,
                        unreadable_images=dataset.unreadable_images, held_out=held_out)


def _record_training_data(config, vocabulary, strategy):
    """The training split streamed from TFRecords: its size and the loss's positives bound
    come from the conversion's files (pipelines.tfrecord.records), not from the records."""
    data = config.data
    record_set = records.open_record_set(data.train_source, "train")
    records.check_vocabulary(record_set, vocabulary.tags)
    recorded, seen_only, counted = records.positives_bound(record_set, vocabulary.unseen)
    bound = config.loss.max_positives
    if bound:
        max_positives, origin = bound, "max_positives"
        # An all-tags count only bounds the seen positives: the batches check the real ones.
        if seen_only and recorded > max_positives:
            raise ValueError(
                f"max_positives={max_positives}, but {record_set.path('progress.jsonl')} records training images "
                f"with {recorded} positive seen tags; the loss would drop the extra ones. "
                f"Set max_positives >= {recorded}, or none."
            )
    elif recorded is None:
        raise ValueError(f"{counted}: pass --max_positives (the most positive seen tags of one training image), "
                         "or convert the split again with the current pipelines.to_tfrecord.")
    else:
        max_positives, origin = max(recorded, 1), counted
    # As unreadable image files: damaged shards are skipped and counted, or with strict an error.
    unreadable = None if data.strict else records.UnreadableRecordCounter(record_set)
    dataset = records.training_dataset(
        record_set,
        vocabulary.seen,
        vocabulary.unseen,
        data.image_size,
        data.batch_size,
        max_positives=max_positives,
        seed=config.runtime.seed,
        strategy=strategy,
        crop=data.crop,
        decode_mode=data.decode_mode,
        unreadable=unreadable,
    )
    return TrainingData(dataset, record_set.num_examples, len(vocabulary.seen), max_positives, origin,
                        unreadable_images=unreadable)


def training_data(config, vocabulary, strategy):
    """The TrainingData of a run: from TFRecords (dataset "tfrecord") or a reader's files."""
    if config.data.dataset == TFRECORD:
        return _record_training_data(config, vocabulary, strategy)
    return _file_training_data(config, vocabulary)


@dataclasses.dataclass
class ValidationData:
    """The validation split: `batches` of (uint8 images (B, S, S, 3), labels (B, C) over
    every tag), one pass in order; how many images, where from, and whether any image has
    an unseen positive (a split held out of the training images has none: ZSL figures
    need labelled unseen tags)."""

    batches: object
    num_images: int
    description: str
    unseen_positives: bool


def validation_data(config, vocabulary, held_out=None):
    """The run's ValidationData, or None when it has none (validation_fraction=0 and no
    validation_source, or --dataset=tfrecord without validation_source).

    Args:
        held_out: the LabeledImages `training_data` held out (saves reading the training
            split again); by default the same images are held out again from the config.
    """
    data, evaluation = config.data, config.evaluation
    source = evaluation.validation_source
    if source and source == data.test_source:
        logger.warning("validation_source is the test split: the best model and the calibration are then chosen "
                       "on the test images, and the test figures are optimistic.")
    if data.dataset == TFRECORD:
        if not source:
            if evaluation.validation_fraction:
                logger.warning("No validation split: --validation_fraction is not held out of streamed TFRecords; "
                               "give --validation_source (the records of held-out training images).")
            return None
        record_set = records.open_record_set(source, "test")
        records.check_vocabulary(record_set, vocabulary.tags)
        batches = records.evaluation_batches(record_set, data.image_size, data.batch_size, data.crop,
                                             data.decode_mode)
        unseen = record_set.unseen_positive_images
        return ValidationData(batches, record_set.num_examples, source,
                              bool(vocabulary.unseen) if unseen is None else unseen > 0)
    if source:
        images = load_split(data.dataset, source, "test", vocabulary.tags, vocabulary.unseen_tags)
        if not len(images):
            raise ValueError(f"{source}: no validation images.")
        description = source
    else:
        if not evaluation.validation_fraction:
            return None
        images = held_out if held_out is not None else _training_images(config, vocabulary)[1]
        description = (f"{data.train_source} (validation_fraction={evaluation.validation_fraction}, "
                       f"seed {config.runtime.seed})")
    batches = image_label_dataset(images.paths, images.labels, data.image_size, data.batch_size, crop=data.crop,
                                  decode_mode=data.decode_mode)
    unseen_positives = bool(vocabulary.unseen) and bool((images.labels[:, list(vocabulary.unseen)] == 1).any())
    return ValidationData(batches, len(images), description, unseen_positives)

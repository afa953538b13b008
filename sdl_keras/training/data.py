"""What a training run reads: its vocabulary, its training batches (labels over the seen
tags only) and its validation batches (labels over every tag)."""

import dataclasses
import logging

import numpy as np

from pipelines.files import check_positives_bound, image_label_dataset
from pipelines.readers import TFRECORD, load_split
from pipelines.splits import split_batches
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


def _file_training_data(config, vocabulary):
    """The training split read by a pipelines.readers reader, labels in memory."""
    data = config.data
    train_images = load_split(data.dataset, data.train_source, "train", vocabulary.tags, vocabulary.unseen_tags)
    if not len(train_images):
        raise ValueError(f"{data.train_source}: no training images.")
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
                        unreadable_images=dataset.unreadable_images)


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


def validation_batches(config, vocabulary):
    """Batches of (images, labels over all tags) for the zero-shot evaluation, or None."""
    source = config.evaluation.validation_source or config.data.test_source
    if not config.evaluation.eval_every or not source:
        return None
    data = config.data
    batches, count = split_batches(data.dataset, source, "test", vocabulary.tags, vocabulary.unseen_tags,
                                   data.image_size, data.batch_size, data.crop, data.decode_mode,
                                   **({} if config.evaluation.validation_source else data.test_split_options()))
    logger.info("Zero-shot evaluation every %d epoch(s) on %d images of %s.", config.evaluation.eval_every, count,
                source)
    return batches

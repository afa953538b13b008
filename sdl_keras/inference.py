"""Scoring images with a trained run, and the zero-shot evaluation of a run."""

import keras
import numpy as np

from pipelines.progress import Progress
from pipelines.splits import split_batches
from pipelines.tfrecord.records import raising_unreadable_shards
from sdl_keras import evaluation
from sdl_keras.run_dir import RunDirectory
from sdl_keras.scoring import tag_scores


def load_run(run_dir):
    """(model, vocabulary, config) of a run directory (sdl_keras.run_dir)."""
    return RunDirectory(run_dir).load()


def score_batches(model, batches, tag_vectors, aggregation="max"):
    """Scores (N, C) and dominant rows (N, C) of every image in `batches` of (images, ...)."""
    scores, rows = [], []
    for batch in batches:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        matrices = model.predict_on_batch(images)
        s, r = tag_scores(matrices, tag_vectors, aggregation)
        scores.append(keras.ops.convert_to_numpy(s))
        rows.append(keras.ops.convert_to_numpy(r))
    return np.concatenate(scores), np.concatenate(rows)


def evaluate_run(run_dir, dataset=None, source=None, ks=None, batch_size=64, progress=True):
    """ZSL/GZSL figures of a run on its test split, beside a random ranker's.

    Returns:
        {"model": evaluate_scores(...), "random": evaluate_scores(random scores)}.
    """
    model, vocabulary, config = load_run(run_dir)
    data = config.data
    ks = tuple(ks or config.evaluation.ks)
    batches, count = split_batches(
        dataset or data.dataset, source or data.test_source, "test", vocabulary.tags, vocabulary.unseen_tags,
        data.image_size, batch_size, data.crop,
    )
    # The labels come with the batches: a TFRecord test split is never loaded whole, and
    # the files reader's pipeline drops unreadable images.
    labels = []
    batches = _keeping_labels(batches, labels)
    if progress:
        batches = _with_progress(batches, -(-count // batch_size))
    with raising_unreadable_shards():
        scores, _ = score_batches(model, batches, vocabulary.vectors, config.loss.aggregation)
    labels = np.concatenate(labels)
    return {
        "model": evaluation.evaluate_scores(scores, labels, vocabulary.unseen, ks),
        "random": evaluation.evaluate_scores(
            evaluation.random_scores(scores.shape, seed=config.runtime.seed), labels, vocabulary.unseen, ks
        ),
    }


def _keeping_labels(batches, labels):
    for images, batch_labels in batches:
        labels.append(keras.ops.convert_to_numpy(batch_labels))
        yield images, batch_labels


def _with_progress(batches, total):
    bar = Progress(total, "batch")
    for i, batch in enumerate(batches, start=1):
        yield batch
        bar.update(i)

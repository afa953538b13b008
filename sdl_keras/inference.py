"""Scoring images with a trained run, and the zero-shot evaluation of a run."""

import json
import logging
import os

import keras
import numpy as np

from sdl_keras import evaluation
from sdl_keras.embeddings import TagVocabulary
from sdl_keras.scoring import tag_scores
from sdl_keras.training import CONFIG_FILE, MODEL_FILE, VOCABULARY_FILE, TrainConfig, evaluation_batches

logger = logging.getLogger(__name__)


def load_run(run_dir):
    """(model, vocabulary, config) of a run directory written by `training.train`."""
    paths = {name: os.path.join(run_dir, name) for name in (MODEL_FILE, VOCABULARY_FILE, CONFIG_FILE)}
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a complete run directory; missing {missing}.")
    model = keras.saving.load_model(paths[MODEL_FILE], compile=False)
    return model, TagVocabulary.load(paths[VOCABULARY_FILE]), TrainConfig.load(paths[CONFIG_FILE])


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
    dataset = dataset or config.dataset
    source = source or config.test_source
    ks = tuple(ks or config.ks)
    batches, count = evaluation_batches(dataset, source, vocabulary, config.image_size, batch_size)
    # The labels come with the batches: a TFRecord test split is never loaded whole, and
    # the files reader's pipeline drops unreadable images.
    labels = []
    batches = _keeping_labels(batches, labels)
    if progress:
        batches = _with_progress(batches, -(-count // batch_size))
    scores, _ = score_batches(model, batches, vocabulary.vectors, config.aggregation)
    labels = np.concatenate(labels)
    return {
        "model": evaluation.evaluate_scores(scores, labels, vocabulary.unseen, ks),
        "random": evaluation.evaluate_scores(
            evaluation.random_scores(scores.shape, seed=config.seed), labels, vocabulary.unseen, ks
        ),
    }


def _keeping_labels(batches, labels):
    for images, batch_labels in batches:
        labels.append(keras.ops.convert_to_numpy(batch_labels))
        yield images, batch_labels


def _with_progress(batches, total):
    bar = keras.utils.Progbar(total, unit_name="batch")
    for i, batch in enumerate(batches, start=1):
        yield batch
        bar.update(i)


def write_results(results, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, sort_keys=True)

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


def score_split(run, dataset, source, batch_size=64, progress=True):
    """(scores (N, C), labels (N, C)) of a loaded run `(model, vocabulary, config)` on one test
    split, read and decoded as the run's config says (`DataConfig.test_split_options`)."""
    model, vocabulary, config = run
    data = config.data
    batches, count = split_batches(
        dataset, source, "test", vocabulary.tags, vocabulary.unseen_tags, data.image_size, batch_size,
        data.crop, data.decode_mode, **data.test_split_options(),
    )
    # The labels come with the batches: a TFRecord test split is never loaded whole, and
    # the files reader's pipeline drops unreadable images.
    labels = []
    batches = _keeping_labels(batches, labels)
    if progress:
        batches = _with_progress(batches, -(-count // batch_size))
    with raising_unreadable_shards():
        scores, _ = score_batches(model, batches, vocabulary.vectors, config.loss.aggregation)
    return scores, np.concatenate(labels)


def evaluate_run(run_dir, dataset=None, source=None, ks=None, batch_size=64, progress=True, empty_tags=None,
                 zsl_source=None):
    """ZSL/GZSL figures of a run on its test split, beside a random ranker's.

    `empty_tags` (default: the run's `evaluation.empty_tags`) is how mAP counts a tag
    without a positive image (`evaluation.evaluate_scores`). With a `zsl_source` (default:
    the run's `data.zsl_test_source`), the ZSL figures come from that split and the GZSL
    ones from `source`, as the official COCO code evaluates val_unseen.json and
    val_17_48.json.

    Returns:
        {"model": evaluate_scores(...), "random": evaluate_scores(random scores),
         "settings": {"empty_tags", "test_source", "zsl_test_source"}}.
    """
    run = load_run(run_dir)
    _, vocabulary, config = run
    data = config.data
    ks = tuple(ks or config.evaluation.ks)
    empty_tags = empty_tags or config.evaluation.empty_tags
    dataset, source = dataset or data.dataset, source or data.test_source
    zsl_source = zsl_source or data.zsl_test_source
    splits = {"gzsl": score_split(run, dataset, source, batch_size, progress)}
    if zsl_source:
        splits["zsl"] = score_split(run, dataset, zsl_source, batch_size, progress)
    results = {"model": {}, "random": {}}
    for task, (scores, labels) in splits.items():
        chance = evaluation.random_scores(scores.shape, seed=config.runtime.seed)
        for name, figures in (("model", scores), ("random", chance)):
            evaluated = evaluation.evaluate_scores(figures, labels, vocabulary.unseen, ks, empty_tags)
            # One split gives both tasks; a separate ZSL split replaces the ZSL figures.
            results[name].update({k: v for k, v in evaluated.items() if len(splits) == 1 or k.startswith(task)})
    results["settings"] = {"empty_tags": empty_tags, "test_source": source, "zsl_test_source": zsl_source or source}
    return results


def _keeping_labels(batches, labels):
    for images, batch_labels in batches:
        labels.append(keras.ops.convert_to_numpy(batch_labels))
        yield images, batch_labels


def _with_progress(batches, total):
    bar = Progress(total, "batch")
    for i, batch in enumerate(batches, start=1):
        yield batch
        bar.update(i)

"""Scoring images with a trained run, and the zero-shot evaluation of a run: the ranking
figures, and the probabilities' (calibration errors, threshold metrics)."""

import keras
import numpy as np

from pipelines.progress import Progress
from pipelines.splits import split_batches
from pipelines.tfrecord.records import raising_unreadable_shards
from sdl_keras import calibration as calibration_lib, evaluation
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


# The top-K pairs per image the calibration errors are measured over: the tags a tagger shows.
ECE_TOP_K = 10
TEST_RUN = "test"


def probability_figures(scores, labels, unseen, calibration=None, k=ECE_TOP_K):
    """How good the probabilities of test scores are: calibration errors (evaluation.
    calibration_errors) of sigmoid(score) and, for a calibrated run, of the calibrated
    probabilities; threshold metrics (evaluation.threshold_metrics) at the tuned per-tag
    thresholds, at the one threshold for all tags and at a user-set one (uncalibrated:
    sigmoid(score) >= 0.5).

    Returns:
        {"calibrated": bool, "ece": {probabilities: figures}, "thresholds": [{"probabilities",
        "thresholds", "zsl/CP", ...}], "curves": {"seen"/"unseen": {probabilities: curve}}}.
    """
    probabilities = {"sigmoid(score)": calibration_lib.sigmoid(scores)}
    if calibration is not None:
        probabilities["calibrated"] = calibration.probabilities(scores)
    figures = {"calibrated": calibration is not None, "ece": {}, "thresholds": [], "curves": {"seen": {}, "unseen": {}}}
    top = evaluation.top_k_mask(scores, k)
    is_unseen = np.zeros(scores.shape[1], dtype=bool)
    is_unseen[list(unseen)] = True
    for name, values in probabilities.items():
        errors = evaluation.calibration_errors(values, scores, labels, unseen, k)
        figures["ece"][name] = errors
        for split, columns in (("seen", ~is_unseen), ("unseen", is_unseen)):
            shown = top & columns[None, :]
            curve = evaluation.reliability_curve(values[shown], labels[shown])
            figures["curves"][split][name] = dict(curve, ece=errors[f"ece/{split}@{k}"])
    if calibration is None:
        rules = [("sigmoid(score)", "0.50 for all", 0.5)]
    else:
        rules = [("calibrated", "tuned per tag", calibration.thresholds),
                 ("calibrated", f"{calibration.shared_threshold:.2f} for all", calibration.shared_threshold)]
        if calibration.probability_threshold is not None:
            rules.append(("calibrated", f"{calibration.probability_threshold:.2f} (set)",
                          calibration.probability_threshold))
    for name, rule, thresholds in rules:
        figures["thresholds"].append({"probabilities": name, "thresholds": rule,
                                      **evaluation.threshold_metrics(probabilities[name], labels, thresholds, unseen)})
    return figures


def write_reliability_logs(run, curves, k=ECE_TOP_K):
    """The test split's reliability diagrams, seen and unseen tags, in the run's TensorBoard logs."""
    import os

    from sdl_keras.training.dashboards import write_reliability_diagrams

    write_reliability_diagrams(os.path.join(run.logs_dir, TEST_RUN), {
        split: (f"{split} tags, test split, top-{k} pairs", split_curves) for split, split_curves in curves.items()
    })


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
                 zsl_source=None, reliability_logs=False):
    """ZSL/GZSL figures of a run on its test split, beside a random ranker's, and how good its
    probabilities are on the GZSL split (`probability_figures`: calibrated when the run has
    calibration.json).

    `empty_tags` (default: the run's `evaluation.empty_tags`) is how mAP counts a tag
    without a positive image (`evaluation.evaluate_scores`). With a `zsl_source` (default:
    the run's `data.zsl_test_source`), the ZSL figures come from that split and the GZSL
    ones from `source`, as the official COCO code evaluates val_unseen.json and
    val_17_48.json. With `reliability_logs`, the GZSL split's reliability diagrams also go
    to the run's TensorBoard logs (the "test" run).

    Returns:
        {"model": evaluate_scores(...), "random": evaluate_scores(random scores),
         "probabilities": probability_figures(...) without its curves, and "uncalibrated":
         why the run is not calibrated, or None;
         "settings": {"empty_tags", "test_source", "zsl_test_source"}}.
    """
    directory = RunDirectory(run_dir)
    run = directory.load()
    _, vocabulary, config = run
    calibration, reason = directory.calibration_for(directory.model_path, vocabulary)
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
    probabilities = dict(probability_figures(*splits["gzsl"], vocabulary.unseen, calibration), uncalibrated=reason)
    curves = probabilities.pop("curves")
    if reliability_logs:
        write_reliability_logs(directory, curves)
    results["probabilities"] = probabilities
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

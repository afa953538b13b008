"""Fitting a run's calibration (sdl_keras.calibration) on its validation split: the library
side of `python -m sdl_keras.calibrate --run_dir=...`, and what `train --calibrate` runs
when training ends.

The validation split is the run's own (`training.data.validation_data`): the images held
out of the training split by `validation_fraction` and the seed, or `validation_source`;
never the test set. The result goes to RUN_DIR/calibration.json, and the validation
split's reliability diagrams for the seen tags, before and after, to the TensorBoard logs
(the "calibration" run).
"""

import logging
import os

import keras
import numpy as np

from sdl_keras import calibration, evaluation
from sdl_keras.run_dir import RunDirectory
from sdl_keras.scoring import tag_scores
from sdl_keras.training.dashboards import write_reliability_diagrams
from sdl_keras.training.data import validation_data

logger = logging.getLogger(__name__)

CALIBRATION_RUN = "calibration"


def score_labelled_batches(predict, batches, tag_vectors, aggregation="max"):
    """(scores (N, C), labels (N, C)) of batches of (images, labels): `predict` maps images to A."""
    scores, labels = [], []
    for images, batch_labels in batches:
        batch_scores, _ = tag_scores(predict(images), tag_vectors, aggregation)
        scores.append(keras.ops.convert_to_numpy(batch_scores))
        labels.append(keras.ops.convert_to_numpy(batch_labels))
    if not scores:
        raise ValueError("The validation split is empty: nothing to calibrate on.")
    return np.concatenate(scores), np.concatenate(labels)


def seen_reliability(calibrated, scores, labels, unseen):
    """The validation split's seen-tag reliability curves: sigmoid(score) and calibrated."""
    seen = np.ones(scores.shape[1], dtype=bool)
    seen[list(unseen)] = False
    curves = {}
    for name, probabilities in (("sigmoid(score)", calibration.sigmoid(scores)),
                                ("calibrated", calibrated.probabilities(scores))):
        curve = evaluation.reliability_curve(probabilities[:, seen], labels[:, seen])
        curves[name] = dict(curve, ece=evaluation.expected_calibration_error(probabilities[:, seen], labels[:, seen]))
    return curves


def fit_model_calibration(model, vocabulary, config, validation, predict=None, checkpoint=None):
    """A Calibration of a model on a ValidationData, as the config's calibration section says.

    Args:
        predict: images -> A; default `model.predict_on_batch`.
        checkpoint: the model file's name, recorded (export checks it).

    Returns:
        (calibration, seen-tag reliability curves of the validation split).
    """
    settings = config.calibration
    scores, labels = score_labelled_batches(predict or model.predict_on_batch, validation.batches, vocabulary.vectors,
                                            config.loss.aggregation)
    fitted = calibration.fit_calibration(
        scores, labels, vocabulary.tags, vocabulary.unseen, settings.calibration_method, settings.unseen_pooling,
        settings.min_positives, settings.probability_threshold,
        fitted_on={"validation": validation.description, "model": checkpoint or RunDirectory.MODEL},
    )
    curves = seen_reliability(fitted, scores, labels, vocabulary.unseen)
    logger.info(
        "Calibrated on %d validation images (%s): %s maps, %d of %d seen tags on the shared map, unseen tags by %s; "
        "seen ECE %.3f -> %.3f.", len(scores), validation.description, fitted.method, len(fitted.shared),
        len(fitted.seen), fitted.unseen_pooling, curves["sigmoid(score)"]["ece"], curves["calibrated"]["ece"],
    )
    return fitted, curves


def write_calibration(run, fitted, curves, step=0):
    """calibration.json and the seen-tag reliability diagram in the run's TensorBoard logs."""
    run.write_calibration(fitted)
    write_reliability_diagrams(os.path.join(run.logs_dir, CALIBRATION_RUN),
                               {"seen": ("seen tags, validation split", curves)}, step)


def calibrate_run(run_dir, checkpoint=None, **settings):
    """Fits the calibration of a run directory on its validation split and writes it.

    Args:
        checkpoint: the .keras file to calibrate (default RUN_DIR/model.keras); the
            calibration records its name.
        settings: TrainConfig fields (flat names) that override the run's config.json:
            calibration_method, unseen_pooling, min_positives, probability_threshold, or
            validation_source; None leaves the run's value.

    Returns:
        (the Calibration, the validation split's seen-tag ECE before and after).
    """
    from sdl_keras import saving

    run = RunDirectory(run_dir)
    model, vocabulary, config = run.load()
    if checkpoint:
        model = saving.load_model(checkpoint, compile=False)
    config = config.replace(**{k: v for k, v in settings.items() if v is not None})
    validation = validation_data(config, vocabulary)
    if validation is None:
        raise ValueError(f"{run.config_path}: the run has no validation split to calibrate on "
                         "(validation_fraction=0 and no validation_source, or a tfrecord run without "
                         "validation_source); pass --validation_source=... (never the test split).")
    name = os.path.basename(checkpoint) if checkpoint else RunDirectory.MODEL
    fitted, curves = fit_model_calibration(model, vocabulary, config, validation, checkpoint=name)
    write_calibration(run, fitted, curves)
    return fitted, {name: curve["ece"] for name, curve in curves.items()}


"""Calibration of a trained run on the demo data: expected calibration errors of seen and
unseen tags before (sigmoid(score)) and after calibration, for every map (Platt,
temperature, isotonic) and both poolings of the unseen tags' map (by raw score, by rank
within the image), fitted on the run's validation split and measured on its test split;
CF1/OF1 at the tuned per-tag thresholds against one global threshold; and the reliability
diagrams as PNGs (docs/figures/, referenced from the README).

    python -m pipelines.demo --flagfile=configs/demo_data.flags
    python -m sdl_keras.train --flagfile=configs/demo.flags
    python benchmarks/calibration.py --run_dir=runs/demo --figures_dir=docs/figures
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_string("run_dir", "runs/demo", "A trained run (configs/demo.flags).")
flags.DEFINE_string("figures_dir", None, "Write the reliability diagrams here as PNGs (e.g. docs/figures).")
flags.DEFINE_integer("top_k", 10, "ECE over each image's top-K pairs.")
FLAGS = flags.FLAGS


def scored(run):
    """(validation scores, labels, test scores, labels, vocabulary, config) of a run."""
    from pipelines.splits import split_batches
    from sdl_keras.training.calibrate import score_labelled_batches
    from sdl_keras.training.data import validation_data

    model, vocabulary, config = run.load()
    validation = validation_data(config, vocabulary)
    data = config.data
    test, _ = split_batches(data.dataset, data.test_source, "test", vocabulary.tags, vocabulary.unseen_tags,
                            data.image_size, 64, data.crop)
    predict, vectors = model.predict_on_batch, vocabulary.vectors
    return (*score_labelled_batches(predict, validation.batches, vectors, config.loss.aggregation),
            *score_labelled_batches(predict, test, vectors, config.loss.aggregation), vocabulary, config,
            validation.description)


def main(argv):
    del argv
    from sdl_keras import calibration, evaluation
    from sdl_keras.run_dir import RunDirectory
    from sdl_keras.training.dashboards import render_reliability_diagram

    run = RunDirectory(FLAGS.run_dir)
    val_scores, val_labels, test_scores, test_labels, vocabulary, config, description = scored(run)
    unseen, k = vocabulary.unseen, FLAGS.top_k
    print(f"{run.path}: fitted on {len(val_scores)} validation images ({description}), "
          f"measured on {len(test_scores)} test images; {len(vocabulary.seen)} seen, {len(unseen)} unseen tags.\n")

    probabilities = {"sigmoid(score)": calibration.sigmoid(test_scores)}
    fitted = {}
    for method in calibration.METHODS:
        for pooling in calibration.UNSEEN_POOLINGS:
            name = f"{method}, unseen by {pooling}"
            fitted[name] = calibration.fit_calibration(
                val_scores, val_labels, vocabulary.tags, unseen, method, pooling, config.calibration.min_positives)
            probabilities[name] = fitted[name].probabilities(test_scores)
    errors = {name: evaluation.calibration_errors(p, test_scores, test_labels, unseen, k)
              for name, p in probabilities.items()}
    print(evaluation.format_calibration_table(errors, k))
    # Where the seen tags' error is: test images that show an unseen (novel) object or not.
    default = f"{config.calibration.calibration_method}, unseen by {config.calibration.unseen_pooling}"
    novel = (test_labels[:, list(unseen)] == 1).any(axis=1)
    split_errors = [evaluation.calibration_errors(probabilities[default][rows], test_scores[rows], test_labels[rows],
                                                  unseen, k)[f"ece/seen@{k}"] for rows in (~novel, novel)]
    print(f"\nSeen tags, {default}, ECE top-{k}: {split_errors[0]:.3f} on the {int((~novel).sum())} test images "
          f"without an unseen object, {split_errors[1]:.3f} on the {int(novel.sum())} with one.")

    rows = []
    for name, calibrated in fitted.items():
        for rule, thresholds in (("tuned per tag", calibrated.thresholds),
                                 (f"{calibrated.shared_threshold:.2f} for all", calibrated.shared_threshold)):
            rows.append({"probabilities": name, "thresholds": rule, **evaluation.threshold_metrics(
                probabilities[name], test_labels, thresholds, unseen)})
    print()
    print(evaluation.format_threshold_table(rows))

    if FLAGS.figures_dir:
        from PIL import Image

        os.makedirs(FLAGS.figures_dir, exist_ok=True)
        top = evaluation.top_k_mask(test_scores, k)
        is_unseen = np.zeros(len(vocabulary), dtype=bool)
        is_unseen[list(unseen)] = True
        method = config.calibration.calibration_method
        shown = {"seen": ["sigmoid(score)", default],
                 "unseen": ["sigmoid(score)", f"{method}, unseen by rank", f"{method}, unseen by score"]}
        for split, names in shown.items():
            pairs = top & (is_unseen if split == "unseen" else ~is_unseen)[None, :]
            curves = {name: dict(evaluation.reliability_curve(probabilities[name][pairs], test_labels[pairs]),
                                 ece=errors[name][f"ece/{split}@{k}"]) for name in names}
            picture = render_reliability_diagram(curves, f"{split} tags, demo test split, top-{k} pairs")
            path = os.path.join(FLAGS.figures_dir, f"reliability_{split}.png")
            Image.fromarray(picture).save(path, optimize=True)
            print(f"\nWrote {path}")


if __name__ == "__main__":
    app.run(main)

"""Calibrate a run: `python -m sdl_keras.calibrate --run_dir=runs/demo`.

Fits score -> probability maps and F1-tuned thresholds on the run's validation split (held
out of its training images, or its validation_source; never the test split) and writes
RUN_DIR/calibration.json, which evaluate, export, tag and search then use
(sdl_keras/calibration.py says what is fitted). Settings default to the run's config.json.
"""

from absl import flags

from sdl_keras import cli
from sdl_keras.config import CALIBRATION_METHODS, UNSEEN_POOLINGS

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("run_dir", None, "A run directory (sdl_keras.train).")
    flags.DEFINE_string("checkpoint", None, "Another .keras file of the run to calibrate, e.g. RUN_DIR/best.keras "
                        "(default: RUN_DIR/model.keras); export it with the same --checkpoint.")
    flags.DEFINE_enum("calibration_method", None, list(CALIBRATION_METHODS), "Seen tags' maps (default: the run's).")
    flags.DEFINE_enum("unseen_pooling", None, list(UNSEEN_POOLINGS), "The unseen tags' map pools the seen tags' "
                      "pairs by rank or by score (default: the run's).")
    flags.DEFINE_integer("min_positives", None, "Fewer validation positives: the shared map (default: the run's).")
    flags.DEFINE_float("probability_threshold", None, "A global probability threshold to store (default: the run's; "
                       "none: the tuned thresholds are the default).")
    flags.DEFINE_string("validation_source", None, "Other validation data (default: the run's validation split).")
    flags.mark_flag_as_required("run_dir")


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras.run_dir import RunDirectory
    from sdl_keras.training import calibrate_run

    settings = {name: FLAGS[name].value for name in ("calibration_method", "unseen_pooling", "min_positives",
                                                     "probability_threshold", "validation_source")}
    fitted, ece = calibrate_run(FLAGS.run_dir, FLAGS.checkpoint, **settings)
    print(f"Calibrated {len(fitted.tags)} tags ({len(fitted.unseen)} unseen) on {fitted.fitted_on['images']} "
          f"validation images of {fitted.fitted_on['validation']}: {fitted.method} maps "
          f"({len(fitted.shared)} seen tags on the shared map), unseen tags by {fitted.unseen_pooling}.")
    print(f"Seen-tag ECE on the validation split: {ece['sigmoid(score)']:.3f} as sigmoid(score), "
          f"{ece['calibrated']:.3f} calibrated. Thresholds: tuned per tag, unseen {fitted.unseen_threshold:.3f}, "
          f"one for all {fitted.shared_threshold:.3f}.")
    print(f"Written to {RunDirectory(FLAGS.run_dir).calibration_path}")


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()

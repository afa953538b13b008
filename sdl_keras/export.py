"""Export a run for TF Serving: `python -m sdl_keras.export --run_dir=runs/demo --name=demo`
(or `--flagfile=configs/export.flags`) writes saved_models/<name>/<next version>/ with the
deployment files beside the versions (sdl_keras.saved_model says what the signatures are).
Scoring and image decoding are the run's own (its config.json); a calibrated run
(calibration.json) exports probabilities and an above-threshold mask too."""

from absl import flags

from sdl_keras import cli

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("run_dir", None, "A run directory (sdl_keras.train or sdl_keras.convert --run_dir).")
    flags.DEFINE_string("checkpoint", None, "Another .keras file of the run to export, e.g. RUN_DIR/best.keras "
                        "(default: RUN_DIR/model.keras).")
    flags.DEFINE_string("vocabulary", None, "Another TagVocabulary .npz to export with (default: the run's).")
    flags.DEFINE_string("output_dir", "saved_models", "Exports go to <output_dir>/<name>/<version>/.")
    flags.DEFINE_string("name", None, "The model name (default: the run directory's name).")
    flags.DEFINE_integer("version", 0, "The version to write; 0 picks the next free one.")
    flags.DEFINE_integer("top_k", 10, "Tags that serving_default returns per image.")
    flags.DEFINE_string("serving_base_path", None, "The model's path as TF Serving sees it (default /models/<name>).")
    flags.DEFINE_integer("num_versions", 2, "The newest versions models.config asks TF Serving to serve.")
    flags.DEFINE_string("threshold", None, "Calibrated runs: the above_threshold mask's threshold, 'tuned' (the "
                        "per-tag thresholds) or a probability (default: the calibration's probability_threshold "
                        "if set, else tuned).")
    flags.mark_flag_as_required("run_dir")


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras.saved_model import export_run

    from sdl_keras.calibration import parse_threshold

    threshold = parse_threshold(FLAGS.threshold)
    path, settings = export_run(
        FLAGS.run_dir, FLAGS.output_dir, FLAGS.name, FLAGS.version or None, FLAGS.top_k,
        FLAGS.serving_base_path or None, FLAGS.num_versions, FLAGS.checkpoint, FLAGS.vocabulary, threshold,
    )
    calibrated = "calibrated" if settings["calibrated"] else f"uncalibrated ({settings['reason']})"
    print(f"Exported {FLAGS.checkpoint or FLAGS.run_dir} with {settings['tags']} tags ({settings['unseen']} unseen), "
          f"{settings['aggregation']} aggregation, crop {settings['crop']}, decode {settings['decode_mode']}, "
          f"{calibrated}, to {path}")


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()

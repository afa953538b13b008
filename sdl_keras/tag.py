"""Tag image files offline with an exported SavedModel (no server).

    python -m sdl_keras.tag --model saved_models/demo photos/ extra.jpg --output tags.jsonl
    python -m sdl_keras.tag --model saved_models/demo/3 photos/ --output tags.csv --annotate figures/

    python -m sdl_keras.tag --model saved_models/demo photos/ --threshold=tuned --annotate figures/

Writes JSON lines (image, tags, scores, rows, unseen; probabilities and above_threshold
for a calibrated export) or CSV; an unreadable image gets a line with its error and the
exit status is 1 (sdl_keras/tagging.py).
"""

import sys

from absl import flags

from sdl_keras import cli

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("model", None, "An export folder (saved_models/NAME) or one version of it.", required=True)
    flags.DEFINE_string("output", "-", "Where to write the tags ('-': stdout).")
    flags.DEFINE_enum("format", None, ["jsonl", "csv"], "Output format (default: from --output's suffix, else jsonl).")
    flags.DEFINE_integer("batch_size", 16, "Images per batch.")
    flags.DEFINE_string("annotate", None, "Also write each image with its tags drawn beside it to this folder.")
    flags.DEFINE_string("threshold", None, "A probability, or 'tuned' (the calibration's per-tag thresholds): sets "
                        "above_threshold, and --annotate draws only the tags above it (a calibrated export only; "
                        "default: the export's own mask, all top tags drawn).")


def main(argv):
    from sdl_keras.calibration import parse_threshold
    from sdl_keras.tagging import tag_paths

    tagged, failed, tagger = tag_paths(FLAGS.model, argv[1:], FLAGS.output, FLAGS.format, FLAGS.batch_size,
                                       FLAGS.annotate, parse_threshold(FLAGS.threshold))
    calibrated = "calibrated" if tagger.calibration else "uncalibrated: scores only, no probabilities"
    print(f"Tagged {tagged} of {tagged + failed} images with {tagger.path} ({calibrated})", file=sys.stderr)
    return 1 if failed else 0


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()

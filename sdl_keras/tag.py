"""Tag image files offline with an exported SavedModel (no server).

    python -m sdl_keras.tag --model saved_models/demo photos/ extra.jpg --output tags.jsonl
    python -m sdl_keras.tag --model saved_models/demo/3 photos/ --output tags.csv --annotate figures/

    python -m sdl_keras.tag --model saved_models/demo photos/ --threshold=tuned --annotate figures/
    python -m sdl_keras.tag --model saved_models/clip photos/ --text="a red bicycle" --text="a dog on a beach"

Writes JSON lines (image, tags, scores, rows, unseen; probabilities and above_threshold
for a calibrated export) or CSV; with --text, the given free texts scored, best first; an unreadable image gets a line with its error and the
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
    flags.DEFINE_multi_string("text", [], "A free text to score for every image instead of the export's top tags "
                              "(repeatable): through the export's score_text signature (a run whose tag vectors "
                              "come from a text encoder), or with --tag_encoder through score_tags.")
    cli.define_tag_encoder_flags("Embed --text here with this keras_hub text encoder preset (name or directory; "
                                 "the one the export's run was trained with) and score through score_tags.")


def main(argv):
    from sdl_keras.calibration import parse_threshold
    from sdl_keras.tagging import tag_paths

    tagged, failed, tagger = tag_paths(FLAGS.model, argv[1:], FLAGS.output, FLAGS.format, FLAGS.batch_size,
                                       FLAGS.annotate, parse_threshold(FLAGS.threshold), FLAGS.text,
                                       FLAGS.tag_encoder, FLAGS.tag_templates, FLAGS.tag_encoder_cache)
    calibrated = "calibrated" if tagger.calibration else "uncalibrated: scores only, no probabilities"
    print(f"Tagged {tagged} of {tagged + failed} images with {tagger.path} ({calibrated})", file=sys.stderr)
    return 1 if failed else 0


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()

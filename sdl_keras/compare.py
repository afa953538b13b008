"""Compare the zero-shot methods: train each on the same data, evaluate each the same way,
and write the paper's Table 1 layout (ZSL and GZSL; P/R/F1@K and mAP) for all of them.

    python -m sdl_keras.compare --flagfile=configs/compare.flags [--methods=sdl,conse]
    python -m sdl_keras.compare --flagfile=configs/compare_tag_sources.flags

Every TrainConfig flag sets the shared training configuration (as for sdl_keras.train);
each method then fixes its own fields (sdl_keras.methods) and trains into
COMPARE_DIR/METHOD (with --tag_sources, each method once per tag-vector source, into
COMPARE_DIR/METHOD-SOURCE). Writes COMPARE_DIR/comparison.json (every figure, with a random
ranker's as the chance level) and COMPARE_DIR/comparison.md (the table, produced from
those figures, with the settings it was run with).
"""

import os

from absl import flags

from sdl_keras import cli
from sdl_keras.config import METHODS, TrainConfig

FLAGS = flags.FLAGS


def define_flags():
    cli.define_config_flags(TrainConfig, aliases={"run_dir": "output_dir"})
    flags.DEFINE_list("methods", list(METHODS), "Methods to compare (sdl_keras.methods.METHODS).")
    flags.DEFINE_string("compare_dir", "runs/compare", "Where the runs, comparison.json and comparison.md go.")
    flags.DEFINE_list("tag_sources", [], "Tag-vector sources to run each method with, NAME=FILE (word vectors) or "
                      "NAME=encoder:PRESET (a keras_hub text encoder): rows 'METHOD (NAME)'; default: the "
                      "--word_vectors/--tag_encoder of the shared flags.")
    flags.DEFINE_bool("skip_trained", False, "Reuse a method's run that already holds a model.keras.")


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras import experiments

    config = cli.config_from_flags(TrainConfig)
    sources = experiments.parse_tag_sources(FLAGS.tag_sources)
    results = experiments.compare_methods(config, FLAGS.methods, FLAGS.compare_dir, FLAGS.skip_trained, sources)
    print(experiments.write_comparison(results, config, FLAGS.methods, FLAGS.compare_dir, sources))
    print(f"Written to {os.path.join(FLAGS.compare_dir, 'comparison.md')} and comparison.json")


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()

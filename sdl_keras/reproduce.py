"""Reproduce the paper's result on one dataset: train and evaluate with its paper config
(configs/DATASET.flags) and print the paper's row (Table 1 for nus_wide and open_images,
Table 2 for coco) beside this run's, in the evaluation's layout.

    python -m sdl_keras.reproduce --dataset=nus_wide --data_dir=/data

`--data_dir` replaces the configs' /path/to placeholder (sdl_keras/reproduction.py shows
the layout); README's "Reproducing the paper" says what hardware and time it takes.
"""

from absl import flags

from sdl_keras import cli

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_enum("dataset", None, ["nus_wide", "coco", "open_images"], "The paper's dataset to reproduce.")
    flags.DEFINE_string("data_dir", None, "The folder that replaces /path/to in the paper config's paths.")
    flags.DEFINE_string("config", None, "Another paper flagfile (default: configs/DATASET.flags, from the "
                        "working directory: the repository's root).")
    flags.DEFINE_list("overrides", [], "More training flags: --overrides=--epochs=2,--output_dir=runs/mine.")
    flags.mark_flag_as_required("dataset")


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras.reproduction import reproduce

    run, _, table = reproduce(FLAGS.dataset, FLAGS.data_dir, FLAGS.overrides, FLAGS.config)
    print()
    print(table)
    print(f"\nResults written to {run.results_path}")


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()

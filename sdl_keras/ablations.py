"""The paper's ablation (Table 3): train each of its columns, evaluate it zero-shot, and
write a Markdown table with the paper's NUS-WIDE mAP for each column beside this run's.

    python -m sdl_keras.ablations --flagfile=configs/ablations.flags

Each trainable column of Table 3 is a flagfile named after its label holding only its
switches (configs/ablation_{impl,base,a,b,c,d,f,ours}.flags: num_rows, aggregation,
diversity_weight, reg_weight; the first comment line describes the column); the data and the rest of the
recipe come from `--base_flagfile` (the demo's by default), so the same files ablate
any dataset. One of them trains alone with the training CLI:
`python -m sdl_keras.train --flagfile=configs/demo.flags --flagfile=configs/ablation_impl.flags`.
Every run writes its hyperparameters to TensorBoard: `tensorboard --logdir ABLATIONS_DIR`
compares them in the HParams dashboard (sdl_keras/experiments.py).
"""

import os

from absl import flags

from sdl_keras import cli

FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("base_flagfile", "configs/demo.flags", "Training flags shared by every ablation (the data).")
    flags.DEFINE_list("ablations", ["configs/ablation_*.flags"], "Ablation flagfiles (globs allowed), in table order "
                      "(configs/ablations.flags lists Table 3's columns in the paper's order).")
    flags.DEFINE_string("ablations_dir", "runs/ablations", "One run directory per ablation goes here.")
    flags.DEFINE_list("overrides", [], "More training flags for every run: --overrides=--epochs=2,--jit_compile=false.")
    flags.DEFINE_string("table", None, "Markdown table output; default ABLATIONS_DIR/table.md.")


def main(argv):
    cli.no_arguments(argv)
    from sdl_keras import experiments

    rows = experiments.run_ablations(experiments.expand(FLAGS.ablations), FLAGS.base_flagfile, FLAGS.ablations_dir,
                                     FLAGS.overrides)
    path = FLAGS.table or os.path.join(FLAGS.ablations_dir, "table.md")
    print(experiments.write_ablation_table(rows, path))
    print(f"Table written to {path}")


def run():
    cli.run(main, define_flags)


if __name__ == "__main__":
    run()

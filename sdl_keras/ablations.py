"""The paper's ablation (Table 3): train each configuration, evaluate it zero-shot, and
write a Markdown table.

`python -m sdl_keras.ablations --flagfile=configs/ablations.flags`

Each ablation is a flagfile holding only its switches (configs/ablation_*.flags:
num_rows, aggregation, diversity_weight, reg_weight); the data and the rest of the
recipe come from `--base_flagfile` (the demo's by default), so the same files ablate
any dataset. One of them trains alone with the training CLI:
`python -m sdl_keras.train --flagfile=configs/demo.flags --flagfile=configs/ablation_fast0tag.flags`.
Every run writes its hyperparameters to TensorBoard: `tensorboard --logdir OUTPUT_DIR`
compares them in the HParams dashboard.
"""

import glob
import json
import logging
import os

from absl import app, flags

from sdl_keras import cli, inference, training

logger = logging.getLogger(__name__)

flags.DEFINE_string("base_flagfile", "configs/demo.flags", "Training flags shared by every ablation (the data).")
flags.DEFINE_list("ablations", ["configs/ablation_*.flags"], "Ablation flagfiles (globs allowed), in table order.")
flags.DEFINE_string("ablations_dir", "runs/ablations", "One run directory per ablation goes here.")
flags.DEFINE_list("overrides", [], "More training flags for every run: --overrides=--epochs=2,--jit_compile=false.")
flags.DEFINE_string("table", None, "Markdown table output; default ABLATIONS_DIR/table.md.")
FLAGS = flags.FLAGS

# The switches each row of the table states.
_SWITCHES = ("num_rows", "aggregation", "diversity_weight", "reg_weight")


def ablation_name(flagfile):
    """`configs/ablation_sdw.flags` -> "sdw"."""
    name = os.path.splitext(os.path.basename(flagfile))[0]
    return name[len("ablation_"):] if name.startswith("ablation_") else name


def ablation_description(flagfile):
    """The first comment line of a flagfile, without "#"."""
    with open(flagfile, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return ""


def config_from_flagfiles(flagfiles, overrides=()):
    """A TrainConfig from flagfiles (later ones win) and extra "--flag=value" strings,
    parsed as the training CLI parses them."""
    flag_values = flags.FlagValues()
    cli.define_config_flags(training.TrainConfig, training.FIELD_HELP, flag_values=flag_values)
    for path in flagfiles:
        if not os.path.exists(path):
            raise FileNotFoundError(f"Flagfile not found: {path}")
    flag_values(["ablations", *[f"--flagfile={path}" for path in flagfiles], *overrides])
    return cli.config_from_flags(training.TrainConfig, flag_values)


def expand(patterns):
    """Flagfiles from paths and globs, in order, each once."""
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches:
            raise FileNotFoundError(f"No ablation flagfile matches {pattern!r}.")
        files += [m for m in matches if m not in files]
    return files


def run_ablations(flagfiles, base_flagfile, output_dir, overrides=()):
    """Trains and evaluates each ablation; returns {name: row} with the switches, the
    description and the run's `evaluate_scores` figures (zero-shot, on the test split)."""
    import keras

    rows = {}
    for flagfile in flagfiles:
        name = ablation_name(flagfile)
        run_dir = os.path.join(output_dir, name)
        config = config_from_flagfiles([base_flagfile, flagfile], [*overrides, f"--output_dir={run_dir}"])
        logger.info("Ablation %s: %s", name, {key: getattr(config, key) for key in _SWITCHES})
        keras.backend.clear_session()
        training.train(config)
        results = inference.evaluate_run(run_dir, progress=False)["model"]
        rows[name] = {
            "description": ablation_description(flagfile),
            **{key: getattr(config, key) for key in _SWITCHES},
            "results": results,
        }
        with open(os.path.join(run_dir, "ablation.json"), "w", encoding="utf-8") as f:
            json.dump(rows[name], f, indent=2)
    return rows


def markdown_table(rows, k=3):
    """The ablation rows as the paper's Table 3: switches, ZSL and GZSL mAP and F1@k."""
    lines = [
        f"| Ablation | M | Aggregation | Diversity weight | Regularization | ZSL mAP | ZSL F1@{k} "
        f"| GZSL mAP | GZSL F1@{k} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        results = row["results"]
        reg = "-" if row["reg_weight"] is None or row["num_rows"] == 1 else f"{row['reg_weight']:g}"
        lines.append(
            f"| {row['description'] or name} | {row['num_rows']} | {row['aggregation']} "
            f"| {'yes' if row['diversity_weight'] else 'no'} | {reg} "
            f"| {results['zsl/mAP']:.1f} | {results[f'zsl/F1@{k}']:.1f} "
            f"| {results['gzsl/mAP']:.1f} | {results[f'gzsl/F1@{k}']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    cli.setup_logging()
    rows = run_ablations(expand(FLAGS.ablations), FLAGS.base_flagfile, FLAGS.ablations_dir, FLAGS.overrides)
    table = markdown_table(rows)
    path = FLAGS.table or os.path.join(FLAGS.ablations_dir, "table.md")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    print(f"Table written to {path}")


if __name__ == "__main__":
    app.run(main)

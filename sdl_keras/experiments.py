"""Experiments over several runs: the paper's ablation (Table 3) and the comparison of the
zero-shot methods (Table 1's layout), each a set of training runs evaluated alike. The
libraries of `python -m sdl_keras.ablations` and `python -m sdl_keras.compare`."""

import glob
import logging
import os

from absl import flags

from sdl_keras import cli, evaluation, inference, paper
from sdl_keras.config import TrainConfig
from sdl_keras.methods import get_method
from sdl_keras.run_dir import RunDirectory
from sdl_keras.training import train

logger = logging.getLogger(__name__)

# The switches each row of the table states.
_SWITCHES = ("num_rows", "aggregation", "diversity_weight", "reg_weight")


def ablation_name(flagfile):
    """`configs/ablation_ours.flags` -> "ours" (the paper's Table 3 column, `paper.TABLE3`)."""
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
    cli.define_config_flags(TrainConfig, flag_values=flag_values, aliases={"run_dir": "output_dir"})
    for path in flagfiles:
        if not os.path.exists(path):
            raise FileNotFoundError(f"Flagfile not found: {path}")
    flag_values(["ablations", *[f"--flagfile={path}" for path in flagfiles], *overrides])
    return cli.config_from_flags(TrainConfig, flag_values)


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
        switches = {key: config.flat()[key] for key in _SWITCHES}
        logger.info("Ablation %s: %s", name, switches)
        keras.backend.clear_session()
        train(config)
        results = inference.evaluate_run(run_dir, progress=False)["model"]
        rows[name] = {
            "description": ablation_description(flagfile),
            **switches,
            "results": results,
        }
        RunDirectory(run_dir).write_results(rows[name], os.path.join(run_dir, "ablation.json"))
    return rows


def markdown_table(rows, k=3):
    """The ablation rows as the paper's Table 3: each column's switches, this run's ZSL and
    GZSL mAP and F1@k, and beside them the paper's NUS-WIDE ZS / GZS mAP for that column
    (`paper.TABLE3`; "-" for a row the paper has no column for). The paper's Orig column
    (Fast0Tag's original implementation, which nothing here trains) comes first, paper only."""
    lines = [
        f"| Column | Ablation | M | Aggregation | SDW | Regularization | ZSL mAP | ZSL F1@{k} | GZSL mAP "
        f"| GZSL F1@{k} | paper ZS mAP | paper GZS mAP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in paper.PAPER_ONLY:
        label, gzs, zs = paper.TABLE3[name]
        lines.append(f"| {label} | Fast0Tag, its original implementation (paper only) | 1 | max | no | - "
                     f"| - | - | - | - | {zs:.1f} | {gzs:.1f} |")
    for name, row in rows.items():
        results = row["results"]
        label, gzs, zs = paper.TABLE3.get(name, (name, None, None))
        reported = f"{zs:.1f} | {gzs:.1f}" if zs is not None else "- | -"
        reg = "-" if row["reg_weight"] is None or row["num_rows"] == 1 else f"{row['reg_weight']:g}"
        description = (row["description"] or name).split(": ", 1)[-1]
        lines.append(
            f"| {label} | {description} | {row['num_rows']} | {row['aggregation']} "
            f"| {'yes' if row['diversity_weight'] else 'no'} | {reg} "
            f"| {results['zsl/mAP']:.1f} | {results[f'zsl/F1@{k}']:.1f} "
            f"| {results['gzsl/mAP']:.1f} | {results[f'gzsl/F1@{k}']:.1f} | {reported} |"
        )
    return "\n".join(lines) + "\n"


RANDOM = "random scores"


def compare_methods(base_config, methods, compare_dir, skip_trained=False):
    """Trains and evaluates each method; returns {method: evaluate_scores result, RANDOM: ...}."""
    for method in methods:
        get_method(method)  # unknown names fail before any training
    results = {}
    for method in methods:
        run = RunDirectory(os.path.join(compare_dir, method))
        if not (skip_trained and os.path.exists(run.model_path)):
            train(base_config.replace(method=method, output_dir=run.path))
        evaluated = inference.evaluate_run(run.path, progress=False)
        run.write_results(evaluated)
        results[method] = evaluated["model"]
        results.setdefault(RANDOM, evaluated["random"])
    # The chance level last, under the methods.
    results[RANDOM] = results.pop(RANDOM)
    return results


def comparison_markdown(results, config, methods):
    """The comparison as Markdown: what was run, then the table."""
    c = config.flat()
    ks = tuple(c["ks"])
    settings = (
        f"dataset `{c['dataset']}` (train `{c['train_source']}`, test `{c['test_source']}`), backbone "
        f"`{c['backbone']}` at {c['image_size']}px, {c['epochs']} epochs of batch {c['batch_size']}, "
        f"learning rate {c['learning_rate']}; SDL with M={c['num_rows']}, lambda={c['reg_weight']}; "
        f"CONSE T={c['conse_top_t']}; Semantic Softmax L2 weight {c['semantic_softmax_l2']}"
    )
    zsl_images = next(iter(results.values()))["zsl/num_images"]
    gzsl_images = next(iter(results.values()))["gzsl/num_images"]
    return "\n".join([
        f"Methods: {', '.join(methods)}; {settings}.",
        f"ZSL: unseen tags, {zsl_images} test images with an unseen tag; GZSL: all tags, {gzsl_images} images. "
        "Figures in percent.",
        "",
        "```",
        evaluation.format_table(results, ks),
        "```",
        "",
    ])




def write_ablation_table(rows, path):
    """The ablation table (`markdown_table`) written to `path`; returns the table."""
    table = markdown_table(rows)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(table)
    return table


def write_comparison(results, config, method_names, compare_dir):
    """COMPARE_DIR/comparison.json (every figure) and comparison.md (the table); returns the table."""
    from sdl_keras.atomic import write_json_atomically

    write_json_atomically(os.path.join(compare_dir, "comparison.json"), results, sort_keys=False)  # table order
    table = comparison_markdown(results, config, method_names)
    with open(os.path.join(compare_dir, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(table)
    return table

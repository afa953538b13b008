"""Compare the zero-shot methods: train each on the same data, evaluate each the same way,
and write the paper's Table 1 layout (ZSL and GZSL; P/R/F1@K and mAP) for all of them.

    python -m sdl_keras.compare --flagfile=configs/compare.flags [--methods=sdl,conse]

Every TrainConfig flag sets the shared training configuration (as for sdl_keras.train);
each method then fixes its own fields (sdl_keras.baselines) and trains into
COMPARE_DIR/METHOD. Writes COMPARE_DIR/comparison.json (every figure, with a random
ranker's as the chance level) and COMPARE_DIR/comparison.md (the table, produced from
those figures, with the settings it was run with).
"""

import dataclasses
import json
import os

from absl import app, flags

from sdl_keras import baselines, cli, evaluation, inference, training

cli.define_config_flags(training.TrainConfig, training.FIELD_HELP)
flags.DEFINE_list("methods", list(baselines.METHODS), "Methods to compare (sdl_keras.baselines.METHODS).")
flags.DEFINE_string("compare_dir", "runs/compare", "Where the runs, comparison.json and comparison.md go.")
flags.DEFINE_bool("skip_trained", False, "Reuse a method's run that already holds a model.keras.")
FLAGS = flags.FLAGS

RANDOM = "random scores"


def compare_methods(base_config, methods, compare_dir, skip_trained=False):
    """Trains and evaluates each method; returns {method: evaluate_scores result, RANDOM: ...}."""
    for method in methods:
        baselines.get_method(method)  # unknown names fail before any training
    results = {}
    for method in methods:
        run_dir = os.path.join(compare_dir, method)
        if not (skip_trained and os.path.exists(os.path.join(run_dir, training.MODEL_FILE))):
            training.train(dataclasses.replace(base_config, method=method, output_dir=run_dir))
        evaluated = inference.evaluate_run(run_dir, progress=False)
        inference.write_results(evaluated, os.path.join(run_dir, "results.json"))
        results[method] = evaluated["model"]
        results.setdefault(RANDOM, evaluated["random"])
    # The chance level last, under the methods.
    results[RANDOM] = results.pop(RANDOM)
    return results


def comparison_markdown(results, config, methods):
    """The comparison as Markdown: what was run, then the table."""
    ks = tuple(config.ks)
    settings = (
        f"dataset `{config.dataset}` (train `{config.train_source}`, test `{config.test_source}`), backbone "
        f"`{config.backbone}` at {config.image_size}px, {config.epochs} epochs of batch {config.batch_size}, "
        f"learning rate {config.learning_rate}; SDL with M={config.num_rows}, lambda={config.reg_weight}; "
        f"CONSE T={config.conse_top_t}; Semantic Softmax L2 weight {config.semantic_softmax_l2}"
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


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"Unexpected arguments: {argv[1:]}")
    cli.setup_logging()
    config = cli.config_from_flags(training.TrainConfig)
    results = compare_methods(config, FLAGS.methods, FLAGS.compare_dir, FLAGS.skip_trained)
    os.makedirs(FLAGS.compare_dir, exist_ok=True)
    with open(os.path.join(FLAGS.compare_dir, "comparison.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    table = comparison_markdown(results, config, FLAGS.methods)
    with open(os.path.join(FLAGS.compare_dir, "comparison.md"), "w", encoding="utf-8") as f:
        f.write(table)
    print(table)
    print(f"Written to {os.path.join(FLAGS.compare_dir, 'comparison.md')} and comparison.json")


if __name__ == "__main__":
    app.run(main)

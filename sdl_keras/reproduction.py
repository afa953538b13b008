"""Reproducing the paper: train and evaluate with a paper config, and print the paper's
row beside this run's in the evaluation's layout (the library of `python -m
sdl_keras.reproduce`).

The paper configs (`PAPER_CONFIGS`) name their files under the placeholder `/path/to/`;
`data_dir` replaces it, so one folder laid out as the configs' comments describe serves:

    DATA_DIR/NUS-WIDE/..., DATA_DIR/nus_wide/{tags.txt, unseen_tags.txt, word_vectors.npy}
    DATA_DIR/coco/{annotations/, train2014/, val2014/, lists/, classes.txt, word_vectors.npy}
    DATA_DIR/open_images/records/...,  DATA_DIR/tresnet_m.weights.h5 (timm's ImageNet TResNet-M, converted)
"""

import dataclasses
import os

from sdl_keras import evaluation, experiments, inference, paper
from sdl_keras.run_dir import RunDirectory

PLACEHOLDER = "/path/to"
# Relative to the working directory, as every command's flagfile: the repository's root.
PAPER_CONFIGS = {dataset: os.path.join("configs", f"{dataset}.flags") for dataset in ("nus_wide", "coco", "open_images")}


def paper_config(dataset, data_dir=None, overrides=(), flagfile=None):
    """The TrainConfig of the paper's run on `dataset`: its flagfile (configs/DATASET.flags)
    with `overrides` ("--flag=value"), then `/path/to` replaced by `data_dir` in every path."""
    if dataset not in PAPER_CONFIGS:
        raise ValueError(f"No paper config for dataset {dataset!r}; expected one of {sorted(PAPER_CONFIGS)}.")
    config = experiments.config_from_flagfiles([flagfile or PAPER_CONFIGS[dataset]], overrides)
    if not data_dir:
        return config
    root = os.path.abspath(data_dir)
    return config.replace(**{name: root + value[len(PLACEHOLDER):] for name, value in config.flat().items()
                             if isinstance(value, str) and value.startswith(PLACEHOLDER + "/")})


def comparison_table(dataset, results, run_name="SDL (this run)"):
    """The paper's row for `dataset` (`paper.reported`) above this run's `evaluate_scores`
    figures, in `evaluation.format_table`'s layout, at the paper's K."""
    table, reported = paper.reported(dataset)
    ks = sorted({int(key.split("@")[1]) for key in reported if "@" in key})
    label = f"Ours (paper, {table})"
    return evaluation.format_table({label: reported, run_name: results}, ks)


def reproduce(dataset, data_dir=None, overrides=(), flagfile=None, train=None):
    """Trains with the paper config (`paper_config`), evaluates the run as `sdl_keras.evaluate`
    does (its results.json), and returns (run directory, results, the comparison table).
    `train` is the training function (default `sdl_keras.training.train`)."""
    if train is None:
        from sdl_keras.training import train
    config = paper_config(dataset, data_dir, overrides, flagfile)
    if PLACEHOLDER in " ".join(str(v) for v in dataclasses.asdict(config.data).values()):
        raise ValueError(f"The config still names {PLACEHOLDER}/... paths: pass --data_dir (or override them).")
    train(config)
    run = RunDirectory(config.runtime.output_dir)
    results = inference.evaluate_run(run.path, progress=False)
    run.write_results(results)
    return run, results, comparison_table(dataset, results["model"])

"""Train an SDL model: `python -m sdl_keras.train --flagfile=configs/demo.flags`.

A thin CLI over `sdl_keras.training.train`; every TrainConfig field is a flag.
"""

from absl import app

from sdl_keras import cli, training

HELP = {
    "dataset": "Reader from pipelines.datasets: manifest, nus_wide, coco, open_images.",
    "train_source": "Training data: a manifest file or a dataset root folder.",
    "test_source": "Test data (used by sdl_keras.evaluate): a manifest file or a dataset root folder.",
    "tags": "Tag list file, one tag per line (seen and unseen).",
    "word_vectors": "Vectors: .vec/.txt/.bin word vectors, .npy/.npz, or official pickles.",
    "unseen_tags": "File listing the unseen (zero-shot) tags, one per line.",
    "allow_pickle": "Allow reading pickled vector files (unpickling runs code: trusted files only).",
    "backbone": "Backbone name (sdl_keras.models.backbones).",
    "backbone_weights": "Backbone weights: a file, 'imagenet', or none.",
    "num_rows": "M, principal directions per image (1 = Fast0Tag).",
    "reg_weight": "Regularization weight lambda (0.3 in the paper), or none.",
    "diversity_weight": "Apply the semantic diversity weight (equation 3).",
    "normalization": "Loss normalization: official (released code) or paper (equation 5).",
    "aggregation": "Score aggregation over rows: max (SDL) or l2 (baseline).",
    "max_positives": "Static bound on positives per image in the loss; none = from the data.",
    "steps_per_epoch": "Steps per epoch (repeats the data); none = one pass.",
    "jit_compile": "Compile the training step with XLA.",
    "ks": "K values of P/R/F1@K.",
    "output_dir": "Run directory: model.keras, vocabulary.npz, config.json, logs/.",
}

cli.define_config_flags(training.TrainConfig, HELP)


def main(argv):
    del argv
    cli.setup_logging()
    config = cli.config_from_flags(training.TrainConfig)
    training.train(config)
    print(f"Run written to {config.output_dir}")


if __name__ == "__main__":
    app.run(main)

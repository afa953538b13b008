"""Training an SDL model with `model.fit`: the typed run configuration and the steps
a user can call from their own script (the `sdl_keras.train` CLI is a thin layer
over `train`).

A run directory holds:
  model.keras       the trained Keras model (images -> A)
  vocabulary.npz    the TagVocabulary (all tags, seen and unseen, with vectors)
  config.json       the TrainConfig
  logs/             TensorBoard logs
"""

import dataclasses
import json
import logging
import os
from typing import Optional

import keras
import numpy as np

from sdl_keras.embeddings import TagVocabulary
from sdl_keras.losses import SDLLoss, max_positives_needed
from sdl_keras.metrics import SDLMetrics
from sdl_keras.models import build_sdl_model

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
VOCABULARY_FILE = "vocabulary.npz"
CONFIG_FILE = "config.json"


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as config.json in the run directory."""

    # Data: a reader from pipelines.datasets and where it reads each split.
    dataset: str = "manifest"
    train_source: str = ""
    test_source: str = ""
    # Vocabulary: tag list, vectors (any load_tag_vectors format), unseen tags.
    tags: str = ""
    word_vectors: str = ""
    unseen_tags: str = ""
    allow_pickle: bool = False
    # Model.
    backbone: str = "tresnet_m"
    backbone_weights: Optional[str] = None
    image_size: int = 224
    num_rows: int = 7
    dropout: float = 0.0
    # Loss (sdl_keras.losses.SDLLoss).
    reg_weight: Optional[float] = 0.3
    diversity_weight: bool = True
    normalization: str = "official"
    aggregation: str = "max"
    unknown_as_negative: bool = True
    max_positives: Optional[int] = None
    # Optimization: Adam(W) with a one-cycle cosine schedule (paper, Sec. 4.1).
    batch_size: int = 192
    epochs: int = 7
    learning_rate: float = 1e-4
    weight_decay: float = 3e-4
    warmup_fraction: float = 0.2
    steps_per_epoch: Optional[int] = None
    jit_compile: bool = True
    seed: int = 0
    ks: tuple = (3, 5)
    output_dir: str = "runs/sdl"
    verbose: int = 1

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=2)

    @classmethod
    def load(cls, path):
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise KeyError(f"{path}: unknown TrainConfig key(s) {sorted(unknown)}.")
        if "ks" in values:
            values["ks"] = tuple(values["ks"])
        return cls(**values)


def load_vocabulary(config):
    """The run's TagVocabulary from the files the config names."""
    for field in ("tags", "word_vectors"):
        if not getattr(config, field):
            raise ValueError(f"TrainConfig.{field} is empty: the vocabulary needs a tag list and vectors.")
    return TagVocabulary.from_files(
        config.tags, config.word_vectors, config.unseen_tags or None, allow_pickle=config.allow_pickle
    )


def seen_labels(labels, vocabulary, source=""):
    """Training labels restricted to the seen tags; an unseen positive in training is an error
    (it would leak the zero-shot tags into training)."""
    labels = np.asarray(labels)
    if vocabulary.unseen:
        leaked = np.nonzero((labels[:, list(vocabulary.unseen)] == 1).any(axis=0))[0]
        if leaked.size:
            names = [vocabulary.unseen_tags[i] for i in leaked[:10]]
            raise ValueError(f"{source}: training images are labelled with unseen tag(s) {names}.")
    return labels[:, list(vocabulary.seen)]


def learning_rate_schedule(config, total_steps):
    """One-cycle cosine: warm up from lr/25 to the maximum lr, then cosine down to ~0."""
    warmup = int(config.warmup_fraction * total_steps)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 25.0,
        decay_steps=max(total_steps - warmup, 1),
        alpha=1e-3,
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
    )


def build_optimizer(config, total_steps):
    """AdamW with decoupled weight decay, none on BatchNorm parameters and biases."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(config, total_steps), weight_decay=config.weight_decay
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def build_compiled_model(config, vocabulary, max_positives, total_steps):
    """The SDL model compiled with SDLLoss over the seen tags and SDLMetrics."""
    model = build_sdl_model(
        backbone=config.backbone,
        num_rows=config.num_rows,
        embed_dim=vocabulary.dim,
        image_size=config.image_size,
        backbone_weights=config.backbone_weights,
        dropout=config.dropout,
    )
    seen_vectors = vocabulary.seen_vectors
    loss = SDLLoss(
        seen_vectors,
        reg_weight=config.reg_weight,
        diversity_weight=config.diversity_weight,
        normalization=config.normalization,
        aggregation=config.aggregation,
        unknown_as_negative=config.unknown_as_negative,
        max_positives=max_positives,
    )
    metrics = [SDLMetrics(seen_vectors, ks=config.ks, aggregation=config.aggregation, name="seen")]
    model.compile(
        optimizer=build_optimizer(config, total_steps),
        loss=loss,
        metrics=metrics,
        jit_compile=config.jit_compile,
    )
    return model


def train(config, callbacks=()):
    """Reads the data, trains with `model.fit` and writes the run directory.

    Returns:
        (model, history, vocabulary).
    """
    from pipelines.data import check_positives_bound, image_label_dataset
    from pipelines.datasets import load_split

    keras.utils.set_random_seed(config.seed)
    vocabulary = load_vocabulary(config)
    train_images = load_split(config.dataset, config.train_source, "train", vocabulary.tags)
    if not len(train_images):
        raise ValueError(f"{config.train_source}: no training images.")
    labels = seen_labels(train_images.labels, vocabulary, config.train_source)
    max_positives = config.max_positives or max(max_positives_needed(labels), 1)
    check_positives_bound(labels, max_positives, train_images.ids)
    logger.info(
        "Training on %d images, %d seen tags (%d unseen held out), loss bound P=%d positives per image.",
        len(train_images), labels.shape[1], len(vocabulary.unseen), max_positives,
    )
    dataset = image_label_dataset(
        train_images.paths,
        labels,
        config.image_size,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        repeat=config.steps_per_epoch is not None,
        drop_remainder=True,
    )
    steps = config.steps_per_epoch or max(len(train_images) // config.batch_size, 1)
    model = build_compiled_model(config, vocabulary, max_positives, steps * config.epochs)

    os.makedirs(config.output_dir, exist_ok=True)
    vocabulary.save(os.path.join(config.output_dir, VOCABULARY_FILE))
    config.save(os.path.join(config.output_dir, CONFIG_FILE))
    history = model.fit(
        dataset,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        callbacks=[
            keras.callbacks.TensorBoard(os.path.join(config.output_dir, "logs")),
            keras.callbacks.TerminateOnNaN(),
            *callbacks,
        ],
        verbose=config.verbose,
    )
    model.save(os.path.join(config.output_dir, MODEL_FILE))
    return model, history, vocabulary

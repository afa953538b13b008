"""Training an SDL model with `model.fit`: the typed run configuration and the steps
a user can call from their own script (the `sdl_keras.train` CLI is a thin layer
over `train`).

A run directory holds:
  model.keras       the trained Keras model (images -> A)
  best.keras        the model of the epoch with the best validation ZSL mAP
  vocabulary.npz    the TagVocabulary (all tags, seen and unseen, with vectors)
  config.json       the TrainConfig
  metrics.json      the last epoch's logs (training metrics, zero-shot figures)
  logs/             TensorBoard logs (docs/training.md lists the dashboards)
  backup/           the BackupAndRestore state while training runs (removed at the end)

Under a multi-worker strategy only the chief writes the run directory
(`distribute.write_directory`).
"""

import contextlib
import dataclasses
import json
import logging
import os
from typing import Optional

import keras
import numpy as np

from pipelines.augment import Augmentation
from sdl_keras import baselines, distribute
from sdl_keras.callbacks import (
    BackupAndRestore,
    BestModelCheckpoint,
    ZeroShotEvaluation,
    save_model_atomically,
    write_json_atomically,
)
from sdl_keras.dashboards import LossParts, TensorBoardDashboards, hparams_of
from sdl_keras.embeddings import TagVocabulary
from sdl_keras.losses import SDLLoss, max_positives_needed
from sdl_keras.metrics import SDLMetrics
from sdl_keras.models import build_sdl_model

logger = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
VOCABULARY_FILE = "vocabulary.npz"
CONFIG_FILE = "config.json"
BEST_MODEL_FILE = "best.keras"
METRICS_FILE = "metrics.json"
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on; saved as config.json in the run directory."""

    # Data: a reader from pipelines.datasets, or "tfrecord" (shards of pipelines.to_tfrecord),
    # and where it reads each split.
    dataset: str = "manifest"
    train_source: str = ""
    test_source: str = ""
    # Unreadable training images: skipped and counted per epoch, or (strict) an error.
    strict: bool = False
    # Vocabulary: tag list, vectors (any load_tag_vectors format), unseen tags.
    tags: str = ""
    word_vectors: str = ""
    unseen_tags: str = ""
    allow_pickle: bool = False
    # Method: "sdl" or a baseline (sdl_keras.baselines: fast0tag, l2, conse, semantic_softmax),
    # with CONSE's T and the weight of Semantic Softmax's L2 constraint.
    method: str = "sdl"
    conse_top_t: int = 10
    semantic_softmax_l2: float = 0.1
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
    ema_momentum: Optional[float] = None
    augment: bool = False
    cutout_rate: float = 0.5
    # Execution (sdl_keras.distribute): strategy, XLA, precision.
    strategy: str = "default"
    jit_compile: bool = True
    xla_mode: str = "auto"
    precision: str = "float32"
    sync_batch_norm: bool = True
    # Fault tolerance and the zero-shot evaluation during training.
    backup_steps: Optional[int] = None
    validation_source: str = ""
    eval_every: int = 1
    dashboard_images: int = 8
    seed: int = 0
    ks: tuple = (3, 5)
    output_dir: str = "runs/sdl"
    verbose: int = 1

    def __post_init__(self):
        choices = {
            "strategy": distribute.STRATEGIES, "xla_mode": distribute.XLA_MODES, "precision": PRECISIONS,
            "method": tuple(baselines.METHODS),
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"TrainConfig.{field}={getattr(self, field)!r}; choose one of {allowed}.")
        if self.ema_momentum is not None and not 0.0 < self.ema_momentum < 1.0:
            raise ValueError(f"TrainConfig.ema_momentum must be in (0, 1) or None, got {self.ema_momentum}.")
        if self.backup_steps is not None and self.backup_steps < 1:
            raise ValueError(f"TrainConfig.backup_steps must be >= 1 or None, got {self.backup_steps}.")

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


# Flag help of each TrainConfig field (the CLIs' --help).
FIELD_HELP = {
    "dataset": "Reader from pipelines.datasets: manifest, nus_wide, coco, open_images; or tfrecord: "
    "shards written by pipelines.to_tfrecord, streamed (no label matrix in memory; what Open Images needs).",
    "train_source": "Training data: a manifest file or a dataset root folder; for tfrecord, the records folder "
    "(its train-*.tfrecord shards) or a glob of shards.",
    "test_source": "Test data (used by sdl_keras.evaluate): a manifest file or a dataset root folder; for "
    "tfrecord, the records folder (its test-*.tfrecord shards) or a glob of shards.",
    "strict": "Stop with an error naming the first unreadable training image, instead of skipping and counting "
    "unreadable images (the count is logged each epoch).",
    "tags": "Tag list file, one tag per line (seen and unseen).",
    "word_vectors": "Vectors: .vec/.txt/.bin word vectors, .npy/.npz, or official pickles.",
    "unseen_tags": "File listing the unseen (zero-shot) tags, one per line.",
    "allow_pickle": "Allow reading pickled vector files (unpickling runs code: trusted files only).",
    "method": "sdl, or a baseline: fast0tag, l2, conse, semantic_softmax (docs/baselines.md).",
    "conse_top_t": "CONSE: T, the top seen tags whose vectors embed an image (10 in the paper).",
    "semantic_softmax_l2": "Semantic Softmax: weight of the L2 constraint between features and prototypes.",
    "backbone": "Backbone name (sdl_keras.models.backbones).",
    "backbone_weights": "Backbone weights: a file, 'imagenet', or none.",
    "num_rows": "M, principal directions per image (1 = Fast0Tag).",
    "reg_weight": "Regularization weight lambda (0.3 in the paper), or none.",
    "diversity_weight": "Apply the semantic diversity weight (equation 3).",
    "normalization": "Loss normalization: official (released code) or paper (equation 5).",
    "aggregation": "Score aggregation over rows: max (SDL) or l2 (baseline).",
    "max_positives": "Static bound on positives per image in the loss; none = from the data (tfrecord: from "
    "the statistics recorded at conversion).",
    "steps_per_epoch": "Steps per epoch; none = the training images / batch_size (tfrecord: the records counted "
    "at conversion).",
    "batch_size": "Global batch size (split over the replicas of a strategy).",
    "learning_rate": "Maximum learning rate of the one-cycle cosine schedule.",
    "weight_decay": "AdamW's decoupled weight decay (not on biases and BatchNorm).",
    "warmup_fraction": "Fraction of the steps warming the learning rate up to its maximum.",
    "ema_momentum": "Keep an EMA of the weights with this momentum (e.g. 0.9997); evaluated and saved.",
    "augment": "Training augmentation in the model: random resized crop, flip, Cutout.",
    "cutout_rate": "Probability of Cutout per image (0.5 in the paper).",
    "strategy": "Distribution: default (one device), mirrored (local GPUs), multi_worker (TF_CONFIG).",
    "jit_compile": "Use XLA (how: --xla_mode); false = no XLA.",
    "xla_mode": "auto (jit on one replica, auto_clustering on several), jit, auto_clustering, off.",
    "precision": "float32, mixed_float16 (with loss scaling) or mixed_bfloat16.",
    "sync_batch_norm": "Under a strategy, BatchNorm statistics over the global batch.",
    "backup_steps": "Back up the training state every N steps; none = at each epoch's end.",
    "validation_source": "Zero-shot evaluation data during training; empty = test_source.",
    "eval_every": "Run the zero-shot evaluation every N epochs (0 = never).",
    "dashboard_images": "Validation images shown with their top tags in TensorBoard.",
    "ks": "K values of P/R/F1@K.",
    "output_dir": "Run directory: model.keras, best.keras, vocabulary.npz, config.json, metrics.json, logs/.",
}


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
    """AdamW with decoupled weight decay, none on BatchNorm parameters and biases; with
    `ema_momentum`, an exponential moving average of the weights (the official code
    evaluates such an EMA model), which replaces the weights when training ends; under
    float16, dynamic loss scaling."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate_schedule(config, total_steps),
        weight_decay=config.weight_decay,
        use_ema=config.ema_momentum is not None,
        ema_momentum=config.ema_momentum or 0.99,
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    if config.precision == "mixed_float16":
        # float16 gradients underflow without it; bfloat16 has float32's exponent range.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


@contextlib.contextmanager
def precision_policy(name):
    """Keras' global dtype policy set to `name` while layers are created, then restored
    (a layer keeps the policy it was created with)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_compiled_model(config, vocabulary, max_positives, total_steps, jit_compile=None):
    """The SDL model compiled with SDLLoss over the seen tags, SDLMetrics and LossParts.

    The model computes in `config.precision`; its output A (the MatrixHead is float32),
    the loss, the scores and the metrics are float32. Build it inside `strategy.scope()`
    to distribute it. `jit_compile` defaults to `config.jit_compile`. A baseline method
    (`config.method`) gets its own trainer over the same backbone (sdl_keras.baselines).
    """
    config = baselines.resolve_config(config)
    with precision_policy(config.precision):
        augmentation = None
        if config.augment:
            augmentation = [Augmentation(cutout_rate=config.cutout_rate, seed=config.seed, name="augmentation")]
        model = build_sdl_model(
            backbone=config.backbone,
            num_rows=config.num_rows,
            embed_dim=vocabulary.dim,
            image_size=config.image_size,
            backbone_weights=config.backbone_weights,
            augmentation=augmentation,
            dropout=config.dropout,
        )
        if baselines.has_trainer(config.method):
            optimizer = build_optimizer(config, total_steps)
            return baselines.build_compiled_trainer(model, config, vocabulary, optimizer, jit_compile)
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
    metrics = [
        SDLMetrics(seen_vectors, ks=config.ks, aggregation=config.aggregation, name="seen"),
        LossParts(loss),
    ]
    model.compile(
        optimizer=build_optimizer(config, total_steps),
        loss=loss,
        metrics=metrics,
        jit_compile=config.jit_compile if jit_compile is None else jit_compile,
    )
    return model


def build_callbacks(config, model, vocabulary, validation, write_dir, strategy):
    """The run's callbacks, in the order they must run at an epoch's end: the backup (before
    the EMA swap, so it holds the training weights), the EMA swap (so the evaluation and
    checkpoint see the averaged weights), the zero-shot evaluation (its figures go into the
    logs), the dashboards and the best-model checkpoint (which read them), TensorBoard's
    scalars, TerminateOnNaN.

    Args:
        validation: batches of (images, labels over all tags), or None for no evaluation.
        write_dir: where this process writes (`distribute.write_directory`).
    """
    callbacks = [
        BackupAndRestore(
            os.path.join(config.output_dir, "backup"),
            save_freq=config.backup_steps or "epoch",
            write_dir=os.path.join(write_dir, "backup"),
        )
    ]
    if config.ema_momentum is not None:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    log_dir = os.path.join(write_dir, "logs")
    if validation is not None:
        # model.predict would split the images between the workers of a multi-worker run.
        predict = distribute.local_predict_function(model) if strategy.num_replicas_in_sync > 1 else None
        evaluation = ZeroShotEvaluation(
            validation, vocabulary, ks=config.ks, every_n_epochs=config.eval_every, aggregation=config.aggregation,
            predict=predict, sample_images=config.dashboard_images,
        )
        callbacks += [
            evaluation,
            TensorBoardDashboards(log_dir, evaluation, top_k=max(config.ks), hparams=hparams_of(config)),
            BestModelCheckpoint(
                os.path.join(write_dir, BEST_MODEL_FILE), monitor="val_zsl/mAP" if vocabulary.unseen else "val_gzsl/mAP"
            ),
        ]
    callbacks += [keras.callbacks.TensorBoard(log_dir), keras.callbacks.TerminateOnNaN()]
    return callbacks


def evaluation_batches(dataset, source, vocabulary, image_size, batch_size):
    """(batches of (images, labels over all tags), number of images) of a test split: read
    by a pipelines.datasets reader, or from TFRecords with dataset="tfrecord" (whose tag
    columns must be the vocabulary's)."""
    from pipelines import tfrecord_source
    from pipelines.data import image_label_dataset
    from pipelines.datasets import load_split

    if dataset == tfrecord_source.NAME:
        records = tfrecord_source.open_record_set(source, "test")
        tfrecord_source.check_vocabulary(records, vocabulary.tags)
        return tfrecord_source.evaluation_batches(records, image_size, batch_size), records.num_examples
    images = load_split(dataset, source, "test", vocabulary.tags, vocabulary.unseen_tags)
    if not len(images):
        raise ValueError(f"{source}: no test images.")
    return image_label_dataset(images.paths, images.labels, image_size, batch_size), len(images)


def _validation_batches(config, vocabulary):
    """Batches of (images, labels over all tags) for the zero-shot evaluation, or None."""
    source = config.validation_source or config.test_source
    if not config.eval_every or not source:
        return None
    batches, count = evaluation_batches(config.dataset, source, vocabulary, config.image_size, config.batch_size)
    logger.info("Zero-shot evaluation every %d epoch(s) on %d images of %s.", config.eval_every, count, source)
    return batches


@dataclasses.dataclass
class TrainingData:
    """What `train` fits on: batches of (images, labels over the seen tags), repeated (or
    a distributed dataset), with the facts the run is sized by."""

    dataset: object
    num_images: int
    num_seen: int
    max_positives: int
    max_positives_from: str
    # Keras callbacks that report on the data (the unreadable images skipped per epoch).
    callbacks: tuple = ()


def _file_training_data(config, vocabulary):
    """The training split read by a pipelines.datasets reader, labels in memory."""
    from pipelines.data import UnreadableImagesLogger, check_positives_bound, image_label_dataset
    from pipelines.datasets import load_split

    train_images = load_split(config.dataset, config.train_source, "train", vocabulary.tags, vocabulary.unseen_tags)
    if not len(train_images):
        raise ValueError(f"{config.train_source}: no training images.")
    labels = seen_labels(train_images.labels, vocabulary, config.train_source)
    max_positives = config.max_positives or max(max_positives_needed(labels), 1)
    check_positives_bound(labels, max_positives, train_images.ids)
    dataset = image_label_dataset(
        train_images.paths,
        labels,
        config.image_size,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        repeat=True,
        drop_remainder=True,
        strict=config.strict,
    )
    origin = "max_positives" if config.max_positives else "the labels"
    return TrainingData(
        dataset, len(train_images), labels.shape[1], max_positives, origin,
        callbacks=(UnreadableImagesLogger(dataset.unreadable_images),),
    )


def _record_training_data(config, vocabulary, strategy):
    """The training split streamed from TFRecords: its size and the loss's positives bound
    come from the conversion's files (pipelines.tfrecord_source), not from the records."""
    from pipelines import tfrecord_source

    records = tfrecord_source.open_record_set(config.train_source, "train")
    tfrecord_source.check_vocabulary(records, vocabulary.tags)
    recorded, seen_only, counted = tfrecord_source.positives_bound(records, vocabulary.unseen)
    if config.max_positives:
        max_positives, origin = config.max_positives, "max_positives"
        # An all-tags count only bounds the seen positives: the batches check the real ones.
        if seen_only and recorded > max_positives:
            raise ValueError(
                f"max_positives={max_positives}, but {records.path('progress.jsonl')} records training images "
                f"with {recorded} positive seen tags; the loss would drop the extra ones. "
                f"Set max_positives >= {recorded}, or none."
            )
    elif recorded is None:
        raise ValueError(f"{counted}: pass --max_positives (the most positive seen tags of one training image), "
                         "or convert the split again with the current pipelines.to_tfrecord.")
    else:
        max_positives, origin = max(recorded, 1), counted
    dataset = tfrecord_source.training_dataset(
        records,
        vocabulary.seen,
        vocabulary.unseen,
        config.image_size,
        config.batch_size,
        max_positives=max_positives,
        seed=config.seed,
        strategy=strategy,
    )
    return TrainingData(dataset, records.num_examples, len(vocabulary.seen), max_positives, origin)


def train(config, callbacks=()):
    """Reads the data, trains with `model.fit` under `config.strategy` and writes the run
    directory (on the chief).

    Args:
        config: the TrainConfig.
        callbacks: more Keras callbacks, run after the run's own (`build_callbacks`).

    Returns:
        (model, history, vocabulary).
    """
    from pipelines import tfrecord_source

    # First: MultiWorkerMirroredStrategy must start before any other TensorFlow work.
    strategy = distribute.select_strategy(config.strategy)
    config = baselines.resolve_config(config)  # config.json records how the method scores
    keras.utils.set_random_seed(config.seed)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"batch_size={config.batch_size} (global) does not split over {strategy.num_replicas_in_sync} replicas."
        )
    vocabulary = load_vocabulary(config)
    if config.dataset == tfrecord_source.NAME:
        train_data = _record_training_data(config, vocabulary, strategy)
    else:
        train_data = _file_training_data(config, vocabulary)
    max_positives = train_data.max_positives
    logger.info(
        "Training on %d images, %d seen tags (%d unseen held out), loss bound P=%d positives per image "
        "(from %s), %d replica(s), global batch %d.",
        train_data.num_images, train_data.num_seen, len(vocabulary.unseen), max_positives,
        train_data.max_positives_from, strategy.num_replicas_in_sync, config.batch_size,
    )
    # Repeated, with a fixed number of steps: every worker of a multi-worker run then takes
    # the same number of steps per epoch.
    steps = config.steps_per_epoch or max(train_data.num_images // config.batch_size, 1)
    dataset = train_data.dataset
    validation = _validation_batches(config, vocabulary)

    xla_request = config.xla_mode if config.jit_compile else "off"
    with distribute.write_directory(config.output_dir, strategy) as write_dir, \
            distribute.xla_mode(xla_request, strategy) as xla:
        with strategy.scope():
            model = build_compiled_model(config, vocabulary, max_positives, steps * config.epochs, xla == "jit")
        distribute.check_jit_compile(model, xla)
        if config.strategy != "default":
            sample = (
                np.zeros((1, config.image_size, config.image_size, 3), np.uint8),
                np.zeros((1, train_data.num_seen), np.float32),
            )
            distribute.prepare_for_fit(model, strategy, sample)
        if config.sync_batch_norm and strategy.num_replicas_in_sync > 1:
            count = distribute.synchronize_batch_norm(model)
            logger.info("%d BatchNormalization layer(s) use the global batch's statistics.", count)
        vocabulary.save(os.path.join(write_dir, VOCABULARY_FILE))
        config.save(os.path.join(write_dir, CONFIG_FILE))
        history = model.fit(
            dataset,
            epochs=config.epochs,
            steps_per_epoch=steps,
            shuffle=False,  # the dataset shuffles
            callbacks=[
                *build_callbacks(config, model, vocabulary, validation, write_dir, strategy),
                *train_data.callbacks,
                *callbacks,
            ],
            verbose=config.verbose,
        )
        final = {key: float(values[-1]) for key, values in history.history.items() if values}
        if not np.isfinite(final.get("loss", 0.0)):
            raise FloatingPointError(
                f"Training stopped: the loss became {final['loss']} (epoch {len(history.epoch)}); "
                f"no {MODEL_FILE} written. Lower the learning rate or check the data."
            )
        save_model_atomically(model, os.path.join(write_dir, MODEL_FILE))
        write_json_atomically(
            os.path.join(write_dir, METRICS_FILE),
            {
                "epoch": (history.epoch[-1] + 1) if history.epoch else config.epochs,
                "step": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
                "logs": final,
            },
        )
    return model, history, vocabulary

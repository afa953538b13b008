"""The typed configuration of a run: what `sdl_keras.train` trains and what every command
that reads the run (evaluate, export, tag, search, calibrate) reads back from its
config.json. Plain dataclasses: no Keras, no TensorFlow.

A `TrainConfig` is nested by concern (data, model, loss, optimizer, runtime,
evaluation, calibration); each field carries its command-line help beside it. Field names are
unique across the sections, so the command line stays flat (`--num_rows`, `--augment`,
`--output_dir`, ...): `TrainConfig.from_flat`, `flat` and `replace` translate.

The defaults are the official recipe where the paper's text and the official train.py
agree or where only the code says (README, "The official recipe"): a bias-free
MatrixHead initialised as torch's `Linear`, weight decay on kernels only, a one-cycle
cosine schedule as torch's `OneCycleLR(pct_start=0.1)`, no EMA. The paper configs
(configs/nus_wide.flags, coco.flags, open_images.flags) add the official augmentation
and momentum cycling.
"""

import dataclasses
import json
import typing
from typing import Optional

from sdl_keras.atomic import read_json

# Names other modules register implementations under (sdl_keras.methods,
# sdl_keras.training.distribute); kept here so a config validates without importing them.
METHODS = ("sdl", "fast0tag", "l2", "conse", "semantic_softmax")
STRATEGIES = ("default", "mirrored", "multi_worker")
XLA_MODES = ("auto", "jit", "auto_clustering", "off")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
CROPS = ("none", "center")
DECODE_MODES = ("fast", "pil_bilinear", "pil_bicubic")  # pipelines.decode.MODES
COCO_TEST_FILES = ("instances", "restricted")  # pipelines.readers.coco.TEST_FILES
AGGREGATIONS = ("max", "l2")
NORMALIZATIONS = ("official", "paper")
# sdl_keras.calibration's names, kept here so a config validates without importing it.
CALIBRATION_METHODS = ("platt", "temperature", "isotonic")
UNSEEN_POOLINGS = ("score", "rank")
VERBOSITY = ("auto", "0", "1", "2")
AUGMENTATIONS = ("official", "crop_flip_cutout")  # sdl_keras.layers.augmentation.RECIPES
WEIGHT_DECAY_MODES = ("decoupled", "coupled")
EMPTY_TAGS = ("zero", "skip")  # how mAP counts a tag without a positive (sdl_keras.evaluation)


def _field(default, help, choices=None):
    """A config field with its command-line help (and allowed values) beside it."""
    factory = {"default_factory": lambda: default} if isinstance(default, (list, dict)) else {"default": default}
    return dataclasses.field(metadata={"help": help, "choices": choices}, **factory)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images and labels come from, and how images are decoded."""

    dataset: str = _field(
        "manifest",
        "Reader from pipelines.readers: manifest, nus_wide, coco, open_images; or tfrecord: shards written by "
        "pipelines.to_tfrecord, streamed (no label matrix in memory; what Open Images needs).",
    )
    train_source: str = _field(
        "", "Training data: a manifest file or a dataset root folder; for tfrecord, the records folder "
        "(its train-*.tfrecord shards) or a glob of shards.")
    test_source: str = _field(
        "", "Test data (used by sdl_keras.evaluate): a manifest file or a dataset root folder; for tfrecord, "
        "the records folder (its test-*.tfrecord shards) or a glob of shards. The GZSL figures come from it, "
        "and the ZSL ones too unless zsl_test_source is set.")
    zsl_test_source: str = _field(
        "", "Separate ZSL test data, as the official COCO code evaluates (val_unseen.json beside the GZSL "
        "test_source val_17_48.json); empty = the ZSL figures come from test_source's images with an unseen "
        "positive.")
    test_image_ids: str = _field(
        "", "A file of image ids, one per line: the test split(s) keep only these images (COCO: the paper's "
        "6,608 test images, Bansal et al.'s list); an id the split lacks is an error.")
    coco_test_files: str = _field(
        "instances", "COCO test files: instances (instances_val2014.json; test images are those with a seen and an "
        "unseen object) or restricted (COCO-format files already restricted to one test set, as the official "
        "code reads them: every image they annotate is a test image).", COCO_TEST_FILES)
    strict: bool = _field(
        False, "Stop with an error naming the first unreadable training image (or, for tfrecord, damaged shard), "
        "instead of skipping and counting them (the count is logged each epoch).")
    tags: str = _field("", "Tag list file, one tag per line (seen and unseen).")
    word_vectors: str = _field("", "Vectors: .vec/.txt/.bin word vectors, .npy/.npz, or official pickles.")
    word_vector_tags: str = _field(
        "", "The tag list the rows of an .npy --word_vectors follow, when it is not --tags: rows are picked by "
        "tag name (COCO: classes.txt, the 80 categories of the official wordvec_array, for the split's tags).")
    unseen_tags: str = _field("", "File listing the unseen (zero-shot) tags, one per line.")
    allow_pickle: bool = _field(False, "Allow reading pickled vector files (unpickling runs code: trusted files only).")
    image_size: int = _field(224, "Images are decoded and resized to this square size (the model's input).")
    crop: str = _field(
        "none", "How images are fitted to the square: none (resize the whole image, as the official code) or "
        "center (the central square). Training, evaluation, export and serving all decode this way.", CROPS)
    decode_mode: str = _field(
        "fast", "How images are decoded and resized (pipelines/decode.py), by training, evaluation, export and "
        "serving alike: fast (libjpeg's fast DCT at reduced scale, bilinear), pil_bilinear (accurate DCT, "
        "antialiased bilinear: PIL's Image.resize(BILINEAR), the official train.py's torchvision Resize) or "
        "pil_bicubic (the same, bicubic: Image.resize's default, the official infer.py).", DECODE_MODES)
    batch_size: int = _field(192, "Global batch size (split over the replicas of a strategy).")

    def test_split_options(self):
        """What a test split is read with beyond its source (`pipelines.splits.split_batches`):
        the image ids it keeps and the reader's own options."""
        options = {"image_ids": self.test_image_ids or None}
        if self.dataset == "coco":
            options["test_files"] = self.coco_test_files
        return options


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: method, backbone, head and the augmentation layers in front of it."""

    method: str = _field(
        "sdl", "sdl, or a baseline: fast0tag, l2, conse, semantic_softmax (docs/baselines.md).", METHODS)
    backbone: str = _field("tresnet_m", "Backbone name (sdl_keras.models.backbones) or savedmodel:<dir>.")
    backbone_weights: Optional[str] = _field(None, "Backbone weights: a file, 'imagenet', or none.")
    num_rows: int = _field(7, "M, principal directions per image (1 = Fast0Tag).")
    dropout: float = _field(0.0, "Dropout rate on the pooled features.")
    augment: bool = _field(False, "Augment the training images, in the model, as --augmentation says.")
    augmentation: str = _field(
        "official", "How --augment augments: official (the official train.py: Cutout on every image, half the "
        "height and width, a random fill colour, then RandAugment; no crop or flip) or crop_flip_cutout (random "
        "resized crop, horizontal flip, Cutout with probability 0.5: the paper's text).", AUGMENTATIONS)
    cutout_rate: Optional[float] = _field(
        None, "Probability of Cutout per image; none = the recipe's: 1 for official, 0.5 for crop_flip_cutout.")
    head_bias: bool = _field(
        False, "Give the MatrixHead a bias; the official head is a bias-free torch Linear (and this one is "
        "initialised as it: U(-1/sqrt(F), 1/sqrt(F)) for F features).")
    conse_top_t: int = _field(10, "CONSE: T, the top seen tags whose vectors embed an image (10 in the paper).")
    semantic_softmax_l2: float = _field(
        0.1, "Semantic Softmax: weight of the L2 constraint between features and prototypes.")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """SDLLoss (sdl_keras.losses): equations 2-5 of the paper."""

    reg_weight: Optional[float] = _field(0.3, "Regularization weight lambda (0.3 in the paper), or none.")
    diversity_weight: bool = _field(True, "Apply the semantic diversity weight (equation 3).")
    normalization: str = _field(
        "official", "Loss normalization: official (released code) or paper (equation 5).", NORMALIZATIONS)
    aggregation: str = _field("max", "Score aggregation over rows: max (SDL) or l2 (baseline).", AGGREGATIONS)
    unknown_as_negative: bool = _field(
        True, "Count unannotated (-1) labels as negatives, as the official code does; else ignore them.")
    max_positives: Optional[int] = _field(
        None, "Static bound on positives per image in the loss; none = from the data (tfrecord: from the "
        "statistics recorded at conversion).")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with a one-cycle cosine schedule (paper, Sec. 4.1)."""

    epochs: int = _field(7, "Training epochs.")
    steps_per_epoch: Optional[int] = _field(
        None, "Steps per epoch; none = the training images / batch_size (tfrecord: the records counted at "
        "conversion).")
    learning_rate: float = _field(
        1e-4, "Maximum learning rate of the one-cycle cosine schedule (torch's OneCycleLR max_lr: from lr/25 "
        "up, then down to lr/25/1e4).")
    weight_decay: float = _field(
        3e-4, "Weight decay on kernels only, not on biases or normalization parameters (the official "
        "add_weight_decay).")
    weight_decay_mode: str = _field(
        "decoupled", "decoupled (AdamW's 'true weight decay', the paper's text) or coupled (an L2 term in Adam's "
        "gradient, what the official torch.optim.Adam(add_weight_decay(...)) computes).", WEIGHT_DECAY_MODES)
    warmup_fraction: float = _field(
        0.1, "Fraction of the steps of the cosine warm-up to the maximum learning rate (OneCycleLR's pct_start; "
        "0.1 in the official train.py).")
    cycle_momentum: bool = _field(
        False, "Cycle Adam's beta_1 inversely to the learning rate, 0.95 -> 0.85 -> 0.95 (OneCycleLR's "
        "cycle_momentum, on by default in torch and so in the official train.py).")
    ema_momentum: Optional[float] = _field(
        None, "Keep an EMA of the weights with this momentum (e.g. 0.9997); evaluated and saved. The official "
        "code leaves its EMA off ('not used in the paper').")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the run executes, and where it writes."""

    strategy: str = _field(
        "default", "Distribution: default (one device), mirrored (local GPUs), multi_worker (TF_CONFIG).",
        STRATEGIES)
    jit_compile: bool = _field(True, "Use XLA (how: --xla_mode); false = no XLA.")
    xla_mode: str = _field(
        "auto", "auto (jit on one replica, auto_clustering on several), jit, auto_clustering, off.", XLA_MODES)
    precision: str = _field("float32", "float32, mixed_float16 (with loss scaling) or mixed_bfloat16.", PRECISIONS)
    sync_batch_norm: bool = _field(True, "Under a strategy, BatchNorm statistics over the global batch.")
    backup_steps: Optional[int] = _field(
        None, "Back up the training state every N steps; none = at each epoch's end.")
    seed: int = _field(0, "Random seed of shuffling, augmentation and initialization.")
    output_dir: str = _field(
        "runs/sdl", "Run directory (--run_dir is the same flag): model.keras, best.keras, vocabulary.npz, "
        "config.json, metrics.json, calibration.json, logs/.")
    verbose: str = _field(
        "auto", "Keras' fit verbosity: 0, 1 (a progress bar), 2 (one line per epoch); auto = 1 on a terminal, "
        "else 2.", VERBOSITY)

    def __post_init__(self):
        if isinstance(self.verbose, int):  # verbose=0 from Python, as Keras takes it
            object.__setattr__(self, "verbose", str(self.verbose))


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """The zero-shot evaluation during training."""

    validation_fraction: float = _field(
        0.1, "Fraction of the training images held out as the validation split (which images: fixed by --seed), "
        "not trained on. The validation split is what the zero-shot evaluation during training, the best-model "
        "checkpoint and the calibration use; never the test set. 0 = none. Not carved from --dataset=tfrecord "
        "(streamed): give --validation_source.")
    validation_source: str = _field(
        "", "Validation data instead of a fraction of the training data (its test split, read like "
        "--test_source); empty = the held-out --validation_fraction.")
    eval_every: int = _field(1, "Run the zero-shot evaluation every N epochs (0 = never).")
    dashboard_images: int = _field(8, "Validation images shown with their top tags in TensorBoard.")
    ks: tuple = _field((3, 5), "K values of P/R/F1@K.")
    empty_tags: str = _field(
        "zero", "How mAP counts a test tag without a positive image: zero (AP 0, averaged over every evaluated "
        "tag, as the official evaluation) or skip (left out of the mean). Recorded in results.json.", EMPTY_TAGS)


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """Probabilities and thresholds fitted on the validation split (sdl_keras.calibration)."""

    calibrate: bool = _field(
        False, "Fit the calibration on the validation split when training ends (as python -m sdl_keras.calibrate "
        "does) and write calibration.json into the run directory.")
    calibration_method: str = _field(
        "platt", "Seen tags' score -> probability map: platt (sigmoid(a s + b) per tag), temperature "
        "(sigmoid(s / T)) or isotonic.", CALIBRATION_METHODS)
    unseen_pooling: str = _field(
        "rank", "The unseen tags' shared map, fitted on the seen tags' pairs pooled by: rank (the tag's rank "
        "among the image's tags) or score (the raw score). benchmarks/calibration.py measures both.",
        UNSEEN_POOLINGS)
    min_positives: int = _field(
        10, "A seen tag with fewer validation positives (or negatives) uses the shared map and threshold.")
    probability_threshold: Optional[float] = _field(
        None, "A global probability threshold stored with the calibration, used where no other is given; "
        "none = the tuned per-tag thresholds.")


SECTIONS = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optimizer": OptimizerConfig,
    "runtime": RuntimeConfig,
    "evaluation": EvaluationConfig,
    "calibration": CalibrationConfig,
}


def leaf_type(field):
    """(base type, optional) of a config field: Optional[int] -> (int, True)."""
    annotation = field.type
    if typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None)), True
    return annotation, False


def _check(name, section):
    for field in dataclasses.fields(section):
        value = getattr(section, field.name)
        choices = field.metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"--{field.name}={value!r} (TrainConfig.{name}.{field.name}): choose one of {choices}.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as config.json in the run directory."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    calibration: CalibrationConfig = dataclasses.field(default_factory=CalibrationConfig)

    def __post_init__(self):
        for name in SECTIONS:
            _check(name, getattr(self, name))
        if self.optimizer.ema_momentum is not None and not 0.0 < self.optimizer.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in (0, 1) or None, got {self.optimizer.ema_momentum}.")
        if self.runtime.backup_steps is not None and self.runtime.backup_steps < 1:
            raise ValueError(f"backup_steps must be >= 1 or None, got {self.runtime.backup_steps}.")
        if self.data.coco_test_files != "instances" and self.data.dataset != "coco":
            raise ValueError(f"coco_test_files={self.data.coco_test_files!r} is for dataset coco, not "
                             f"{self.data.dataset!r}.")
        if not 0.0 <= self.evaluation.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.evaluation.validation_fraction}.")
        threshold = self.calibration.probability_threshold
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"probability_threshold must be a probability in [0, 1] or None, got {threshold}.")
        if self.data.image_size < 1 or self.data.batch_size < 1:
            raise ValueError(f"image_size and batch_size must be >= 1, got {self.data.image_size}, "
                             f"{self.data.batch_size}.")

    # -- flat names (the command line's) ----------------------------------------------------
    @staticmethod
    def field_sections():
        """{field name: section name} over every section."""
        return {f.name: section for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}

    @classmethod
    def from_flat(cls, **values):
        """A config from flat field names (`num_rows=3, output_dir=...`); unknown names are an error."""
        return cls().replace(**values)

    def flat(self):
        """{field name: value} over every section."""
        return {name: getattr(getattr(self, section), name) for name, section in self.field_sections().items()}

    def replace(self, **values):
        """A copy with fields changed by their flat names."""
        sections = self.field_sections()
        unknown = sorted(set(values) - set(sections))
        if unknown:
            raise KeyError(f"Unknown TrainConfig field(s) {unknown}.")
        changed = {}
        for name, value in values.items():
            changed.setdefault(sections[name], {})[name] = tuple(value) if name == "ks" else value
        return dataclasses.replace(
            self, **{section: dataclasses.replace(getattr(self, section), **fields)
                     for section, fields in changed.items()}
        )

    # -- config.json -------------------------------------------------------------------------
    def to_dict(self):
        return dataclasses.asdict(self)

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_dict(cls, values, source="config"):
        """From `to_dict`'s nested form (or the flat form of runs written before the nesting)."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a JSON object, got {type(values).__name__}.")
        if set(values) <= set(SECTIONS) and all(isinstance(v, dict) for v in values.values()):
            flat = {}
            for section, fields in values.items():
                names = {f.name for f in dataclasses.fields(SECTIONS[section])}
                unknown = sorted(set(fields) - names)
                if unknown:
                    raise KeyError(f"{source}: unknown key(s) {unknown} in section {section!r}.")
                flat.update(fields)
        else:
            flat = dict(values)
        if "augment" in flat and "augmentation" not in flat:  # runs from before the recipes: crop, flip, Cutout
            flat["augmentation"] = "crop_flip_cutout"
        try:
            return cls.from_flat(**flat)
        except KeyError as error:
            raise KeyError(f"{source}: {error.args[0]}") from None

    @classmethod
    def load(cls, path):
        return cls.from_dict(read_json(path), source=str(path))

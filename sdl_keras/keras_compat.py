"""Every use of a private Keras API in this project, in one place.

Each entry says what it relies on and why no public API does the job; each has a test
in tests/sdl_keras/test_keras_compat.py that fails when a Keras release changes the
behaviour it relies on. Known to work with Keras `KNOWN_GOOD` (tested: 3.15.1); outside
that range `check_version` warns once.

Entries:
  flatten_layers             Layer._flatten_layers: every layer nested in a model, also inside
                             custom layers (no public API reaches those).
  build_for_fit              Trainer._symbolic_build / _maybe_symbolic_build: build compile
                             state from specs, not by consuming the first batch under a strategy.
  reduce_logs_with_batch_axis  wraps Trainer.train_step (an instance attribute fit calls) so
                             MultiWorkerMirroredStrategy's reduce(axis=0) gets a leading axis.
  TrainableTFSMLayer         TFSMLayer._add_existing_weight / Layer._track_variable: variable
                             names an optimizer can create slots for.
  BackupHooks                BackupAndRestore._load_model / _save_model / _current_epoch /
                             _last_batch_seen and Trainer._initial_epoch: atomic backups that
                             keep Keras' resume logic.
  compiled_metrics           Trainer._compile_metrics: the metric objects a model was compiled
                             with (model.metrics lists only their CompileMetrics wrapper).
"""

import warnings

import keras

KNOWN_GOOD = ("3.15.0", "3.16.0")  # [low, high)
_warned = []


def _version_tuple(version):
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def check_version(version=None):
    """True when `version` (default: the installed Keras) is in KNOWN_GOOD; warns once if not."""
    version = version or keras.__version__
    inside = _version_tuple(KNOWN_GOOD[0]) <= _version_tuple(version) < _version_tuple(KNOWN_GOOD[1])
    if not inside and not _warned:
        _warned.append(version)
        warnings.warn(
            f"sdl_keras uses private Keras APIs known to work with Keras {KNOWN_GOOD[0]} <= version < "
            f"{KNOWN_GOOD[1]}; this is {version}. Run tests/sdl_keras/test_keras_compat.py.",
            stacklevel=2,
        )
    return inside


def flatten_layers(model):
    """Every layer inside `model` (nested models and the sublayers of custom layers), not
    `model` itself."""
    return list(model._flatten_layers(include_self=False))


def build_for_fit(model, strategy, batch):
    """Builds a compiled model's metric, loss and optimizer state from `batch` (an (x, y) of
    the right shapes and dtypes; only its specs count) inside `strategy.scope()`, and turns
    off the build `fit` would otherwise do from the first training batch.

    Under MultiWorkerMirroredStrategy that build all-reduces the (x, y) tuple and fails
    ("Attempt to convert a value (PerReplica...) with an unsupported type"); under
    MirroredStrategy it consumes the first batch of a repeated dataset, so the run sees
    other batches than on one device.
    """
    with strategy.scope():
        model._symbolic_build(data_batch=batch)
    # Keras calls it before every fit/evaluate/predict; everything is built now.
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def reduce_logs_with_batch_axis(model, reshape):
    """Wraps the model's `train_step` so that its logs go through `reshape` (a function of
    one tensor). Under MultiWorkerMirroredStrategy, Keras averages each step's logs with
    `strategy.reduce("MEAN", value, axis=0)`, which fails on scalar metric results
    ("Invalid reduction dimension 0 for input with 0 dimensions")."""
    train_step = model.train_step
    model.train_step = lambda data: keras.tree.map_structure(reshape, train_step(data))


class TrainableTFSMLayer(keras.layers.TFSMLayer):
    """`keras.layers.TFSMLayer` whose reloaded variables an optimizer can train.

    TF names variables "scope/kernel:0"; TFSMLayer keeps the ":0", and the optimizer
    slots named after it are invalid TF scope names, so fitting failed. Arguments as
    `TFSMLayer`.
    """

    def _add_existing_weight(self, weight):
        variable = keras.Variable(
            initializer=weight,
            trainable=weight.trainable,
            dtype=weight.dtype,
            shape=weight.shape,
            name=weight.name.split(":")[0].replace("/", "_"),
        )
        self._track_variable(variable)


class BackupHooks(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` with its storage replaced: subclasses implement
    `restore()` (at the start of training) and `backup()` (when Keras decides to save:
    each epoch or every `save_freq` steps), and read `epoch`/`batch` and call
    `resume_at(epoch)` instead of Keras' private attributes."""

    def on_train_begin(self, logs=None):
        self.restore()

    def _load_model(self):
        self.restore()

    def _save_model(self):
        self.backup()

    @property
    def epoch(self):
        """The epoch a backup taken now resumes at (Keras updates it at each epoch's end)."""
        return self._current_epoch

    @property
    def batch(self):
        """The last batch of the current epoch seen (0 at an epoch's end)."""
        return self._last_batch_seen

    def resume_at(self, epoch):
        """Makes `fit` start at `epoch`, and backups taken before the next epoch end record it."""
        self._current_epoch = self.model._initial_epoch = epoch

    def restore(self):
        raise NotImplementedError

    def backup(self):
        raise NotImplementedError


def compiled_metrics(model):
    """The metric objects `model.compile(metrics=[...])` was given, in order, or []."""
    compile_metrics = getattr(model, "_compile_metrics", None)
    return list(compile_metrics._user_metrics or []) if compile_metrics is not None else []

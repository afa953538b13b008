"""Where and how a training run executes: the tf.distribute strategy, which worker
writes the run's files, and which XLA mode compiles the training step.

TensorFlow-specific by nature (tf.distribute, TF_CONFIG, TensorFlow's XLA
auto-clustering), so raw `tf` is used here; the model, loss and metrics stay
in keras.ops.

Strategies (`select_strategy`):
  default       one device (the first GPU, else the CPU).
  mirrored      every local GPU (or the devices passed), synchronous all-reduce.
  multi_worker  MultiWorkerMirroredStrategy across hosts, configured by the
                TF_CONFIG environment variable of each process.

XLA modes (`xla_mode`), measured in benchmarks/train_step.py:
  jit              the whole training step (forward, loss, backward, optimizer
                   update) is one XLA program: `model.compile(jit_compile=True)`.
                   Single device only: under a strategy the step holds
                   `strategy.run` over per-device variables, which XLA rejects
                   ("Trying to access resource ... located in device CPU:1 from
                   device CPU:0").
  auto_clustering  TensorFlow's auto-clustering: the graph optimizer compiles the
                   XLA-compatible clusters of each replica's step (the model's
                   forward and backward ops) and leaves the rest (all-reduce,
                   input, variable updates outside clusters) to TensorFlow. The
                   XLA path that works under tf.distribute.
  off              no XLA.
  auto             jit on one replica, auto_clustering on several; off when the
                   model holds a layer XLA cannot compile (Keras' RandAugment, of
                   --augmentation=official: its Equalization counts pixels with a
                   bincount whose size XLA needs at compile time).
The mode that runs is always logged; a mode that cannot run is an error, never a
silent fall back.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from pipelines.environment import CPU_AUTO_CLUSTERING_FLAG
from sdl_keras import keras_compat
from sdl_keras.config import STRATEGIES, XLA_MODES

logger = logging.getLogger(__name__)
def select_strategy(name="default", devices=None):
    """The tf.distribute strategy named `name` (one of STRATEGIES).

    Create it before any other TensorFlow work in the process: MultiWorkerMirroredStrategy
    starts the process's collective server from TF_CONFIG.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "strategy=multi_worker needs the TF_CONFIG environment variable: "
                '{"cluster": {"worker": ["host1:port", ...]}, "task": {"type": "worker", "index": i}} '
                "(see docs/training.md)."
            )
        try:
            tf_config = json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as error:
            raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
        for key in ("cluster", "task"):
            if key not in tf_config:
                raise ValueError(f"TF_CONFIG has no {key!r} key: {os.environ['TF_CONFIG']}")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy {name!r}; choose one of {STRATEGIES}.")


def task_of(strategy):
    """(task_type, task_id) of this process in a multi-worker cluster, (None, None) otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    """Whether this process writes the run's files: the "chief" task, or worker 0 when the
    cluster has no chief (TensorFlow's convention), or the only process."""
    task_type, task_id = task_of(strategy)
    if task_type is None:
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return task_type == "chief"
    return task_type == "worker" and task_id == 0


@contextlib.contextmanager
def write_directory(output_dir, strategy):
    """The directory this process writes its files to: `output_dir` on the chief, a
    temporary directory (deleted on exit) on the other workers.

    Every worker runs the same saving code (saving a model under MultiWorkerMirroredStrategy
    may read variables through collectives that all workers must join); only the chief's
    files land in the run directory.
    """
    if is_chief(strategy):
        os.makedirs(output_dir, exist_ok=True)
        yield output_dir
        return
    task_type, task_id = task_of(strategy)
    temporary = tempfile.mkdtemp(prefix=f"sdl-{task_type}{task_id}-")
    logger.info("%s %d is not the chief: writing to %s (deleted at the end).", task_type, task_id, temporary)
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _has_gpu():
    return bool(tf.config.list_physical_devices("GPU"))


def resolve_xla_mode(mode, strategy, without_xla=()):
    """The XLA mode (jit, auto_clustering or off) that `mode` means under `strategy`, for a
    model whose layers named in `without_xla` do not support XLA (`layers_without_xla`).

    Raises ValueError for a mode that cannot run: jit under a strategy with several
    replicas, jit or auto-clustering of a model with layers XLA cannot compile, or
    auto-clustering on a CPU-only host without CPU_AUTO_CLUSTERING_FLAG.
    """
    if mode not in XLA_MODES:
        raise ValueError(f"Unknown XLA mode {mode!r}; choose one of {XLA_MODES}.")
    replicas = strategy.num_replicas_in_sync
    if mode == "auto":
        mode = "off" if without_xla else "jit" if replicas == 1 else "auto_clustering"
    if mode != "off" and without_xla:
        # Auto-clustering would compile them too: the clusters hold the whole replica step, and
        # tf2xla fails at the first step that picks one (RandAugment's Equalization: "DenseBincount
        # ... must be a compile-time constant").
        raise ValueError(
            f"xla_mode={mode}, but XLA cannot compile the model's layers {sorted(without_xla)}; "
            "use xla_mode=auto or off (or --augmentation=crop_flip_cutout, which XLA compiles)."
        )
    if mode == "jit" and replicas > 1:
        raise ValueError(
            f"xla_mode=jit cannot compile a step distributed over {replicas} replicas "
            "(XLA rejects per-device variables inside strategy.run); use auto_clustering or off."
        )
    if mode == "auto_clustering" and not _has_gpu():
        if CPU_AUTO_CLUSTERING_FLAG not in os.environ.get("TF_XLA_FLAGS", "").split():
            raise ValueError(
                f"XLA auto-clustering on the CPU needs TF_XLA_FLAGS={CPU_AUTO_CLUSTERING_FLAG} set before "
                "TensorFlow is imported (importing sdl_keras first sets it); or use xla_mode=off."
            )
    return mode


_XLA_DESCRIPTIONS = {
    "jit": "jit_compile: the whole training step is one XLA program",
    "auto_clustering": "TensorFlow auto-clustering: XLA compiles the clusters of each replica's step; "
    "all-reduce and input stay in TensorFlow",
    "off": "off: TensorFlow graph execution without XLA",
}


def layers_without_xla(layers):
    """The names of the layers among `layers` (nested ones included) that do not support XLA."""
    return sorted({inner.name for layer in layers for inner in [layer, *keras_compat.flatten_layers(layer)]
                   if not inner.supports_jit})


@contextlib.contextmanager
def xla_mode(mode, strategy, without_xla=()):
    """Resolves `mode` (see `resolve_xla_mode`), logs it, and turns auto-clustering on for the
    duration when that is the mode. Yields the resolved mode; `model.compile` takes
    `jit_compile=(mode == "jit")`."""
    resolved = resolve_xla_mode(mode, strategy, without_xla)
    logger.info(
        "XLA mode: %s (requested %s, %d replica(s)%s).", _XLA_DESCRIPTIONS[resolved], mode,
        strategy.num_replicas_in_sync, f"; layers without XLA: {', '.join(without_xla)}" if without_xla else "",
    )
    previous = tf.config.optimizer.get_jit()
    tf.config.optimizer.set_jit("autoclustering" if resolved == "auto_clustering" else False)
    try:
        yield resolved
    finally:
        tf.config.optimizer.set_jit(previous or False)


def check_jit_compile(model, resolved_mode):
    """Raises if Keras turned `jit_compile` off behind the requested jit mode (it does, with
    only a warning, when a layer does not support XLA)."""
    if resolved_mode == "jit" and not model.jit_compile:
        unsupported = [layer.name for layer in keras_compat.flatten_layers(model) if not layer.supports_jit]
        raise ValueError(
            f"xla_mode=jit, but Keras cannot jit_compile this model (layers without XLA support: "
            f"{unsupported or 'unknown'}); use xla_mode=off or auto_clustering."
        )


def synchronize_batch_norm(model):
    """Makes every BatchNormalization layer (nested models included) use the statistics of
    the global batch across replicas, as a single device sees it, so results do not depend
    on the number of replicas. Call before the first training step (the step is traced
    then). Returns the number of layers."""
    layers = [layer for layer in keras_compat.flatten_layers(model)
              if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def prepare_for_fit(model, strategy, batch):
    """Works around two steps of Keras 3's `fit` under tf.distribute (keras_compat has the
    details): the compile state is built from `batch`'s specs, not from the first training
    batch; and under MultiWorkerMirroredStrategy each step's logs get a leading axis of 1
    for Keras' reduce over axis 0."""
    keras_compat.build_for_fit(model, strategy, batch)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        keras_compat.reduce_logs_with_batch_axis(model, lambda value: tf.reshape(value, [1]))


def local_predict_function(model):
    """images -> A computed on this process's own devices, outside `strategy.run`.

    `model.predict` under MultiWorkerMirroredStrategy splits its input between the workers;
    the zero-shot evaluation wants every worker to score the whole validation set.
    """
    return tf.function(lambda images: model(images, training=False), reduce_retracing=True)

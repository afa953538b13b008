"""Training an SDL model with `model.fit`, from a TrainConfig to a run directory
(sdl_keras.run_dir). The `sdl_keras.train` CLI is a thin layer over `train`.

Under a multi-worker strategy only the chief writes the run directory
(`distribute.write_directory`).
"""

import logging
import sys

import keras
import numpy as np

from pipelines.tfrecord.records import raising_unreadable_shards
from sdl_keras import saving
from sdl_keras.run_dir import RunDirectory
from sdl_keras.training import distribute
from sdl_keras.training.calibrate import fit_model_calibration, write_calibration
from sdl_keras.training.callbacks import (
    BackupAndRestore,
    BestModelCheckpoint,
    UnreadableImagesLogger,
    ZeroShotEvaluation,
)
from sdl_keras.training.dashboards import TensorBoardDashboards, hparams_of
from sdl_keras.training.data import load_vocabulary, training_data, validation_data
from sdl_keras.training.model import augmentation_layers, build_compiled_model, resolve

logger = logging.getLogger(__name__)


def build_callbacks(config, model, vocabulary, validation, write_dir, strategy, monitor=None):
    """The run's callbacks, in the order they must run at an epoch's end: the backup (before
    the EMA swap, so it holds the training weights), the EMA swap (so the evaluation and
    checkpoint see the averaged weights), the zero-shot evaluation (its figures go into the
    logs), the dashboards and the best-model checkpoint (which read them), TensorBoard's
    scalars, TerminateOnNaN.

    Args:
        validation: batches of (images, labels over all tags), or None for no evaluation.
        write_dir: where this process writes (`distribute.write_directory`).
        monitor: what the best-model checkpoint maximizes; default the validation ZSL mAP
            when the vocabulary has unseen tags, else the GZSL mAP.
    """
    run, written = RunDirectory(config.runtime.output_dir), RunDirectory(write_dir)
    callbacks = [
        BackupAndRestore(
            run.backup_dir, save_freq=config.runtime.backup_steps or "epoch", write_dir=written.backup_dir
        )
    ]
    if config.optimizer.ema_momentum is not None:
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    evaluation_config, ks = config.evaluation, config.evaluation.ks
    if validation is not None:
        # model.predict would split the images between the workers of a multi-worker run.
        predict = distribute.local_predict_function(model) if strategy.num_replicas_in_sync > 1 else None
        evaluation = ZeroShotEvaluation(
            validation, vocabulary, ks=ks, every_n_epochs=evaluation_config.eval_every,
            aggregation=config.loss.aggregation, predict=predict, sample_images=evaluation_config.dashboard_images,
            empty_tags=evaluation_config.empty_tags,
        )
        callbacks += [
            evaluation,
            TensorBoardDashboards(written.logs_dir, evaluation, top_k=max(ks), hparams=hparams_of(config)),
            BestModelCheckpoint(
                written.best_model_path, monitor=monitor or ("val_zsl/mAP" if vocabulary.unseen else "val_gzsl/mAP")
            ),
        ]
    callbacks += [keras.callbacks.TensorBoard(written.logs_dir), keras.callbacks.TerminateOnNaN()]
    return callbacks


def _calibrate(config, model, vocabulary, validation, run, strategy, step):
    """`--calibrate`: the calibration of the final model on the validation split, as
    `python -m sdl_keras.calibrate` fits it (every worker computes it; the chief's is kept)."""
    predict = distribute.local_predict_function(model) if strategy.num_replicas_in_sync > 1 else None
    write_calibration(run, *fit_model_calibration(model, vocabulary, config, validation, predict), step=step)


def fit_verbosity(verbose):
    """Keras' `verbose` for a config's setting: "auto" is a progress bar on a terminal and one
    line per epoch otherwise (a log file would get every redraw of the bar)."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return int(verbose)


def train(config, callbacks=()):
    """Reads the data, trains with `model.fit` under the config's strategy and writes the run
    directory (on the chief).

    Args:
        config: the TrainConfig.
        callbacks: more Keras callbacks, run after the run's own (`build_callbacks`).

    Returns:
        (model, history, vocabulary).
    """
    # First: MultiWorkerMirroredStrategy must start before any other TensorFlow work.
    strategy = distribute.select_strategy(config.runtime.strategy)
    config = resolve(config)  # config.json records how the method scores
    data_config, runtime = config.data, config.runtime
    keras.utils.set_random_seed(runtime.seed)
    if data_config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(
            f"batch_size={data_config.batch_size} (global) does not split over "
            f"{strategy.num_replicas_in_sync} replicas."
        )
    vocabulary = load_vocabulary(data_config)
    train_data = training_data(config, vocabulary, strategy)
    max_positives = train_data.max_positives
    logger.info(
        "Training on %d images, %d seen tags (%d unseen held out), loss bound P=%d positives per image "
        "(from %s), %d replica(s), global batch %d.",
        train_data.num_images, train_data.num_seen, len(vocabulary.unseen), max_positives,
        train_data.max_positives_from, strategy.num_replicas_in_sync, data_config.batch_size,
    )
    # Repeated, with a fixed number of steps: every worker of a multi-worker run then takes
    # the same number of steps per epoch.
    epochs = config.optimizer.epochs
    steps = config.optimizer.steps_per_epoch or max(train_data.num_images // data_config.batch_size, 1)
    evaluate_every, calibrate = config.evaluation.eval_every, config.calibration.calibrate
    validation = validation_data(config, vocabulary, train_data.held_out) if evaluate_every or calibrate else None
    if calibrate and validation is None:
        raise ValueError("--calibrate needs a validation split: set --validation_fraction > 0 or "
                         "--validation_source (never the test split).")
    # A validation split without unseen positives (one held out of the training images)
    # selects the model that ranks the seen tags best.
    monitor = "val_zsl/mAP" if validation is not None and validation.unseen_positives else "val_gzsl/mAP"
    if validation is not None:
        logger.info("Validation split: %d images of %s; %s%s.", validation.num_images, validation.description,
                    f"zero-shot evaluation every {evaluate_every} epoch(s), best.keras by {monitor}"
                    if evaluate_every else "no evaluation during training", ", calibrated at the end" * calibrate)
    batches = validation.batches if validation is not None and evaluate_every else None
    extra = [UnreadableImagesLogger(train_data.unreadable_images)] if train_data.unreadable_images else []

    xla_request = runtime.xla_mode if runtime.jit_compile else "off"
    without_xla = distribute.layers_without_xla(augmentation_layers(config))
    with distribute.write_directory(runtime.output_dir, strategy) as write_dir, \
            distribute.xla_mode(xla_request, strategy, without_xla) as xla:
        run = RunDirectory(write_dir)
        with strategy.scope():
            model = build_compiled_model(config, vocabulary, max_positives, steps * epochs, xla == "jit")
        distribute.check_jit_compile(model, xla)
        if runtime.strategy != "default":
            sample = (
                np.zeros((1, data_config.image_size, data_config.image_size, 3), np.uint8),
                np.zeros((1, train_data.num_seen), np.float32),
            )
            distribute.prepare_for_fit(model, strategy, sample)
        if runtime.sync_batch_norm and strategy.num_replicas_in_sync > 1:
            count = distribute.synchronize_batch_norm(model)
            logger.info("%d BatchNormalization layer(s) use the global batch's statistics.", count)
        run.write_vocabulary(vocabulary)
        run.write_config(config)
        with raising_unreadable_shards():
            history = model.fit(
                train_data.dataset,
                epochs=epochs,
                steps_per_epoch=steps,
                shuffle=False,  # the dataset shuffles
                callbacks=[*build_callbacks(config, model, vocabulary, batches, write_dir, strategy, monitor),
                           *extra, *callbacks],
                verbose=fit_verbosity(runtime.verbose),
            )
        final = {key: float(values[-1]) for key, values in history.history.items() if values}
        if not np.isfinite(final.get("loss", 0.0)):
            raise FloatingPointError(
                f"Training stopped: the loss became {final['loss']} (epoch {len(history.epoch)}); "
                f"no {RunDirectory.MODEL} written. Lower the learning rate or check the data."
            )
        saving.save_model(model, run.model_path)
        if calibrate:
            _calibrate(config, model, vocabulary, validation, run, strategy, len(history.epoch))
        run.write_metrics({
            "epoch": (history.epoch[-1] + 1) if history.epoch else epochs,
            "step": int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
            "logs": final,
        })
    return model, history, vocabulary

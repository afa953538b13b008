"""Callbacks for `model.fit`: zero-shot evaluation during training, fault tolerance
(atomic best-model checkpoints, atomic backups that resume a killed run), and the count
of unreadable training images.

Order them as `training.build_callbacks` does: the evaluation adds its figures to the
epoch's logs, so it must come before the callbacks that read them (the dashboards,
`BestModelCheckpoint`, `keras.callbacks.TensorBoard`).
"""

import json
import logging
import os
import shutil

import keras
import numpy as np

from sdl_keras import saving
from sdl_keras.atomic import write_json_atomically
from sdl_keras.evaluation import evaluate_scores
from sdl_keras.keras_compat import BackupHooks
from sdl_keras.scoring import tag_scores

logger = logging.getLogger(__name__)


class BackupError(ValueError):
    """A backup that training cannot resume from; the message names the file and says what to do."""


class ZeroShotEvaluation(keras.callbacks.Callback):
    """Every `every_n_epochs` epochs (and after the last), scores a validation set over the
    whole vocabulary, seen and unseen tags, and runs `evaluation.evaluate_scores`: ZSL and
    GZSL mAP and P/R/F1@K, exact (unlike the binned mAP of `SDLMetrics`). The figures go
    into the epoch's logs as "val_zsl/mAP", "val_gzsl/F1@3", ... (so History,
    `keras.callbacks.TensorBoard` and `BestModelCheckpoint` see them) and to the log.

    It also keeps, for `dashboards.TensorBoardDashboards`, `self.last`: the epoch, the
    first `sample_images` images with their labels, scores and dominant rows, and
    `row_wins` (M,), how often each row of A is the dominant one over the validation
    set's positive (image, tag) pairs.

    Shape contract: `batches` yields (uint8 images (B, S, S, 3), labels (B, C)) with C the
    vocabulary's tags; the model maps images to A (B, M, d).

    Args:
        batches: a re-iterable of (images, labels) batches, e.g. a tf.data.Dataset.
        vocabulary: the `TagVocabulary` (tags, vectors, unseen) the labels index.
        ks: the K of P/R/F1@K.
        every_n_epochs: evaluate after every n-th epoch.
        aggregation: "max" or "l2", as the model was trained.
        predict: images -> A; default `model.predict_on_batch` (under
            MultiWorkerMirroredStrategy use `distribute.local_predict_function`).
        sample_images: how many images `self.last` keeps for the dashboards.
        empty_tags: how mAP counts a tag without a positive image (`evaluate_scores`).
    """

    def __init__(self, batches, vocabulary, ks=(3, 5), every_n_epochs=1, aggregation="max", predict=None,
                 sample_images=8, empty_tags="zero"):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}.")
        self.batches = batches
        self.vocabulary = vocabulary
        self.ks = tuple(int(k) for k in ks)
        self.every_n_epochs = int(every_n_epochs)
        self.aggregation = aggregation
        self.predict = predict
        self.sample_images = int(sample_images)
        self.empty_tags = empty_tags
        self.last = None

    def evaluate(self):
        """(evaluate_scores results, sample) of the model as it is now; the sample holds the
        first `sample_images` images with their labels, scores and rows, and row_wins."""
        predict = self.predict or self.model.predict_on_batch
        scores, labels, sample_images, sample_rows, row_wins = [], [], [], [], 0
        for images, batch_labels in self.batches:
            matrices = predict(images)
            batch_scores, rows = tag_scores(matrices, self.vocabulary.vectors, self.aggregation)
            batch_scores, rows = keras.ops.convert_to_numpy(batch_scores), keras.ops.convert_to_numpy(rows)
            batch_labels = keras.ops.convert_to_numpy(batch_labels)
            # The rows that score each image's true tags: a row that never wins is wasted.
            row_wins = row_wins + np.bincount(rows[batch_labels == 1], minlength=matrices.shape[1])
            missing = self.sample_images - sum(len(kept) for kept in sample_images)
            if missing > 0:
                sample_images.append(keras.ops.convert_to_numpy(images[:missing]))
                sample_rows.append(rows[:missing])
            scores.append(batch_scores)
            labels.append(batch_labels)
        if not scores:
            raise ValueError("ZeroShotEvaluation: the validation batches are empty.")
        scores, labels = np.concatenate(scores), np.concatenate(labels)
        results = evaluate_scores(scores, labels, self.vocabulary.unseen, self.ks, self.empty_tags)
        count = self.sample_images
        sample = {"labels": labels[:count], "scores": scores[:count], "row_wins": row_wins}
        if sample_images:
            sample.update(images=np.concatenate(sample_images), rows=np.concatenate(sample_rows))
        return results, sample

    def on_epoch_end(self, epoch, logs=None):
        last_epoch = epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every_n_epochs and not last_epoch:
            return
        results, samples = self.evaluate()
        self.last = dict(samples, epoch=epoch, results=results)
        # A validation split held out of the training images has no unseen positive: its
        # ZSL figures would be zeros, not measurements, and are left out of the logs.
        zsl = results["zsl/num_images"] > 0
        figures = {f"val_{key}": float(value) for key, value in results.items()
                   if "/num_" not in key and (zsl or not key.startswith("zsl/"))}
        if logs is not None:
            logs.update(figures)
        k = self.ks[0]
        logger.info(
            "Epoch %d zero-shot evaluation: %s | GZSL mAP %.2f F1@%d %.2f", epoch + 1,
            f"ZSL mAP {results['zsl/mAP']:.2f} F1@{k} {results[f'zsl/F1@{k}']:.2f}" if zsl
            else "ZSL: no unseen positive in the validation images", results["gzsl/mAP"], k, results[f"gzsl/F1@{k}"],
        )


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the model to `filepath` (a .keras file) when `monitor` improves, atomically
    (`saving.save_model`): a kill during a save leaves the previous best file.

    The best value so far is kept beside it (`filepath + ".json"`), so a run resumed by
    `BackupAndRestore` only replaces the file with a better model. Epochs whose logs lack
    `monitor` (evaluation every few epochs) are skipped.

    Args:
        filepath: where the best model goes; must end in ".keras".
        monitor: the log key, by default the zero-shot mAP of `ZeroShotEvaluation`.
        mode: "max" or "min".
    """

    def __init__(self, filepath, monitor="val_zsl/mAP", mode="max"):
        super().__init__()
        if not str(filepath).endswith(".keras"):
            raise ValueError(f"BestModelCheckpoint filepath must end in .keras, got {filepath!r}.")
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.filepath = str(filepath)
        self.monitor = monitor
        self.mode = mode
        self.best = None
        self._seen_monitor = False

    @property
    def state_path(self):
        return self.filepath + ".json"

    def on_train_begin(self, logs=None):
        self._seen_monitor = False
        if os.path.exists(self.state_path) and os.path.exists(self.filepath):
            try:
                with open(self.state_path, encoding="utf-8") as f:
                    state = json.load(f)
                best = float(state["value"]) if state.get("monitor") == self.monitor else None
            except (ValueError, KeyError, TypeError, AttributeError) as error:
                raise BackupError(
                    f"{self.state_path} is not valid ({type(error).__name__}: {error}): it records the score of "
                    f"{self.filepath}. Delete it (the next evaluated epoch then replaces {self.filepath}), or restore it."
                ) from None
            if best is not None:
                self.best = best

    def _improved(self, value):
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None:
            return
        self._seen_monitor = True
        value = float(value)
        if not np.isfinite(value) or not self._improved(value):
            return
        previous, self.best = self.best, value
        saving.save_model(self.model, self.filepath)
        write_json_atomically(self.state_path, {"monitor": self.monitor, "value": value, "epoch": epoch + 1})
        logger.info("Epoch %d: %s improved from %s to %.4f; saved %s.", epoch + 1, self.monitor, previous, value,
                    self.filepath)

    def on_train_end(self, logs=None):
        if not self._seen_monitor:
            logger.warning("BestModelCheckpoint: no epoch logged %r; nothing was saved to %s.", self.monitor,
                           self.filepath)


class BackupAndRestore(BackupHooks):
    """`keras.callbacks.BackupAndRestore` with atomic backups and multi-worker roles.

    A backup is a new weights file (model and optimizer state) and then, renamed into
    place in one step, the metadata naming it and the epoch: a process killed at any
    moment leaves a complete earlier backup. With `save_freq=N` (steps) a restored run
    restarts the interrupted epoch from its first batch with the weights and optimizer
    state of the backup, so it ends at the same epoch count (Keras cannot resume inside
    an epoch; the epoch's first batches are seen twice).

    Every worker restores from `backup_dir`; with `write_dir`, this process writes its
    backups there instead (the non-chief workers of a multi-worker run write to their
    temporary directories, so only the chief writes the run's backups).

    Args:
        backup_dir: the backup folder, read by every worker, written by the chief.
        save_freq: "epoch" or a number of training steps.
        write_dir: where this process writes its backups; default `backup_dir`.
        delete_checkpoint: remove this process's backups when training completes.
    """

    METADATA = "training_metadata.json"

    def __init__(self, backup_dir, save_freq="epoch", write_dir=None, delete_checkpoint=True):
        super().__init__(backup_dir, save_freq=save_freq, delete_checkpoint=delete_checkpoint)
        self.write_dir = write_dir or backup_dir

    def _cannot_resume(self, path, problem):
        """A BackupError: `path` has `problem`, and what to do about it."""
        others = sorted(name for name in os.listdir(self.backup_dir)
                        if name.startswith("backup-step") and name != os.path.basename(path))
        if not others:
            earlier = ""
        elif os.path.basename(path) == self.METADATA:
            earlier = (f", or write a valid {self.METADATA} naming one of its backups ({', '.join(others)}; keys "
                       "epoch, batch, step, weights)")
        else:
            earlier = f", or point its {self.METADATA} at another backup there ({', '.join(others)})"
        return BackupError(
            f"{path} {problem}: training cannot resume from {self.backup_dir}. Delete {self.backup_dir} to start the "
            f"run over{earlier}."
        )

    def restore(self):
        path = os.path.join(self.backup_dir, self.METADATA)
        if not os.path.exists(path):
            return
        try:
            with open(path, encoding="utf-8") as f:
                metadata = json.load(f)
            weights = os.path.join(self.backup_dir, metadata["weights"])
            epoch, step = int(metadata["epoch"]), int(metadata["step"])
        except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
            raise self._cannot_resume(path, f"is not valid backup metadata ({type(error).__name__}: {error})") from None
        if not os.path.exists(weights):
            raise self._cannot_resume(path, f"names the backup {weights}, which does not exist")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(weights)
        except (OSError, ValueError, KeyError) as error:  # h5py's truncated file; weights of another model
            raise self._cannot_resume(weights, f"cannot be read ({type(error).__name__}: {error})") from None
        # Keras only sets its epoch counter at an epoch's end: a step backup written before
        # the first epoch end of a resumed run would otherwise record epoch 0.
        self.resume_at(epoch)
        logger.info("Restored the backup %s: resuming at epoch %d (backup at step %d).", weights, epoch + 1, step)

    def backup(self):
        """A new weights file, then the metadata naming it, then the older files removed. A
        failed write (a full disk) removes what it wrote and raises an OSError saying that the
        previous backup is intact."""
        os.makedirs(self.write_dir, exist_ok=True)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        name = f"backup-step{step}.weights.h5"
        path, metadata = os.path.join(self.write_dir, name), os.path.join(self.write_dir, self.METADATA)
        try:
            saving.save_weights(self.model, path)
            write_json_atomically(metadata, {"epoch": self.epoch, "batch": self.batch, "step": step, "weights": name})
        except OSError as error:
            if os.path.exists(path):
                os.remove(path)  # the metadata still names the previous backup
            reason = os.strerror(error.errno) if error.errno else str(error)
            kept = ("the previous backup is intact, so rerunning the same command resumes from it"
                    if os.path.exists(metadata) else "there is no earlier backup")
            raise OSError(error.errno, f"Cannot write the training backup {path}: {reason}; {kept}.") from error
        for old in os.listdir(self.write_dir):
            if old.startswith("backup-step") and old != name:
                os.remove(os.path.join(self.write_dir, old))

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and os.path.exists(self.write_dir):
            shutil.rmtree(self.write_dir, ignore_errors=True)


class UnreadableImagesLogger(keras.callbacks.Callback):
    """Logs, after each epoch, how many unreadable images (or TFRecord records: any
    `pipelines.files.UnreadableImageCounter`) the training pipeline dropped, with where they
    were, and adds the count to the epoch's logs (so to the History and TensorBoard)."""

    def __init__(self, counter):
        super().__init__()
        self.counter = counter
        self._last = counter.total

    def on_epoch_end(self, epoch, logs=None):
        total = self.counter.total
        count, self._last = total - self._last, total
        if logs is not None:
            logs[self.counter.name] = count
        detail = self.counter.detail() if total else ""
        log = logger.warning if count else logger.info
        log("Epoch %d: %d %s skipped (%d in all)%s.", epoch + 1, count, self.counter.what, total,
            f": {detail}" if detail else "")

"""A run directory: the file names of a run and how to read it back.

`sdl_keras.train` (and `sdl_keras.convert --run_dir`) write one; `evaluate`, `export`,
`tag`, `search build --run_dir` and `calibrate` read it, always through `RunDirectory`:

  model.keras       the trained Keras model (images -> A)
  best.keras        the model of the epoch with the best validation ZSL (or GZSL) mAP
  vocabulary.npz    the TagVocabulary (all tags, seen and unseen, with vectors)
  config.json       the TrainConfig (sdl_keras.config), including how images are decoded
  metrics.json      the last epoch's logs (training metrics, zero-shot figures)
  results.json      what `sdl_keras.evaluate` measured
  calibration.json  score -> probability maps and thresholds (sdl_keras.calibration), fitted
                    on the validation split by `sdl_keras.calibrate` or `train --calibrate`
  logs/             TensorBoard logs (docs/training.md lists the dashboards)
  backup/           the BackupAndRestore state while training runs (removed at the end)

Importing this module imports no TensorFlow (only the model loader needs Keras).
"""

import os

from sdl_keras.atomic import write_json_atomically
from sdl_keras.calibration import Calibration
from sdl_keras.config import TrainConfig
from sdl_keras.embeddings import TagVocabulary


class RunDirectory:
    """The files of one run, by name, and their readers.

    Args:
        path: the run directory.
    """

    MODEL = "model.keras"
    BEST_MODEL = "best.keras"
    VOCABULARY = "vocabulary.npz"
    CONFIG = "config.json"
    METRICS = "metrics.json"
    RESULTS = "results.json"
    CALIBRATION = "calibration.json"
    LOGS = "logs"
    BACKUP = "backup"
    REQUIRED = (MODEL, VOCABULARY, CONFIG)

    def __init__(self, path):
        self.path = os.fspath(path)

    def __repr__(self):
        return f"RunDirectory({self.path!r})"

    def file(self, name):
        return os.path.join(self.path, name)

    model_path = property(lambda self: self.file(self.MODEL))
    best_model_path = property(lambda self: self.file(self.BEST_MODEL))
    vocabulary_path = property(lambda self: self.file(self.VOCABULARY))
    config_path = property(lambda self: self.file(self.CONFIG))
    metrics_path = property(lambda self: self.file(self.METRICS))
    results_path = property(lambda self: self.file(self.RESULTS))
    calibration_path = property(lambda self: self.file(self.CALIBRATION))
    logs_dir = property(lambda self: self.file(self.LOGS))
    backup_dir = property(lambda self: self.file(self.BACKUP))

    @property
    def name(self):
        return os.path.basename(os.path.normpath(self.path))

    def missing(self):
        """The files a complete run has and this one lacks."""
        return [name for name in self.REQUIRED if not os.path.exists(self.file(name))]

    def check(self):
        """Raises FileNotFoundError naming what is missing unless the run is complete."""
        missing = self.missing()
        if missing:
            raise FileNotFoundError(
                f"{self.path} is not a complete run directory: it lacks {', '.join(missing)} "
                "(written by sdl_keras.train when training ends, or by sdl_keras.convert --run_dir)."
            )
        return self

    # -- reading -----------------------------------------------------------------------------
    def config(self):
        return TrainConfig.load(self.config_path)

    def vocabulary(self):
        return TagVocabulary.load(self.vocabulary_path)

    def load_model(self, best=False, compile=False):
        """The run's Keras model (images -> A): model.keras, or best.keras with `best`.

        A run whose backbone is an external SavedModel (`savedmodel:<dir>`) loads it outside
        Keras' safe mode: the run names that folder itself."""
        from sdl_keras import saving

        external = self.config().model.backbone.startswith("savedmodel:") if os.path.exists(self.config_path) else False
        return saving.load_model(self.best_model_path if best else self.model_path, compile=compile,
                                 safe_mode=not external)

    def load(self, best=False):
        """(model, vocabulary, config) of a complete run, checked against each other."""
        self.check()
        model, vocabulary, config = self.load_model(best), self.vocabulary(), self.config()
        size = tuple(model.input_shape)[1:3]
        if size != (config.data.image_size,) * 2:
            raise ValueError(
                f"{self.config_path} says image_size={config.data.image_size}, but {self.model_path} takes "
                f"{size[0]}x{size[1]} images: the run directory's files do not belong together."
            )
        return model, vocabulary, config

    def calibration(self, vocabulary=None):
        """The run's Calibration, or None for an uncalibrated run; checked against the
        vocabulary's tags when one is given."""
        if not os.path.exists(self.calibration_path):
            return None
        calibration = Calibration.load(self.calibration_path)
        if vocabulary is not None:
            calibration.check_tags(vocabulary.tags, self.vocabulary_path)
        return calibration

    def calibration_for(self, model_path, vocabulary):
        """(the Calibration fitted for this model file and vocabulary, or None; why not)."""
        if not os.path.exists(self.calibration_path):
            return None, f"{self.calibration_path} does not exist (python -m sdl_keras.calibrate writes it)"
        calibration = self.calibration()
        fitted_for, name = calibration.fitted_on.get("model", self.MODEL), os.path.basename(model_path)
        if fitted_for != name:
            return None, (f"{self.calibration_path} was fitted for {fitted_for}, not {name} "
                          f"(python -m sdl_keras.calibrate --checkpoint={model_path})")
        if list(calibration.tags) != list(vocabulary.tags):
            return None, f"{self.calibration_path} was fitted for other tags than the vocabulary's"
        return calibration, None

    def decoding(self):
        """How the run decodes images, as every reader of it must: {"image_size", "crop", "decode_mode"}."""
        data = self.config().data
        return {"image_size": data.image_size, "crop": data.crop, "decode_mode": data.decode_mode}

    # -- writing -----------------------------------------------------------------------------
    def write_config(self, config):
        write_json_atomically(self.config_path, config.to_dict())

    def write_vocabulary(self, vocabulary):
        os.makedirs(self.path, exist_ok=True)
        vocabulary.save(self.vocabulary_path)

    def write_metrics(self, metrics):
        write_json_atomically(self.metrics_path, metrics)

    def write_results(self, results, path=None):
        write_json_atomically(path or self.results_path, results)

    def write_calibration(self, calibration):
        write_json_atomically(self.calibration_path, calibration.to_dict())

"""All the models a server serves (TF Serving's ServerCore): one `VersionedModel` per entry
of the model config, a thread polling their base paths every --file_system_poll_wait_seconds,
and, with --model_config_file_poll_wait_seconds, re-reading the config file: models added,
removed (unloaded once idle) or changed (policy, labels) without a restart.
"""

import logging
import threading
import time

from sdl_keras.serving.errors import not_found
from sdl_keras.serving.server_config import read_model_config_file
from sdl_keras.serving.versions import RetryPolicy, VersionedModel

logger = logging.getLogger(__name__)


class ModelManager:
    """`load(model_name, version, path)` returns a loaded, warmed-up servable."""

    def __init__(self, configs, load, retry=RetryPolicy(), poll_seconds=1.0, config_file=None,
                 config_poll_seconds=0.0):
        self._initial, self._load, self.retry = list(configs), load, retry
        self.poll_seconds, self.config_file, self.config_poll_seconds = poll_seconds, config_file, config_poll_seconds
        self._models = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.on_change = None  # called with the VersionedModel whose available versions changed

    def _apply(self, configs):
        """Makes the served models those of `configs`; returns the new ones."""
        wanted = {c.name: c for c in configs}
        added, retired = [], []
        with self._lock:
            for name, model in list(self._models.items()):
                config = wanted.get(name)
                if config is None or config.base_path != model.config.base_path:
                    retired.append(self._models.pop(name))
                elif config != model.config:
                    logger.info("Model %s: new config %s", name, config)
                    model.config = config
            for name, config in wanted.items():
                if name not in self._models:
                    model = VersionedModel(config, lambda v, p, n=name: self._load(n, v, p), self.retry)
                    model.on_change = self._changed
                    self._models[name] = model
                    added.append(model)
        for model in retired:
            logger.info("Model %s left the config: unloading it", model.name)
            model.retire()
        return added

    def _changed(self, model):
        if self.on_change:
            self.on_change(model)

    def start(self):
        """Loads the config's models (each aspired version once), then polls in the background."""
        for model in self._apply(self._initial):
            model.refresh(initial=True)
        self._thread = threading.Thread(target=self._poll, name="model-manager", daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        next_config = time.monotonic() + self.config_poll_seconds
        while not self._stop.wait(self.poll_seconds):
            try:
                if self.config_file and self.config_poll_seconds > 0 and time.monotonic() >= next_config:
                    next_config = time.monotonic() + self.config_poll_seconds
                    self._reload_config()
                for model in self.models():
                    model.refresh()
            except Exception:  # a polling error must not end the thread
                logger.exception("Polling the models failed")

    def _reload_config(self):
        try:
            configs = read_model_config_file(self.config_file)
        except (OSError, ValueError) as error:  # TF Serving keeps serving the last good config
            logger.error("Keeping the current models: %s", error)
            return
        for model in self._apply(configs):
            model.refresh(initial=True)

    def models(self):
        with self._lock:
            return list(self._models.values())

    def model(self, name):
        """The VersionedModel of `name`, or NOT_FOUND naming the served ones."""
        with self._lock:
            model = self._models.get(name)
            names = sorted(self._models)
        if model is None:
            raise not_found(f"Servable not found for request: Latest({name}): model {name!r} is not served "
                            f"(this server serves {names}).")
        return model

    def stop(self):
        """Ends polling and unloads every model (in-flight requests keep their versions until done)."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        for model in self.models():
            model.retire()

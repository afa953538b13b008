"""The versions of one served model through TF Serving's lifecycle: START -> LOADING ->
AVAILABLE -> UNLOADING -> END (ModelVersionStatus.State), under its model_version_policy.

Each poll of the base path (--file_system_poll_wait_seconds) decides, as TF Serving's
AspiredVersionsManager with its default AvailabilityPreservingPolicy does:
- which versions are aspired: the policy (latest N, specific, all) over the integer folders;
- loads: the highest aspired version not yet loaded first; a version is loaded and warmed
  up before it is AVAILABLE and before any version it replaces is unloaded;
- unloads: a version no longer aspired is unloaded once an aspired one is available (or
  none is aspired); it stops taking requests at once (UNLOADING) and is released when its
  last in-flight request has finished (END).

Failed loads differ from TF Serving on purpose. TF Serving retries --max_num_load_retries
times at a fixed --load_retry_interval_micros, then gives the version up. Here the interval
doubles from that value on each retry; after the last retry the version is END with its
error, and it is tried afresh whenever its files change. A version is loaded only once its
files have stayed unchanged for one poll (except at startup), so a version being copied in
place is loaded when the copy is complete, not half-way.
"""

import contextlib
import dataclasses
import logging
import os
import threading
import time

import grpc

from sdl_keras.saved_model import list_versions
from sdl_keras.serving.errors import ServingError, grpc_code, invalid, not_found

logger = logging.getLogger(__name__)

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """--max_num_load_retries and --load_retry_interval_micros (the first retry's delay; each
    later one doubles it)."""

    max_retries: int = 5
    interval_s: float = 60.0

    def delay(self, attempts):
        return self.interval_s * 2 ** (attempts - 1)


def folder_fingerprint(path):
    """(relative path, size, mtime) of every file under `path`: changes while files are written."""
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            file_path = os.path.join(root, name)
            try:
                info = os.stat(file_path)
            except OSError:  # removed while listed
                continue
            entries.append((os.path.relpath(file_path, path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(entries))


@dataclasses.dataclass
class _Version:
    number: int
    state: str = START
    error: ServingError = None  # why the last load failed
    servable: object = None
    attempts: int = 0
    next_attempt: float = 0.0
    fingerprint: tuple = None  # the folder's files at the last poll
    failed_fingerprint: tuple = None  # ... when the last load failed
    inflight: int = 0


class VersionedModel:
    """One model of the server's config and its versions.

    `load(version, path)` returns a loaded, warmed-up servable (with `close()`) or raises;
    `refresh()` is one poll; `acquire(version, label)` holds an AVAILABLE version for a
    request.
    """

    def __init__(self, config, load, retry=RetryPolicy()):
        self.config, self._load, self.retry = config, load, retry
        self._versions = {}
        self._base_missing = False
        self._lock = threading.Lock()
        self.on_change = None  # called after a version becomes AVAILABLE or leaves service

    @property
    def name(self):
        return self.config.name

    def refresh(self, initial=False):
        """One poll of the base path: start, retry and finish loads and unloads."""
        base = self.config.base_path
        if os.path.isdir(base) == self._base_missing:  # said once each time it goes or comes back
            self._base_missing = not self._base_missing
            if self._base_missing:
                logger.warning("Model %s: base path %s does not exist (yet).", self.name, base)
        aspired = self.config.aspired_versions(list_versions(base))
        now = time.monotonic()
        due = []
        with self._lock:
            for number in aspired:
                version = self._versions.setdefault(number, _Version(number))
                fingerprint = folder_fingerprint(os.path.join(base, str(number)))
                settled = initial or fingerprint == version.fingerprint
                version.fingerprint = fingerprint
                if settled and self._load_due(version, now):
                    due.append(version)
            for version in self._versions.values():
                if version.number not in aspired and version.state in (START, LOADING):
                    version.state = END  # no longer wanted before it ever served
            closing = self._apply_unload_policy(aspired)
        self._close(closing)
        for version in sorted(due, key=lambda v: -v.number):
            self._load_version(version, os.path.join(base, str(version.number)))
            with self._lock:
                closing = self._apply_unload_policy(self.config.aspired_versions(list_versions(base)))
            self._close(closing)

    def _load_due(self, version, now):
        if version.state == START:
            return True
        if version.state == LOADING:  # waiting for a retry
            return now >= version.next_attempt or version.fingerprint != version.failed_fingerprint
        if version.state == END:
            if version.error is None:
                return True  # unloaded earlier and aspired again
            if version.fingerprint != version.failed_fingerprint:
                version.attempts = 0  # its files changed since it was given up: a fresh start
                return True
        return False

    def _load_version(self, version, path):
        with self._lock:
            version.state = LOADING
        attempt = version.attempts + 1
        logger.info("Loading model %s version %d from %s (attempt %d)", self.name, version.number, path, attempt)
        try:
            servable = self._load(version.number, path)
        except Exception as error:  # any failure: the version is retried, the others keep serving
            failure = error if isinstance(error, ServingError) else _load_error(error)
            with self._lock:
                version.attempts, version.error = attempt, failure
                version.failed_fingerprint = version.fingerprint
                if attempt <= self.retry.max_retries:
                    delay = self.retry.delay(attempt)
                    version.next_attempt = time.monotonic() + delay
                    logger.error("Model %s version %d failed to load (attempt %d of %d; next try in %.1f s, or once "
                                 "its files change): %s", self.name, version.number, attempt,
                                 self.retry.max_retries + 1, delay, failure.message)
                else:
                    version.state = END
                    logger.error("Model %s version %d failed to load %d times; given up until its files change: %s",
                                 self.name, version.number, attempt, failure.message)
            return
        with self._lock:
            version.state, version.servable, version.error, version.attempts = AVAILABLE, servable, None, 0
        logger.info("Model %s version %d is AVAILABLE", self.name, version.number)
        self._changed()

    def _apply_unload_policy(self, aspired):
        """AvailabilityPreservingPolicy: unload the versions no longer aspired once an aspired
        one is available or none is aspired; otherwise keep the newest of them serving."""
        aspired = set(aspired)
        serving_aspired = any(v.state == AVAILABLE for n, v in self._versions.items() if n in aspired)
        leaving = sorted(n for n, v in self._versions.items() if n not in aspired and v.state == AVAILABLE)
        if aspired and not serving_aspired:
            leaving = leaving[:-1]
        closing = []
        for number in leaving:
            version = self._versions[number]
            version.state = UNLOADING
            logger.info("Unloading model %s version %d (%d requests in flight)", self.name, number, version.inflight)
            closing += self._finish_unload(version)
        return closing

    def _finish_unload(self, version):
        """END for an UNLOADING version without requests in flight; returns what to close."""
        if version.state != UNLOADING or version.inflight:
            return []
        servable, version.servable, version.state = version.servable, None, END
        logger.info("Model %s version %d is unloaded (END)", self.name, version.number)
        return [servable]

    def _close(self, servables):
        for servable in servables:
            servable.close()
        if servables:
            self._changed()

    def _changed(self):
        if self.on_change:
            self.on_change(self)

    def retire(self):
        """Unloads every version (the model left the config, or the server is stopping)."""
        with self._lock:
            for version in self._versions.values():
                if version.state in (START, LOADING):
                    version.state = END
            closing = self._apply_unload_policy(())
        self._close(closing)

    def _resolve(self, version, label):
        if label:
            number = self.config.label_version(label)
            if number is None:
                raise invalid(f"Unrecognized servable version label: {label} (model {self.name!r} has labels "
                              f"{dict(self.config.labels)}).")
            version = number
        available = sorted(n for n, v in self._versions.items() if v.state == AVAILABLE)
        if version is None:
            if not available:
                raise not_found(f"Servable not found for request: Latest({self.name}): no version of model "
                                f"{self.name!r} is available ({self._summary()}).")
            return self._versions[available[-1]]
        if version not in available:
            state = self._versions[version].state if version in self._versions else "not found"
            by = f" (label {label!r})" if label else ""
            raise not_found(f"Servable not found for request: Specific({self.name}, {version}){by}: version {version} "
                            f"of model {self.name!r} is {state}; available: {available}.")
        return self._versions[version]

    @contextlib.contextmanager
    def acquire(self, version=None, label=None):
        """Holds an AVAILABLE version's servable for one request: the latest, a number or a label."""
        with self._lock:
            held = self._resolve(version, label)
            held.inflight += 1
            servable = held.servable
        try:
            yield servable
        finally:
            with self._lock:
                held.inflight -= 1
                closing = self._finish_unload(held)
            self._close(closing)

    def status(self, version=None, label=None):
        """[(version, state, ServingError or None)], newest first, as GetModelStatus lists them."""
        with self._lock:
            rows = [(n, v.state, v.error) for n, v in sorted(self._versions.items(), reverse=True)]
        if label:
            version = self.config.label_version(label)
            if version is None:
                raise invalid(f"Unrecognized servable version label: {label}")
        if version is not None:
            rows = [row for row in rows if row[0] == version]
            if not rows:
                raise not_found(f"Could not find version {version} of model {self.name}")
        elif not rows:
            raise not_found(f"Could not find any versions of model {self.name}")
        return rows

    def available(self):
        with self._lock:
            return sorted(n for n, v in self._versions.items() if v.state == AVAILABLE)

    def _summary(self):
        states = {n: v.state for n, v in sorted(self._versions.items())}
        return f"versions {states}" if states else f"no versions under {self.config.base_path}"


def _load_error(error):
    """The ServingError a failed load is reported with (its TensorFlow status code when it has one)."""
    import tensorflow as tf

    code = grpc_code(error.error_code) if isinstance(error, tf.errors.OpError) else grpc.StatusCode.UNKNOWN
    return ServingError(code, f"{type(error).__name__}: {error}".strip())

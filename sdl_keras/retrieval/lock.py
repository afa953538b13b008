"""The writer lock of a retrieval index: one process at a time changes it.

An exclusive `flock` on INDEX/.writer.lock, held while a writer reads index.json, writes
its shards and replaces index.json, so no writer ever sees (or removes) the unfinished
shards of another live one, and none replaces index.json without the other's shards.
The kernel releases the lock when its holder exits, however it exits: a writer killed
with SIGKILL leaves no stale lock, and its unfinished shards are removed by the next
writer. The file holds the holder's pid, for the message of a writer kept out.

A writer kept out fails at once (timeout 0, the default) or waits up to `timeout`
seconds (None: as long as it takes). Either way it has not read or encoded an image
yet, so nothing is lost: rerun it when the other has finished. Readers take no lock
(index.json is replaced in one rename). flock needs a local filesystem or NFS v4.

The lock is re-entrant within a thread: a writer holding it for a whole job (a Beam build,
whose workers write the shards that its final step lists) calls the index's writing
methods, which take it again, without being kept out by itself. Another thread of the
same process is kept out as another process is.
"""

import fcntl
import itertools
import logging
import os
import threading
import time

logger = logging.getLogger(__name__)

LOCK_FILE = ".writer.lock"

# The lock files this process holds: path -> the holding thread.
_HELD = {}


class IndexLockedError(TimeoutError):
    """Another writer holds the index's lock; the message names the lock file and its holder."""


class WriterLock:
    """A context manager holding the exclusive writer lock of an index directory.

    Args:
        directory: the index directory (created when missing).
        timeout: seconds to wait for another writer; 0 fails at once, None waits as long
            as it takes.
        poll: seconds between attempts while waiting.
    """

    def __init__(self, directory, timeout=0, poll=0.1):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)
        self.timeout, self.poll = timeout, poll
        self._file = None
        self._nested = False

    def holder(self):
        """The pid the lock file names ("unknown" while the holder has not written it yet)."""
        try:
            with open(self.path, encoding="ascii") as f:
                return f.read().strip() or "unknown"
        except (OSError, UnicodeDecodeError):
            return "unknown"

    def __enter__(self):
        os.makedirs(self.directory, exist_ok=True)
        if _HELD.get(os.path.realpath(self.path)) == threading.get_ident():
            self._nested = True  # the outer one releases it
            return self
        self._file = open(self.path, "a+", encoding="ascii")  # "a+": the holder's pid stays until we hold it
        start = time.monotonic()
        for attempt in itertools.count():
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - start
                if self.timeout is not None and waited >= self.timeout:
                    self._file.close()
                    raise IndexLockedError(self._message(waited)) from None
                if not attempt:
                    logger.info("Waiting for %s: another writer (pid %s) is changing %s.", self.path, self.holder(),
                                self.directory)
                time.sleep(self.poll)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()
        _HELD[os.path.realpath(self.path)] = threading.get_ident()
        return self

    def _message(self, waited):
        return kept_out_message(f"{self.path} is held by another writer (pid {self.holder()}) changing "
                                f"{self.directory}", self.timeout, waited)

    def __exit__(self, *exc_info):
        if self._nested:
            self._nested = False
            return
        del _HELD[os.path.realpath(self.path)]
        self._file.seek(0)
        self._file.truncate()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None


def kept_out_message(what, timeout, waited):
    """The message of a writer kept out by another (`what`: the lock and its holder)."""
    if timeout:
        return f"{what}: waited {waited:.1f} s for it. Rerun when it has finished, or wait longer (--lock_timeout)."
    return f"{what}: one writer at a time. Rerun when it has finished, or pass --lock_timeout=SECONDS to wait for it."

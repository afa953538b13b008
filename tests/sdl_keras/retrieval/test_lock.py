"""The writer lock of a retrieval index: a writer kept out fails at once (or waits) with a
message naming the lock and its holder, before it consumes any image; a killed holder
leaves no stale lock, and the next writer removes the unfinished shards it left."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from sdl_keras.retrieval import index as retrieval
from sdl_keras.retrieval.lock import LOCK_FILE, IndexLockedError, WriterLock
from tests import testing

# Another writer's process, holding the lock as WriterLock does (flock, then its pid).
HOLDER = """
import fcntl, os, sys, time
f = open(sys.argv[1], "a+")
fcntl.flock(f, fcntl.LOCK_EX)
f.seek(0); f.truncate(); f.write(f"{os.getpid()}\\n"); f.flush()
print("held", flush=True)
time.sleep(600)
"""


def hold(path):
    process = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "held\n"
    return process


def test_a_writer_kept_out_fails_or_waits_naming_the_lock_and_its_holder(tmp_path):
    folder = str(tmp_path / "index")
    lock = os.path.join(folder, LOCK_FILE)
    with WriterLock(folder):  # creates the folder and the lock file
        pass
    holder = hold(lock)
    try:
        with pytest.raises(IndexLockedError) as error:
            with WriterLock(folder):
                pass
        assert str(error.value) == (f"{lock} is held by another writer (pid {holder.pid}) changing {folder}: one "
                                    "writer at a time. Rerun when it has finished, or pass --lock_timeout=SECONDS "
                                    "to wait for it.")
        start = time.monotonic()
        with pytest.raises(IndexLockedError, match=rf"\(pid {holder.pid}\) changing .*: waited 0\.[3-9] s for it"):
            with WriterLock(folder, timeout=0.3):
                pass
        assert time.monotonic() - start >= 0.3
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the killed holder's lock.
    with WriterLock(folder):
        assert open(lock).read() == f"{os.getpid()}\n"
    assert open(lock).read() == ""


def test_an_add_kept_out_consumes_nothing_and_the_next_removes_a_killed_writers_shards(tmp_path):
    path = str(tmp_path / "index")
    matrices = np.random.default_rng(0).standard_normal((6, 2, 4)).astype(np.float32)
    index = retrieval.build_index(path, [(["a", "b"], matrices[:2])])
    # A writer killed midway: its unfinished shard, never listed in index.json.
    unfinished = os.path.join(path, "shard-00001")
    os.makedirs(unfinished)
    open(os.path.join(unfinished, "matrices.f32"), "wb").write(b"\0" * 12)
    consumed = []

    def batches():
        consumed.append(True)
        yield ["c", "d"], matrices[2:4]

    holder = hold(os.path.join(path, LOCK_FILE))
    try:
        with pytest.raises(IndexLockedError, match=f"pid {holder.pid}"):
            index.add(batches())
        assert not consumed and os.path.exists(unfinished)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert index.add(batches()) == 2
    # An index loaded before another writer added to it still sees that writer's shards.
    stale = retrieval.RetrievalIndex.load(path)
    assert index.add([(["e"], matrices[4:5])]) == 1
    assert stale.add([(["f"], matrices[5:6])]) == 1
    reloaded = retrieval.RetrievalIndex.load(path)
    assert reloaded.ids == ["a", "b", "c", "d", "e", "f"]
    np.testing.assert_array_equal(np.concatenate([s.matrices for s in reloaded.shards]), matrices)


def test_the_lock_is_reentrant_within_a_thread_and_keeps_out_other_threads(tmp_path):
    folder = str(tmp_path / "index")
    kept_out = []

    def other_thread():
        try:
            with WriterLock(folder):
                pass
        except IndexLockedError as error:
            kept_out.append(str(error))

    with WriterLock(folder):
        with WriterLock(folder):  # a job's writing steps under the job's lock (a Beam build's attach)
            pass
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert kept_out and f"(pid {os.getpid()})" in kept_out[0]
        assert open(os.path.join(folder, LOCK_FILE)).read() == f"{os.getpid()}\n"  # still held
    with WriterLock(folder):  # released by the outer one
        pass


if __name__ == "__main__":
    testing.run(__file__)

"""Server-side batching as TF Serving's BatchingSession over a BasicBatchScheduler does it
(tensorflow_serving/batching/batching_session.cc): requests to the same signature are queued,
concatenated along their first dimension into batches of up to `max_batch_size` images,
each batch waiting at most `batch_timeout_micros` after its first request for more, padded
to the next `allowed_batch_sizes` entry with copies of a row, run once, and split back.

Where this differs from TF Serving, on purpose:
- Only `images` is batched. Every other input of a request (score_tags' `tag_vectors`, a
  [T, d] matrix that is the same for all of a request's images but differs between requests)
  is passed through once: requests join a batch only when those inputs are byte-identical,
  so they have their own queue per distinct value. TF Serving concatenates every input, which
  for score_tags fails ("Batching Run() input tensors must have equal 0th-dimension size") or
  mixes tag sets.
- A batch that fails (one request's image is corrupt past its header) is re-run request by
  request, so each request gets its own answer and good requests never fail with a bad one.
"""

import collections
import hashlib
import threading
import time

import grpc
import numpy as np

from sdl_keras.serving import monitoring
from sdl_keras.serving.errors import ServingError, invalid

IMAGES = "images"


class _Task:
    def __init__(self, inputs):
        self.inputs = inputs
        self.size = len(inputs[IMAGES])
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.outputs = self.error = None


class _Batch:
    def __init__(self, key, deadline):
        self.key, self.deadline = key, deadline
        self.tasks, self.size, self.closed = [], 0, False


def shared_inputs_key(signature, inputs):
    """Requests batch together when they call the same signature with identical non-image inputs."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(set(inputs) - {IMAGES}):
        array = np.ascontiguousarray(inputs[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return signature, digest.hexdigest()


class BatchScheduler:
    """Batches one servable's requests; `run(signature, inputs)` runs one batch and returns
    {output: array with one row per image}, raising the error a request should get.

    `submit` blocks its caller until the request's batch has run (TF Serving's
    BatchingSession::Run), so request threads should number about twice `max_batch_size`.
    """

    def __init__(self, parameters, run, name="batch"):
        self.parameters, self._run = parameters, run
        self._queues = collections.OrderedDict()  # key -> deque of _Batch, oldest first
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
                         for i in range(parameters.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, signature, inputs):
        """This request's outputs, computed in a batch with others."""
        params = self.parameters
        task = _Task(inputs)
        if task.size > params.max_batch_size:
            raise invalid(f"Task size {task.size} is larger than maximum input batch size {params.max_batch_size} "
                          "(max_batch_size of the batching parameters).")
        key = shared_inputs_key(signature, inputs)
        with self._cond:
            if self._stopped:
                raise ServingError(grpc.StatusCode.UNAVAILABLE, "The batch scheduler is stopping.")
            queue = self._queues.setdefault(key, collections.deque())
            batch = queue[-1] if queue and not queue[-1].closed else None
            if batch is not None and batch.size + task.size > params.max_batch_size:
                batch.closed, batch = True, None
            if batch is None:
                if len(queue) >= params.max_enqueued_batches:
                    raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                        "The batch scheduling queue to which this task was submitted is full "
                                        f"({params.max_enqueued_batches} batches, max_enqueued_batches).")
                batch = _Batch(key, task.enqueued + params.batch_timeout_micros / 1e6)
                queue.append(batch)
            batch.tasks.append(task)
            batch.size += task.size
            batch.closed = batch.closed or batch.size >= params.max_batch_size
            self._cond.notify_all()  # idle batch threads recompute their wait for the new deadline
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def _take_ready(self):
        """(the oldest batch that is full or past its timeout, None) or (None, seconds to wait)."""
        now, wait, ready = time.monotonic(), None, None
        for queue in self._queues.values():
            if not queue:
                continue
            batch = queue[0]
            if batch.closed or batch.deadline <= now or self._stopped:
                if ready is None or batch.tasks[0].enqueued < ready.tasks[0].enqueued:
                    ready = batch
            else:
                wait = batch.deadline - now if wait is None else min(wait, batch.deadline - now)
        if ready is None:
            return None, wait
        self._queues[ready.key].popleft()
        if not self._queues[ready.key]:
            del self._queues[ready.key]
        ready.closed = True
        return ready, None

    def _work(self):
        while True:
            with self._cond:
                while True:
                    batch, wait = self._take_ready()
                    if batch is not None:
                        break
                    if self._stopped:
                        return
                    self._cond.wait(wait)
            self._process(batch)

    def _process(self, batch):
        dequeued = time.monotonic()
        for task in batch.tasks:
            monitoring.QUEUING_LATENCY.add(self.parameters.thread_pool_name, value=(dequeued - task.enqueued) * 1e6)
        signature = batch.key[0]
        try:
            self._run_tasks(signature, batch.tasks)
        except Exception as error:  # a failed batch is re-run request by request: each gets its own answer
            if len(batch.tasks) == 1:
                batch.tasks[0].error = error
            else:
                for task in batch.tasks:
                    try:
                        self._run_tasks(signature, [task])
                    except Exception as task_error:
                        task.error = task_error
        for task in batch.tasks:
            task.done.set()

    def _run_tasks(self, signature, tasks):
        size = sum(t.size for t in tasks)
        padded = self.parameters.padded_size(size)
        images = [t.inputs[IMAGES] for t in tasks]
        if padded > size:
            # As BatchingSession::MergeInputTensors: pad with the last task's first row.
            images.append(np.repeat(images[-1][:1], padded - size, axis=0))
        inputs = dict(tasks[0].inputs, images=np.concatenate(images))
        monitoring.WRAPPED_RUN_COUNT.increment()
        outputs = self._run(signature, inputs)
        for name, value in outputs.items():
            if np.ndim(value) == 0 or len(value) != padded:
                raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                                    f"Batched output tensor {name!r} has 0th dimension {np.shape(value)[:1]}, not "
                                    f"the batch size {padded}: signature {signature!r} cannot be batched.")
        start = 0
        for task in tasks:
            task.outputs = {name: value[start:start + task.size] for name, value in outputs.items()}
            start += task.size

    def stop(self):
        """Lets queued batches run, then ends the batch threads."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

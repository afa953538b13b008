"""Server-side batching as TF Serving's BatchingSession: concatenation up to max_batch_size
within batch_timeout_micros, padding to allowed sizes, splitting back, a full queue and an
oversized request refused, score_tags' tag vectors batched only when identical, and a failed
batch re-run request by request. The run function is a stand-in that records its batches."""

import threading
import time

import grpc
import numpy as np
import pytest

from sdl_keras.serving.batching import BatchScheduler
from sdl_keras.serving.errors import ServingError, invalid
from sdl_keras.serving.server_config import BatchingParameters
from tests import testing


class Recorder:
    """Runs a batch: each image's "score" is its own bytes' length times the tag vectors' sum."""

    def __init__(self, delay_s=0.0):
        self.batches, self.delay_s, self.lock = [], delay_s, threading.Lock()
        self.running = threading.Event()

    def __call__(self, signature, inputs):
        with self.lock:
            self.batches.append((signature, [bytes(b) for b in inputs["images"]]))
        self.running.set()
        time.sleep(self.delay_s)
        if any(b == b"bad" for b in inputs["images"]):
            raise invalid("an image in this batch is bad")
        weight = float(inputs["tag_vectors"].sum()) if "tag_vectors" in inputs else 1.0
        return {"scores": np.array([len(b) * weight for b in inputs["images"]]), "tags": np.array(inputs["images"])}


def _submit_together(scheduler, requests):
    """Submits (signature, inputs) pairs from threads at once; returns results or errors in order."""
    results = [None] * len(requests)

    def submit(index):
        try:
            results[index] = scheduler.submit(*requests[index])
        except ServingError as error:
            results[index] = error

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def _images(*data):
    return {"images": np.array(list(data), dtype=object)}


def test_requests_are_concatenated_within_the_timeout_and_split_back():
    run = Recorder()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=1_000_000, num_batch_threads=1),
                               run)
    requests = [("serving_default", _images(b"a" * (i + 1), b"b" * (i + 1))) for i in range(3)]
    results = _submit_together(scheduler, requests)
    scheduler.stop()
    assert len(run.batches) == 1 and len(run.batches[0][1]) == 6  # one batch of the three requests
    for i, result in enumerate(results):
        assert result["scores"].tolist() == [i + 1, i + 1]
        assert result["tags"].tolist() == [b"a" * (i + 1), b"b" * (i + 1)]


def test_a_full_batch_runs_at_once_and_sizes_are_padded_to_the_allowed_ones():
    run = Recorder()
    params = BatchingParameters(max_batch_size=4, batch_timeout_micros=10_000_000, num_batch_threads=1,
                                allowed_batch_sizes=(2, 4))
    scheduler = BatchScheduler(params, run)
    start = time.monotonic()
    results = _submit_together(scheduler, [("matrix", _images(b"x", b"y")), ("matrix", _images(b"zz", b"w"))])
    assert time.monotonic() - start < 5  # full at 4: no waiting for the 10 s timeout
    scheduler.stop()
    assert sorted(len(b) for _, b in run.batches) == [4]
    assert sorted(r["scores"].tolist() for r in results) == [[1, 1], [2, 1]]
    run = Recorder()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=4, batch_timeout_micros=0, num_batch_threads=1,
                                                  allowed_batch_sizes=(2, 4)), run)
    assert scheduler.submit("matrix", _images(b"abc"))["scores"].tolist() == [3]
    scheduler.stop()
    # One image padded to the allowed size 2 with a copy of the request's first row; the copy's output dropped.
    assert run.batches == [("matrix", [b"abc", b"abc"])]


def test_oversized_requests_and_a_full_queue_are_refused():
    run = Recorder(delay_s=1.0)
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=2, batch_timeout_micros=0, max_enqueued_batches=1,
                                                  num_batch_threads=1), run)
    with pytest.raises(ServingError, match="Task size 3 is larger than maximum input batch size 2") as caught:
        scheduler.submit("serving_default", _images(b"a", b"b", b"c"))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    # One batch runs (1 s), the next waits in the queue (max_enqueued_batches=1): a third is refused.
    first = threading.Thread(target=scheduler.submit, args=("serving_default", _images(b"a", b"b")))
    first.start()
    assert run.running.wait(10)
    results = _submit_together(scheduler, [("serving_default", _images(b"c", b"d"))] * 2)
    first.join()
    scheduler.stop()
    refused = [r for r in results if isinstance(r, ServingError)]
    assert len(refused) == 1 and refused[0].code == grpc.StatusCode.UNAVAILABLE
    assert "batch scheduling queue to which this task was submitted is full" in refused[0].message


def test_score_tags_requests_batch_only_with_identical_tag_vectors():
    run = Recorder()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=16, batch_timeout_micros=1_000_000, num_batch_threads=2),
                               run)
    ones, twos = np.ones((3, 4), np.float32), np.full((3, 4), 2.0, np.float32)
    requests = [("score_tags", {"images": np.array([b"ab"], dtype=object), "tag_vectors": v})
                for v in (ones, twos, ones, twos)]
    results = _submit_together(scheduler, requests)
    scheduler.stop()
    assert sorted(len(images) for _, images in run.batches) == [2, 2]  # one batch per distinct tag vectors
    assert [r["scores"].tolist() for r in results] == [[24.0], [48.0], [24.0], [48.0]]


def test_a_failing_batch_is_rerun_so_only_the_bad_request_fails():
    run = Recorder()
    scheduler = BatchScheduler(BatchingParameters(max_batch_size=8, batch_timeout_micros=1_000_000, num_batch_threads=1),
                               run)
    results = _submit_together(scheduler, [("serving_default", _images(b"good")), ("serving_default", _images(b"bad")),
                                           ("serving_default", _images(b"fine", b"ok"))])
    scheduler.stop()
    assert results[0]["scores"].tolist() == [4] and results[2]["scores"].tolist() == [4, 2]
    assert isinstance(results[1], ServingError) and "bad" in results[1].message
    assert len(run.batches) == 4  # the batch of three, then each request alone


if __name__ == "__main__":
    testing.run(__file__)

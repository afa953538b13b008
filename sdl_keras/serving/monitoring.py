"""The server's metrics, named and exported as TF Serving's Prometheus exporter does
(tensorflow_serving/util/prometheus_exporter.cc): a metric `/tensorflow/serving/request_count`
is served as `:tensorflow:serving:request_count`, samplers as cumulative histograms with
`_bucket{le=...}`, `_sum` and `_count` lines.

The metrics and their labels are TF Serving's own:
- `/tensorflow/serving/request_count` {model_name, status} and
  `/tensorflow/serving/request_latency` {model_name, API, entrypoint, status}, microseconds
  (tensorflow_serving/servables/tensorflow/util.cc; API "Predict", entrypoint "GRPC"/"REST");
- `/tensorflow/serving/model_warmup_latency` {model_path, status}
  (servables/tensorflow/saved_model_warmup_util.cc);
- `/tensorflow/serving/batching_session/queuing_latency` {thread_pool_name} and
  `/tensorflow/serving/batching_session/wrapped_run_count` (batching/batching_session.cc).
"""

import re
import threading


def exponential_buckets(scale, growth, count):
    """tensorflow::monitoring::Buckets::Exponential: upper bucket limits scale * growth**i."""
    return [scale * growth**i for i in range(count)]


class _Metric:
    def __init__(self, name, description, labels):
        self.name, self.description, self.labels = name, description, tuple(labels)
        self._cells = {}
        self._lock = threading.Lock()

    def _key(self, labels):
        if len(labels) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {labels}")
        return tuple(str(v) for v in labels)

    @property
    def prometheus_name(self):
        # GetPrometheusMetricName: every character outside [a-zA-Z0-9_] becomes ':'.
        return re.sub(r"[^a-zA-Z0-9_]", ":", self.name)

    def _label_text(self, key, extra=()):
        pairs = [f'{name}="{_escape(value)}"' for name, value in zip(self.labels, key)] + list(extra)
        return "{" + ",".join(pairs) + "}"


def _escape(value):
    return value.replace("\\", "\\\\").replace('"', '\\"')


class Counter(_Metric):
    """A cumulative count per label values (monitoring::Counter)."""

    def increment(self, *labels, by=1):
        key = self._key(labels)
        with self._lock:
            self._cells[key] = self._cells.get(key, 0) + by

    def value(self, *labels):
        with self._lock:
            return self._cells.get(self._key(labels), 0)

    def lines(self):
        with self._lock:
            cells = sorted(self._cells.items())
        yield f"# TYPE {self.prometheus_name} counter"
        for key, value in cells:
            yield f"{self.prometheus_name}{self._label_text(key)} {value}"


class Sampler(_Metric):
    """A distribution per label values (monitoring::Sampler), exported as a histogram."""

    def __init__(self, name, description, labels, buckets):
        super().__init__(name, description, labels)
        self.limits = list(buckets)

    def add(self, *labels, value):
        key = self._key(labels)
        with self._lock:
            counts, total = self._cells.get(key, ([0] * (len(self.limits) + 1), 0.0))
            index = next((i for i, limit in enumerate(self.limits) if value < limit), len(self.limits))
            counts[index] += 1
            self._cells[key] = (counts, total + value)

    def count(self, *labels):
        with self._lock:
            cell = self._cells.get(self._key(labels))
        return sum(cell[0]) if cell else 0

    def lines(self):
        with self._lock:
            cells = sorted((key, (list(counts), total)) for key, (counts, total) in self._cells.items())
        name = self.prometheus_name
        yield f"# TYPE {name} histogram"
        for key, (counts, total) in cells:
            cumulative = 0
            for i, count in enumerate(counts):
                cumulative += count
                limit = f"{self.limits[i]:g}" if i < len(self.limits) else "+Inf"
                le = f'le="{limit}"'
                yield f"{name}_bucket{self._label_text(key, [le])} {cumulative}"
            yield f"{name}_sum{self._label_text(key)} {total:g}"
            yield f"{name}_count{self._label_text(key)} {cumulative}"


# TF Serving's latency samplers: "Scale of 10, power of 1.8 with bucket count 33 (~20 minutes)".
_LATENCY_BUCKETS = exponential_buckets(10, 1.8, 33)

REQUEST_COUNT = Counter("/tensorflow/serving/request_count", "The total number of requests.",
                        ["model_name", "status"])
REQUEST_LATENCY = Sampler("/tensorflow/serving/request_latency",
                          "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
                          ["model_name", "API", "entrypoint", "status"], _LATENCY_BUCKETS)
WARMUP_LATENCY = Sampler("/tensorflow/serving/model_warmup_latency",
                         "Distribution of wall time (in microseconds) for warming up the model.",
                         ["model_path", "status"], _LATENCY_BUCKETS)
QUEUING_LATENCY = Sampler("/tensorflow/serving/batching_session/queuing_latency",
                          "Distribution of wall time spent (in microseconds) in queuing", ["thread_pool_name"],
                          exponential_buckets(100, 1.2, 52))
WRAPPED_RUN_COUNT = Counter("/tensorflow/serving/batching_session/wrapped_run_count",
                            "Total count of run calls on the wrapped session", [])

METRICS = (REQUEST_COUNT, REQUEST_LATENCY, WARMUP_LATENCY, QUEUING_LATENCY, WRAPPED_RUN_COUNT)


def record_request(model_name, api, entrypoint, status, seconds):
    """One request's count and latency; `status` is a grpc.StatusCode."""
    code = status.name
    REQUEST_COUNT.increment(model_name, code)
    REQUEST_LATENCY.add(model_name, api, entrypoint, code, value=seconds * 1e6)


def prometheus_text():
    """The Prometheus text exposition page (PrometheusExporter::GeneratePage)."""
    return "\n".join(line for metric in METRICS for line in metric.lines()) + "\n"

"""TF Serving's configuration files, read as `tensorflow_model_server` reads them (protobuf
text format): the model server config (--model_config_file), the monitoring config
(--monitoring_config_file) and the batching parameters (--batching_parameters_file).

`ModelServerConfig` comes from the tensorflow-serving-api package. `MonitoringConfig`
(tensorflow_serving/config/monitoring_config.proto) and `BatchingParameters`
(tensorflow_serving/servables/tensorflow/session_bundle_config.proto) have no Python
module there, so their messages are declared here field for field, with the same names,
numbers and types, and parsed by `google.protobuf.text_format` like the shipped ones: a
misspelt field is a parse error naming the file, line and column.
"""

import dataclasses
import functools
import os

from google.protobuf import text_format

# PrometheusExporter::kPrometheusPath (tensorflow_serving/util/prometheus_exporter.cc).
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def parse_text_proto(path, message, what):
    """`message` filled from the text-format file at `path`; errors name the file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as error:
        raise FileNotFoundError(f"Cannot read the {what} {path}: {error.strerror}.") from None
    try:
        return text_format.Parse(text, message)
    except text_format.ParseError as error:
        raise ValueError(f"{path}: not a valid {what} ({message.DESCRIPTOR.full_name} text proto): {error}") from None


@functools.cache
def _declared_messages():
    """{name: message class} for the two TF Serving config messages the API package lacks."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    field = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(wrappers)
    files = {
        "tensorflow_serving/config/monitoring_config.proto": {
            "PrometheusConfig": [(1, "enable", field.TYPE_BOOL, None, False), (2, "path", field.TYPE_STRING, None, False)],
            "MonitoringConfig": [(1, "prometheus_config", field.TYPE_MESSAGE, ".tensorflow.serving.PrometheusConfig",
                                  False)],
        },
        "tensorflow_serving/servables/tensorflow/session_bundle_config.proto": {
            "BatchingParameters": [
                (1, "max_batch_size", field.TYPE_MESSAGE, ".google.protobuf.Int64Value", False),
                (2, "batch_timeout_micros", field.TYPE_MESSAGE, ".google.protobuf.Int64Value", False),
                (3, "max_enqueued_batches", field.TYPE_MESSAGE, ".google.protobuf.Int64Value", False),
                (4, "num_batch_threads", field.TYPE_MESSAGE, ".google.protobuf.Int64Value", False),
                (5, "thread_pool_name", field.TYPE_MESSAGE, ".google.protobuf.StringValue", False),
                (6, "allowed_batch_sizes", field.TYPE_INT64, None, True),
                (7, "pad_variable_length_inputs", field.TYPE_BOOL, None, False),
            ],
        },
    }
    classes = {}
    for file_name, messages in files.items():
        proto = descriptor_pb2.FileDescriptorProto(name=file_name, package="tensorflow.serving", syntax="proto3",
                                                   dependency=[wrappers.name])
        for message_name, fields in messages.items():
            message = proto.message_type.add(name=message_name)
            for number, name, kind, type_name, repeated in fields:
                message.field.add(name=name, number=number, type=kind, type_name=type_name,
                                  label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL)
        pool.Add(proto)
        for message_name in messages:
            descriptor = pool.FindMessageTypeByName(f"tensorflow.serving.{message_name}")
            classes[message_name] = message_factory.GetMessageClass(descriptor)
    return classes


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One entry of a ModelServerConfig's model_config_list.

    `policy` is TF Serving's model_version_policy: ("latest", N), ("specific", versions)
    or ("all",); `labels` maps version labels to versions.
    """

    name: str
    base_path: str
    policy: tuple = ("latest", 1)
    labels: tuple = ()  # sorted (label, version) pairs

    def aspired_versions(self, versions):
        """The versions, among those found under the base path, that the policy serves."""
        kind = self.policy[0]
        if kind == "latest":
            return sorted(versions)[-self.policy[1]:]
        if kind == "specific":
            return sorted(set(versions) & set(self.policy[1]))
        return sorted(versions)

    def label_version(self, label):
        return dict(self.labels).get(label)


def _model_config(proto, source):
    if proto.model_platform not in ("", "tensorflow"):
        raise ValueError(f"{source}: model {proto.name!r} has model_platform {proto.model_platform!r}; "
                         "this server serves only 'tensorflow' SavedModels.")
    if not proto.name or not proto.base_path:
        raise ValueError(f"{source}: every model config needs a name and a base_path (got {proto.name!r}, "
                         f"{proto.base_path!r}).")
    policy_proto = proto.model_version_policy
    kind = policy_proto.WhichOneof("policy_choice") or "latest"
    if kind == "latest":
        # "Number of latest versions to serve. (The default is 1.)"
        policy = ("latest", policy_proto.latest.num_versions or 1)
    elif kind == "specific":
        if not policy_proto.specific.versions:
            raise ValueError(f"{source}: model {proto.name!r} has a 'specific' version policy listing no versions.")
        policy = ("specific", tuple(sorted(policy_proto.specific.versions)))
    else:
        policy = ("all",)
    return ModelConfig(proto.name, os.path.abspath(proto.base_path), policy, tuple(sorted(proto.version_labels.items())))


def read_model_config_file(path):
    """The ModelConfigs of a --model_config_file (a ModelServerConfig text proto)."""
    from tensorflow_serving.config import model_server_config_pb2

    config = parse_text_proto(path, model_server_config_pb2.ModelServerConfig(), "model config file")
    if config.WhichOneof("config") == "custom_model_config":
        raise ValueError(f"{path}: custom_model_config is not supported; list the models in model_config_list.")
    models = [_model_config(proto, path) for proto in config.model_config_list.config]
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: model names must be unique; {duplicates} appear more than once.")
    if not models:
        raise ValueError(f"{path}: model_config_list lists no model.")
    return models


def single_model_config(base_path, model_name=None):
    """--model_base_path with --model_name: one model, its latest version (TF Serving's shortcut;
    the name defaults to the base path's folder name where TF Serving says 'default')."""
    base_path = os.path.abspath(base_path)
    return [ModelConfig(model_name or os.path.basename(os.path.normpath(base_path)), base_path)]


def read_monitoring_config(path):
    """The Prometheus metrics path of a --monitoring_config_file, or None when not enabled."""
    config = parse_text_proto(path, _declared_messages()["MonitoringConfig"](), "monitoring config file")
    if not config.prometheus_config.enable:
        return None
    metrics_path = config.prometheus_config.path or PROMETHEUS_PATH
    if not metrics_path.startswith("/"):
        raise ValueError(f"{path}: prometheus_config.path must start with '/', got {metrics_path!r}.")
    return metrics_path


@dataclasses.dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters with its defaults (BasicBatchScheduler::Options)
    for the fields a file leaves out. `pad_variable_length_inputs` is read and has nothing to
    pad: only `images`, a vector of encoded images, is batched. `thread_pool_name` names the
    batching metrics' pool."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    thread_pool_name: str = "batch_threads"
    allowed_batch_sizes: tuple = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"Batching parameter {name} must be at least 1, got {getattr(self, name)}.")
        if self.batch_timeout_micros < 0:
            raise ValueError(f"Batching parameter batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}.")
        sizes = list(self.allowed_batch_sizes)
        if sizes and (sizes != sorted(set(sizes)) or sizes[0] < 1):
            raise ValueError(f"allowed_batch_sizes must be positive and increasing, got {sizes}.")
        if sizes and sizes[-1] != self.max_batch_size:
            raise ValueError(f"The final entry of allowed_batch_sizes ({sizes[-1]}) must equal max_batch_size "
                             f"({self.max_batch_size}).")

    def padded_size(self, size):
        """The smallest allowed batch size holding `size` (RoundToLowestAllowedBatchSize)."""
        return next((s for s in self.allowed_batch_sizes if s >= size), size)

    def warmup_sizes(self):
        """The batch sizes a version is warmed up at: every allowed size, else 1 and the largest."""
        return list(self.allowed_batch_sizes) or sorted({1, self.max_batch_size})


def read_batching_parameters(path=None):
    """BatchingParameters from a --batching_parameters_file; TF Serving's defaults without one
    (and its thread pool name for --enable_batching alone)."""
    if path is None:
        return BatchingParameters(thread_pool_name="model_server_batch_threads")
    proto = parse_text_proto(path, _declared_messages()["BatchingParameters"](), "batching parameters file")
    values = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                 "thread_pool_name"):
        if proto.HasField(name):
            values[name] = getattr(proto, name).value
    try:
        return BatchingParameters(**values, allowed_batch_sizes=tuple(proto.allowed_batch_sizes),
                                  pad_variable_length_inputs=proto.pad_variable_length_inputs)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None

"""TF Serving's config files as the server reads them: the model config's version policies and
labels, the monitoring config, the batching parameters with TF Serving's defaults, and errors
that name the file, line and field."""

import pytest

from sdl_keras.serving import server_config
from tests import testing


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_model_config_policies_and_labels(tmp_path):
    path = _write(tmp_path, "models.config", """
model_config_list {
  config { name: "a" base_path: "/m/a" model_platform: "tensorflow" }
  config { name: "b" base_path: "/m/b" model_version_policy { latest { num_versions: 2 } } }
  config { name: "c" base_path: "relative/c"
           model_version_policy { specific { versions: 3 versions: 1 } }
           version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 } }
  config { name: "d" base_path: "/m/d" model_version_policy { all {} } }
}""")
    a, b, c, d = server_config.read_model_config_file(path)
    on_disk = [1, 2, 3, 4]
    assert a.aspired_versions(on_disk) == [4]  # TF Serving's default: the latest one
    assert b.aspired_versions(on_disk) == [3, 4]
    assert c.aspired_versions(on_disk) == [1, 3] and c.aspired_versions([2, 3]) == [3]
    assert d.aspired_versions(on_disk) == on_disk
    assert (c.label_version("stable"), c.label_version("canary"), c.label_version("nope")) == (1, 3, None)
    assert c.base_path.endswith("/relative/c") and c.base_path.startswith("/")  # relative to the working directory
    (single,) = server_config.single_model_config("/m/demo/")
    assert (single.name, single.base_path, single.policy) == ("demo", "/m/demo", ("latest", 1))


@pytest.mark.parametrize("text,message", [
    ('model_config_list { config { name: "a" base_path: "/a" colour: 1 } }',
     r'models.config: not a valid model config file .*1:\d+ : .*has no field named "colour"'),
    ('model_config_list { config { name: "a" base_path: "/a" } config { name: "a" base_path: "/b" } }',
     r"model names must be unique; \['a'\]"),
    ('model_config_list { config { name: "a" base_path: "/a" model_platform: "pytorch" } }',
     "model_platform 'pytorch'; this server serves only 'tensorflow'"),
    ('model_config_list { config { name: "a" base_path: "/a" model_version_policy { specific { } } } }',
     "'specific' version policy listing no versions"),
    ('model_config_list { config { base_path: "/a" } }', "needs a name and a base_path"),
    ("custom_model_config { }", "custom_model_config is not supported"),
])
def test_model_config_errors_name_the_file_and_problem(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        server_config.read_model_config_file(_write(tmp_path, "models.config", text))


def test_monitoring_config(tmp_path):
    read = server_config.read_monitoring_config
    assert read(_write(tmp_path, "on", 'prometheus_config { enable: true path: "/metrics" }')) == "/metrics"
    assert read(_write(tmp_path, "default", "prometheus_config { enable: true }")) == "/monitoring/prometheus/metrics"
    assert read(_write(tmp_path, "off", "prometheus_config { path: '/x' }")) is None
    with pytest.raises(ValueError, match='has no field named "enabled"'):
        read(_write(tmp_path, "bad", "prometheus_config { enabled: true }"))
    with pytest.raises(FileNotFoundError, match="Cannot read the monitoring config file"):
        read(str(tmp_path / "missing"))


def test_batching_parameters_with_tf_servings_defaults(tmp_path):
    params = server_config.read_batching_parameters(_write(tmp_path, "batching.txt", """
max_batch_size { value: 16 }
batch_timeout_micros { value: 500 }
thread_pool_name { value: "pool" }
allowed_batch_sizes: 4
allowed_batch_sizes: 16
pad_variable_length_inputs: true
"""))
    assert (params.max_batch_size, params.batch_timeout_micros, params.thread_pool_name) == (16, 500, "pool")
    assert (params.max_enqueued_batches, params.allowed_batch_sizes) == (10, (4, 16))  # 10: TF Serving's default
    assert [params.padded_size(n) for n in (1, 4, 5, 16)] == [4, 4, 16, 16]
    assert params.warmup_sizes() == [4, 16]
    defaults = server_config.read_batching_parameters(None)
    assert (defaults.max_batch_size, defaults.batch_timeout_micros) == (1000, 0)
    assert defaults.thread_pool_name == "model_server_batch_threads" and defaults.warmup_sizes() == [1, 1000]


@pytest.mark.parametrize("text,message", [
    ("max_batch_size: 16", "max_batch_size"),  # a wrapper message, not a number
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4", r"final entry of allowed_batch_sizes \(4\) must equal "
                                                            r"max_batch_size \(8\)"),
    ("max_batch_size { value: 8 } allowed_batch_sizes: 8 allowed_batch_sizes: 2", "positive and increasing"),
    ("num_batch_threads { value: 0 }", "num_batch_threads must be at least 1"),
    ("enable_large_batch_splitting { value: true }", 'has no field named "enable_large_batch_splitting"'),
])
def test_batching_parameter_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        server_config.read_batching_parameters(_write(tmp_path, "batching.txt", text))


if __name__ == "__main__":
    testing.run(__file__)

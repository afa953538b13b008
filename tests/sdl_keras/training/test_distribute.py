"""Strategies and XLA modes: MirroredStrategy on two logical CPUs equals one device for the
same global batch; MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1
agrees on the weights and only the chief writes the run directory."""

import json
import os
import socket
import subprocess
import sys
import types

import numpy as np
import pytest

from pipelines.readers.demo import DemoConfig, make_demo_dataset
from pipelines.environment import CPU_AUTO_CLUSTERING_FLAG
from sdl_keras.layers import recipe_augmentation
from sdl_keras.training import distribute
from tests import testing

# Each script run in a subprocess receives the demo files and a folder for its outputs.
TRAIN_SCRIPT = """
import json, os, sys
import numpy as np
import tensorflow as tf
files, out, mode = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
if mode == "mirrored":
    # Two logical CPU devices, configured before TensorFlow initializes its devices.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import logging
logging.basicConfig(level=logging.INFO)
import keras
from sdl_keras.config import TrainConfig  # noqa: E402
from sdl_keras.training import train  # noqa: E402

def run(strategy, xla_mode, output_dir, name):
    keras.backend.clear_session()
    config = TrainConfig.from_flat(
        train_source=files["train.jsonl"], test_source=files["test.jsonl"], tags=files["tags.txt"],
        word_vectors=files["words.vec"], unseen_tags=files["unseen_tags.txt"], backbone="small_cnn",
        image_size=32, num_rows=3, batch_size=32, epochs=1, steps_per_epoch=4, learning_rate=3e-4,
        weight_decay=1e-4, strategy=strategy, xla_mode=xla_mode, output_dir=output_dir, verbose=0)
    model, history, _ = train(config)
    images = np.stack([np.full((32, 32, 3), 40 * i, np.uint8) for i in range(6)])
    np.savez(os.path.join(out, f"{name}.npz"), A=np.asarray(model(images, training=False)),
             *[np.asarray(w) for w in model.weights])
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump({k: float(v[-1]) for k, v in history.history.items()}, f)

if mode == "mirrored":
    run("default", "off", os.path.join(out, "single"), "single")
    run("mirrored", "auto", os.path.join(out, "mirrored"), "mirrored")
else:
    index = os.environ["WORKER_INDEX"]
    run("multi_worker", "off", os.path.join(out, f"run_{index}"), f"worker_{index}")
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("demo"))
    return make_demo_dataset(folder, DemoConfig(num_train=192, num_test=48, image_size=32, max_objects=2))


def run_script(tmp_path, files, mode, env=None, wait=True):
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    # TF_CPP_MIN_LOG_LEVEL=0 keeps TensorFlow's "Compiled cluster using XLA" line (importing
    # TensorFlow here set it to 1 for the children).
    environment = dict(os.environ, PYTHONPATH=testing.REPO_ROOT, TF_XLA_FLAGS=CPU_AUTO_CLUSTERING_FLAG,
                       TF_CPP_MIN_LOG_LEVEL="0", **(env or {}))
    process = subprocess.Popen(
        [sys.executable, str(script), json.dumps(files), str(tmp_path), mode],
        env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=testing.REPO_ROOT,
    )
    if wait:
        output, _ = process.communicate(timeout=400)
        assert process.returncode == 0, output[-4000:]
        return output
    return process


class FakeStrategy:
    def __init__(self, replicas, resolver=None):
        self.num_replicas_in_sync = replicas
        if resolver is not None:
            self.cluster_resolver = resolver


def test_xla_mode_resolution(monkeypatch):
    monkeypatch.setenv("TF_XLA_FLAGS", CPU_AUTO_CLUSTERING_FLAG)
    assert distribute.resolve_xla_mode("auto", FakeStrategy(1)) == "jit"
    assert distribute.resolve_xla_mode("auto", FakeStrategy(2)) == "auto_clustering"
    assert distribute.resolve_xla_mode("off", FakeStrategy(2)) == "off"
    assert distribute.resolve_xla_mode("auto_clustering", FakeStrategy(1)) == "auto_clustering"
    with pytest.raises(ValueError, match="cannot compile a step distributed over 2 replicas"):
        distribute.resolve_xla_mode("jit", FakeStrategy(2))
    with pytest.raises(ValueError, match="Unknown XLA mode"):
        distribute.resolve_xla_mode("fast", FakeStrategy(1))
    monkeypatch.setenv("TF_XLA_FLAGS", "")
    with pytest.raises(ValueError, match="tf_xla_cpu_global_jit"):
        distribute.resolve_xla_mode("auto", FakeStrategy(2))


def test_the_official_augmentation_trains_without_xla(monkeypatch):
    # Keras' RandAugment fails in XLA (jit and auto-clustering alike) at the first step
    # that picks Equalization; the paper flagfiles' xla_mode=auto must not compile it.
    monkeypatch.setenv("TF_XLA_FLAGS", CPU_AUTO_CLUSTERING_FLAG)
    official = distribute.layers_without_xla([recipe_augmentation("official")])
    assert "random_rotation" in official  # one of RandAugment's ops
    assert distribute.layers_without_xla([recipe_augmentation("crop_flip_cutout")]) == []
    assert distribute.resolve_xla_mode("auto", FakeStrategy(1), official) == "off"
    assert distribute.resolve_xla_mode("auto", FakeStrategy(2), official) == "off"
    for mode in ("jit", "auto_clustering"):
        with pytest.raises(ValueError, match=rf"xla_mode={mode}, but XLA cannot compile .*random_rotation"):
            distribute.resolve_xla_mode(mode, FakeStrategy(1), official)


def test_select_strategy_checks_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        distribute.select_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.select_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}}))
    with pytest.raises(ValueError, match="no 'task' key"):
        distribute.select_strategy("multi_worker")
    with pytest.raises(ValueError, match="Unknown strategy 'tpu'"):
        distribute.select_strategy("tpu")
    assert distribute.select_strategy("default").num_replicas_in_sync == 1


@pytest.mark.parametrize(
    "cluster, task, chief",
    [
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 0}, True),
        ({"worker": ["a:1", "b:1"]}, {"type": "worker", "index": 1}, False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "chief", "index": 0}, True),
        ({"chief": ["c:1"], "worker": ["a:1"]}, {"type": "worker", "index": 0}, False),
    ],
)
def test_only_the_chief_writes_the_run_directory(monkeypatch, tmp_path, cluster, task, chief):
    import tensorflow as tf

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
    strategy = FakeStrategy(2, tf.distribute.cluster_resolver.TFConfigClusterResolver())
    assert distribute.is_chief(strategy) == chief
    output_dir = str(tmp_path / "run")
    with distribute.write_directory(output_dir, strategy) as write_dir:
        assert os.path.isdir(write_dir)
        open(os.path.join(write_dir, "file"), "w").close()
    assert (write_dir == output_dir) == chief
    assert os.path.exists(os.path.join(output_dir, "file")) == chief
    if not chief:
        assert not os.path.exists(write_dir), "a worker's temporary directory outlives the run"


def test_single_process_is_chief(tmp_path):
    strategy = types.SimpleNamespace(num_replicas_in_sync=1)
    assert distribute.is_chief(strategy)


def test_mirrored_on_two_cpus_equals_one_device(demo, tmp_path):
    output = run_script(tmp_path, demo, "mirrored")
    # The mirrored run compiles with auto-clustering and says so.
    assert "XLA mode: TensorFlow auto-clustering" in output and "(requested auto, 2 replica(s))" in output
    assert "Compiled cluster using XLA" in output
    assert "XLA mode: off" in output and "(requested off, 1 replica(s))" in output
    single, mirrored = np.load(tmp_path / "single.npz"), np.load(tmp_path / "mirrored.npz")
    # The same global batches, BatchNorm over the global batch: the same function up to
    # float rounding (local BatchNorm statistics differ by ~6% here, a skipped batch by ~20%).
    scale = np.abs(single["A"]).max()
    np.testing.assert_allclose(mirrored["A"], single["A"], atol=0.01 * scale)
    logs = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("single", "mirrored")]
    np.testing.assert_allclose(logs[1]["loss"], logs[0]["loss"], rtol=1e-3)
    np.testing.assert_allclose(logs[1]["loss/rank"], logs[0]["loss/rank"], rtol=1e-3)
    np.testing.assert_allclose(logs[1]["val_gzsl/mAP"], logs[0]["val_gzsl/mAP"], atol=2.0)
    for name in ("single", "mirrored"):
        assert {"model.keras", "best.keras", "metrics.json"} <= set(os.listdir(tmp_path / name))


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_processes_agree_and_only_the_chief_writes(demo, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        processes.append(
            run_script(tmp_path, demo, "multi_worker", env={"TF_CONFIG": tf_config, "WORKER_INDEX": str(index)},
                       wait=False)
        )
    outputs = []
    for process in processes:
        try:
            output, _ = process.communicate(timeout=400)
        finally:
            if process.poll() is None:
                process.kill()
        outputs.append(output)
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-4000:]
    weights = [np.load(tmp_path / f"worker_{index}.npz") for index in range(2)]
    assert len(weights[0].files) > 10
    for key in weights[0].files:
        np.testing.assert_array_equal(weights[0][key], weights[1][key], err_msg=key)
    logs = [json.loads((tmp_path / f"worker_{index}.json").read_text()) for index in range(2)]
    assert logs[0] == logs[1] and np.isfinite(logs[0]["loss"]) and "val_gzsl/mAP" in logs[0]
    chief, worker = tmp_path / "run_0", tmp_path / "run_1"
    assert {"model.keras", "best.keras", "vocabulary.npz", "config.json", "metrics.json", "logs"} <= set(
        os.listdir(chief)
    )
    assert not (chief / "backup").exists(), "the backup outlived a completed run"
    assert not worker.exists(), "a non-chief worker wrote into its output directory"
    assert "worker 1 is not the chief: writing to" in outputs[1]
    temporary = outputs[1].split("worker 1 is not the chief: writing to ")[1].split()[0]
    assert not os.path.exists(temporary)


if __name__ == "__main__":
    testing.run(__file__)

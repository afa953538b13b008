"""It must learn: a few steps on the demo data lower the loss and rank unseen tags
above chance; and the train and evaluate command lines run end to end. Bad vectors and
manifests stop training before it starts, naming file, line and what was found."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from pipelines.readers.demo import DemoConfig, make_demo_dataset
from pipelines.decode import UnreadableImageError
from sdl_keras import inference, keras_compat, training
from sdl_keras.config import TrainConfig
from sdl_keras.run_dir import RunDirectory
from sdl_keras.embeddings import TagVocabulary
from sdl_keras.losses import SDLLoss
from tests import testing


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("demo"))
    files = make_demo_dataset(folder, DemoConfig(num_train=768, num_test=200, image_size=32, max_objects=2,
                                                 num_validation=64))
    return folder, files


def demo_config(files, output_dir, **overrides):
    values = dict(
        train_source=files["train.jsonl"], test_source=files["test.jsonl"], tags=files["tags.txt"],
        word_vectors=files["words.vec"], unseen_tags=files["unseen_tags.txt"], backbone="small_cnn",
        image_size=32, num_rows=3, batch_size=32, epochs=6, learning_rate=3e-3, weight_decay=1e-4,
        output_dir=output_dir, verbose=0,
    )
    values.update(overrides)
    return TrainConfig.from_flat(**values)


def test_loss_falls_and_unseen_tags_rank_above_chance(demo, tmp_path):
    _, files = demo
    run_dir = str(tmp_path / "run")
    _, history, vocabulary = training.train(demo_config(files, run_dir))
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses
    assert len(vocabulary.unseen) == 8
    results = inference.evaluate_run(run_dir, progress=False)
    # Measured here: about 3x chance for unseen tags after these few steps.
    assert results["model"]["zsl/mAP"] > 2 * results["random"]["zsl/mAP"], results
    assert results["model"]["gzsl/mAP"] > 2 * results["random"]["gzsl/mAP"], results


def test_the_validation_split_is_held_out_of_training_by_the_seed(demo, tmp_path):
    from sdl_keras.training.data import training_data, validation_data

    _, files = demo
    config = demo_config(files, str(tmp_path / "run"))
    vocabulary = training.load_vocabulary(config.data)
    train = training_data(config, vocabulary, None)
    assert train.num_images == 768 - 77 and len(train.held_out) == 77
    # Read again from the config alone (what sdl_keras.calibrate does): the same images.
    again = validation_data(config, vocabulary)
    assert again.num_images == 77 and not again.unseen_positives
    labels = np.concatenate([y for _, y in again.batches.as_numpy_iterator()])
    np.testing.assert_array_equal(labels, train.held_out.labels)
    other = validation_data(config.replace(seed=1), vocabulary)
    assert other.description.endswith("seed 1)")
    other_labels = np.concatenate([y for _, y in other.batches.as_numpy_iterator()])
    assert not np.array_equal(other_labels, labels)
    # An explicit source replaces the held-out images; nothing is then held out.
    explicit = config.replace(validation_source=files["validation.jsonl"])
    assert training_data(explicit, vocabulary, None).num_images == 768
    assert validation_data(explicit, vocabulary).num_images == 64
    assert validation_data(config.replace(validation_fraction=0.0), vocabulary) is None


def test_training_labels_must_not_hold_unseen_tags(demo, tmp_path):
    _, files = demo
    config = demo_config(files, str(tmp_path / "run"), train_source=files["test.jsonl"])
    with pytest.raises(ValueError, match="labelled with unseen tag"):
        training.train(config)


def test_unreadable_training_images_are_counted_each_epoch_or_with_strict_an_error(demo, tmp_path):
    folder, files = demo
    with open(files["train.jsonl"], encoding="utf-8") as f:
        lines = f.readlines()[:64]
    testing.write_files(folder, [("images/train/corrupt.png", b"not an image")])
    for name in ("images/train/corrupt.png", "images/train/missing.png"):
        lines.append(json.dumps({"image": name, "tags": ["red square"]}) + "\n")
    manifest = os.path.join(folder, "train_with_bad.jsonl")
    with open(manifest, "w", encoding="utf-8") as f:
        f.writelines(lines)
    config = demo_config(files, str(tmp_path / "run"), train_source=manifest, test_source="", validation_fraction=0,
                         epochs=2)
    _, history, _ = training.train(config)
    # Two bad files per pass over the data; prefetching may finish a pass a little early.
    counts = history.history["unreadable_images"]
    assert len(counts) == 2 and sum(counts) >= 2 and all(c % 2 == 0 for c in counts), counts
    with pytest.raises(UnreadableImageError, match="corrupt.png"):
        training.train(config.replace(strict=True, output_dir=str(tmp_path / "strict")))


def edited_copy(path, folder, edit):
    """A copy of a text file in `folder` with its lines changed by `edit(lines)` (bytes)."""
    copy = os.path.join(folder, os.path.basename(path))
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    with open(copy, "wb") as f:
        f.writelines(edit(lines))
    return copy


def replace_value(line, index, value):
    """A .vec line with its value `index` (from 0) replaced."""
    word, *values = line.split(b" ")
    values[index] = value
    return b" ".join([word, *values]).rstrip(b"\n") + b"\n"


def test_bad_word_vectors_and_manifests_stop_training_at_load_naming_file_and_line(demo, tmp_path):
    _, files = demo
    # The word-vector file of the demo: line 2 is "red ..." (line 1 the header).
    nan = edited_copy(files["words.vec"], tmp_path, lambda lines: [lines[0], replace_value(lines[1], 1, b"nan"),
                                                                    *lines[2:]])
    train = subprocess.run(
        [sys.executable, "-m", "sdl_keras.train", f"--flagfile={testing.REPO_ROOT}/configs/demo.flags",
         f"--train_source={files['train.jsonl']}", f"--test_source={files['test.jsonl']}", f"--tags={files['tags.txt']}",
         f"--word_vectors={nan}", f"--unseen_tags={files['unseen_tags.txt']}", f"--run_dir={tmp_path / 'nan'}"],
        env=testing.python_env(), capture_output=True, text=True, cwd=testing.REPO_ROOT, timeout=300,
    )
    assert train.returncode == 1 and "Traceback" not in train.stderr, train.stderr[-3000:]
    assert train.stderr.splitlines()[-1] == (
        f"sdl_keras.train: error: {nan}:2: word 'red' has non-finite values ('nan', value 2 of 64).")
    assert not os.path.exists(tmp_path / "nan")

    os.makedirs(tmp_path / "abc")
    abc = edited_copy(files["words.vec"], tmp_path / "abc", lambda lines: [*lines[:3], replace_value(lines[3], 0, b"abc"),
                                                                            *lines[4:]])
    with pytest.raises(ValueError, match=rf"^{abc}:4: word 'blue' has a value that is not a number: 'abc'\.$"):
        training.train(demo_config(files, str(tmp_path / "run"), word_vectors=abc))
    # Manifests: a byte that is not UTF-8, and an image listed twice.
    latin1 = edited_copy(files["train.jsonl"], tmp_path, lambda lines: [*lines[:4], lines[4].replace(b'"tags"', b'"t\xe4gs"'),
                                                                        *lines[5:]])
    with pytest.raises(ValueError, match=rf"^{latin1}:5: not UTF-8 text \(byte 0xe4 at offset \d+, in b'.*t\\xe4gs"):
        training.train(demo_config(files, str(tmp_path / "run"), train_source=latin1))
    os.makedirs(tmp_path / "twice")
    twice = edited_copy(files["train.jsonl"], tmp_path / "twice", lambda lines: [*lines, lines[2]])
    image = json.loads(open(files["train.jsonl"]).readlines()[2])["image"]
    with pytest.raises(ValueError, match=rf"^{twice}: 1 image id\(s\) on more than one line: '{image}' \(lines 3, 769\)"):
        training.train(demo_config(files, str(tmp_path / "run"), train_source=twice))
    assert not os.path.exists(tmp_path / "run")


def test_compiled_model_saves_with_its_loss_and_metrics(tmp_path):
    vocabulary = TagVocabulary(["a b", "c d", "e f", "g h"], np.random.default_rng(0).standard_normal((4, 8)), [3])
    config = TrainConfig.from_flat(backbone="small_cnn", image_size=16, num_rows=2, reg_weight=0.1, jit_compile=False)
    model = training.build_compiled_model(config, vocabulary, max_positives=2, total_steps=10)
    images = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3)).astype(np.float32)
    labels = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]], np.float32)
    model.fit(images, labels, epochs=1, verbose=0)
    restored = testing.check_keras_saving(model, images, tmp_path)
    assert isinstance(restored.loss, SDLLoss) and restored.loss.get_config() == model.loss.get_config()
    assert restored.loss.max_positives == 2 and restored.loss.reg_weight == 0.1
    logs = restored.evaluate(images, labels, verbose=0, return_dict=True)
    assert {"loss", "P@3", "mAP"} <= set(logs)


def test_config_round_trip(tmp_path):
    config = TrainConfig.from_flat(reg_weight=None, ks=(10, 20), max_positives=12)
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config


def test_command_lines_train_then_evaluate(demo, tmp_path):
    folder, files = demo
    run_dir = str(tmp_path / "cli_run")
    env = testing.python_env()
    common = [f"--flagfile={testing.REPO_ROOT}/configs/demo.flags"]
    train = subprocess.run(
        [sys.executable, "-m", "sdl_keras.train", *common, f"--train_source={files['train.jsonl']}",
         f"--test_source={files['test.jsonl']}", f"--validation_source={files['validation.jsonl']}",
         f"--tags={files['tags.txt']}", f"--word_vectors={files['words.vec']}",
         f"--unseen_tags={files['unseen_tags.txt']}",
         "--image_size=32", "--epochs=2", "--steps_per_epoch=2", "--reg_weight=none", f"--run_dir={run_dir}"],
        env=env, capture_output=True, text=True, cwd=testing.REPO_ROOT, timeout=300,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert TrainConfig.load(os.path.join(run_dir, "config.json")).loss.reg_weight is None
    # Quiet logs when the output is a file: one progress line per epoch, no redrawn bar, and
    # no CUDA error on this CPU-only host.
    progress = [line for line in train.stdout.splitlines() if "/step - loss:" in line]
    assert len(progress) == 2 and "\r" not in train.stdout, train.stdout[-2000:]
    assert "cuInit" not in train.stderr
    evaluate = subprocess.run(
        [sys.executable, "-m", "sdl_keras.evaluate", f"--run_dir={run_dir}", "--eval_ks=1,3"],
        env=env, capture_output=True, text=True, cwd=testing.REPO_ROOT, timeout=300,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "| ZSL  |" in evaluate.stdout and "random scores" in evaluate.stdout
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    assert set(results) == {"model", "random", "probabilities", "settings"} and "zsl/F1@1" in results["model"]
    assert results["settings"]["empty_tags"] == "zero"  # the official mAP, recorded
    # demo.flags calibrates when training ends: the second table is the calibrated probabilities'.
    assert results["probabilities"]["calibrated"] and "ECE seen, top-10" in evaluate.stdout
    assert np.isfinite(results["model"]["gzsl/mAP"])


def tiny_vocabulary():
    return TagVocabulary(["a b", "c d", "e f", "g h"], np.random.default_rng(0).standard_normal((4, 8)), [3])


@pytest.mark.parametrize("precision, scaled", [("mixed_float16", True), ("mixed_bfloat16", False)])
def test_mixed_precision_keeps_loss_scores_and_metrics_in_float32(precision, scaled):
    import keras

    keras.utils.set_random_seed(0)
    config = TrainConfig.from_flat(backbone="small_cnn", image_size=16, num_rows=2, precision=precision,
                                  jit_compile=False)
    model = training.build_compiled_model(config, tiny_vocabulary(), max_positives=2, total_steps=10)
    assert keras.config.dtype_policy().name == "float32", "the global policy leaked out of the build"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == scaled
    compute_dtypes = {layer.compute_dtype for layer in keras_compat.flatten_layers(model) if layer.weights}
    assert precision.split("_")[1] in compute_dtypes
    images = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3)).astype(np.float32)
    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0], [1, 1, 0]], np.float32)
    assert keras.ops.convert_to_numpy(model(images)).dtype == np.float32
    loss = model.loss(labels, model(images))
    assert keras.ops.convert_to_numpy(loss).dtype == np.float32
    # Dynamic loss scaling may skip the first float16 steps (overflowing gradients halve the scale).
    history = model.fit(images, labels, epochs=6, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and history.history["loss"][-1] < history.history["loss"][0]
    assert all(np.asarray(keras.ops.convert_to_numpy(v)).dtype == np.float32 for v in model.metrics[-1].variables)


def test_callbacks_run_in_the_order_their_logs_need(tmp_path):
    from sdl_keras.training import callbacks, dashboards

    config = TrainConfig.from_flat(ema_momentum=0.999, backup_steps=50, output_dir=str(tmp_path / "run"))
    batches = [(np.zeros((1, 16, 16, 3), np.uint8), np.zeros((1, 4), np.float32))]
    strategy = type("Default", (), {"num_replicas_in_sync": 1})()
    built = training.build_callbacks(config, None, tiny_vocabulary(), batches, str(tmp_path / "run"), strategy)
    import keras

    assert [type(c) for c in built] == [
        callbacks.BackupAndRestore, keras.callbacks.SwapEMAWeights, callbacks.ZeroShotEvaluation,
        dashboards.TensorBoardDashboards, callbacks.BestModelCheckpoint, keras.callbacks.TensorBoard,
        keras.callbacks.TerminateOnNaN,
    ]
    assert built[0].save_freq == 50 and built[4].monitor == "val_zsl/mAP"
    optimizer = training.build_optimizer(config, total_steps=10)
    assert optimizer.use_ema and optimizer.ema_momentum == 0.999
    without_validation = training.build_callbacks(
        TrainConfig.from_flat(output_dir=str(tmp_path)), None, tiny_vocabulary(), None, str(tmp_path), strategy
    )
    assert [type(c).__name__ for c in without_validation] == ["BackupAndRestore", "TensorBoard", "TerminateOnNaN"]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("strategy", "tpu", r"--strategy='tpu' \(TrainConfig.runtime.strategy\)"),
        ("xla_mode", "fast", "--xla_mode='fast'"),
        ("precision", "float16", "--precision='float16'"),
        ("ema_momentum", 1.5, "ema_momentum must be in"),
        ("backup_steps", 0, "backup_steps must be"),
        ("validation_fraction", 1.0, r"validation_fraction must be in \[0, 1\)"),
        ("probability_threshold", 1.5, "probability_threshold must be a probability"),
        ("calibration_method", "beta", "--calibration_method='beta'"),
    ],
)
def test_train_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_flat(**{field: value})


def test_a_diverging_run_stops_without_writing_a_model(demo, tmp_path):
    _, files = demo
    run_dir = str(tmp_path / "run")
    config = demo_config(files, run_dir, learning_rate=1e30, epochs=3, steps_per_epoch=2, jit_compile=False,
                         eval_every=0)
    with pytest.raises(FloatingPointError, match="the loss became"):
        training.train(config)
    assert not os.path.exists(os.path.join(run_dir, RunDirectory.MODEL))


if __name__ == "__main__":
    testing.run(__file__)

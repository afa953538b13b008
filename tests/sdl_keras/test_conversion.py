"""PyTorch TResNet checkpoints -> Keras: layouts, file formats, the ZS_SDL head, errors, the CLI.

torch is a pinned requirement (requirements.txt): the .pth tests write real torch.save files.
"""

import argparse
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from sdl_keras import conversion, convert
from pipelines.text import read_lines
from sdl_keras.layers import MatrixHead
from sdl_keras.models import build_sdl_model, tresnet
from tests import testing
from tests.sdl_keras.torch_checkpoints import randomized, to_original_layout, to_torch, write_official_checkpoint

MINI = ([1, 1, 1, 1], 0.125)


def load_golden(case):
    with np.load(testing.shared_path("golden", f"{case}.npz")) as data:
        return {key: data[key] for key in data.files}


def golden_state(golden):
    return {key[len("w/"):]: value for key, value in golden.items() if key.startswith("w/")}


def assert_relative(actual, expected, tolerance=1e-4):
    actual, expected = np.asarray(actual), np.asarray(expected)
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error <= tolerance, f"relative error {error:.3g} > {tolerance}"


def mini_sdl_model(layers, width_factor, image_size, num_rows, embed_dim):
    """build_sdl_model's structure around a mini TResNet (uint8-range images -> A)."""
    features = tresnet.TResNet(
        layers, width_factor, include_top=False, input_shape=(image_size, image_size, 3), pooling="avg"
    )
    images = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(images)
    matrix = MatrixHead(num_rows, embed_dim)(features(x))
    return keras.Model(images, matrix)


def assert_same_weights(a, b):
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(np.asarray(x.value), np.asarray(y.value), err_msg=x.path)


# ----------------------------------------------------------------------------- layouts, vs goldens


@pytest.mark.parametrize("prefix", ["body.", "module.body.", ""])
def test_original_layout_matches_timm_golden(prefix):
    golden = load_golden("tresnet_mini_l1211_w050")
    model = tresnet.TResNet(
        list(golden["layers"]), float(golden["width_factor"]), input_shape=golden["input"].shape[1:],
        classes=int(golden["num_classes"]), classifier_activation=None,
    )
    info = convert.load_torch_tresnet_weights(model, to_original_layout(golden_state(golden), prefix))
    assert any(key.endswith(".op.filt") for key in info.skipped)
    both = keras.Model(model.input, [model.get_layer("head.global_pool").output, model.output])
    features, logits = both.predict(golden["input"], verbose=0)
    assert_relative(features, golden["features"])
    assert_relative(logits, golden["logits"])


def test_official_zs_sdl_checkpoint(tmp_path):
    """The official head's flat output, viewed (d, M) then transposed, is this project's A (M, d)."""
    golden = load_golden("tresnet_mini_l1111_w025")
    num_rows, embed_dim = 3, 5
    rng = np.random.default_rng(1)
    embedding = rng.normal(0, 0.1, (num_rows * embed_dim, golden["features"].shape[1])).astype("float32")
    body = {k: v for k, v in to_original_layout(golden_state(golden), "").items() if not k.startswith("head.")}
    tags = ["sky", "water", "person", "dog"]
    path = tmp_path / "NUS_mtresnet_mini.pth"
    torch.save(
        {
            "model": to_torch({**body, "embedding.weight": embedding}),
            "num_classes": len(tags),
            "idx_to_class": dict(enumerate(tags)),
        },
        path,
    )
    model = mini_sdl_model(list(golden["layers"]), float(golden["width_factor"]), 64, num_rows, embed_dim)
    info = convert.load_torch_tresnet_weights(model, path)
    assert info.tags == tags and info.num_classes == len(tags)
    matrices = model.predict(golden["input"] * 255.0, verbose=0)
    # The official model: embedding(global_avg_pool(body(x))), a bias-free Linear on the features.
    flat = golden["features"] @ embedding.T
    expected = flat.reshape(-1, embed_dim, num_rows).transpose(0, 2, 1)
    assert matrices.shape == (2, num_rows, embed_dim)
    assert_relative(matrices, expected)
    assert model.layers[-1].bias is None  # bias-free, as the official Linear

    wrong = mini_sdl_model(list(golden["layers"]), float(golden["width_factor"]), 64, 2, embed_dim)
    with pytest.raises(convert.CheckpointMismatchError, match=r"'embedding.weight' has shape \(15, 512\).*M=2, d=5"):
        convert.load_torch_tresnet_weights(wrong, path)


# ----------------------------------------------------------------------------- file formats


@pytest.fixture(scope="module")
def mini_source():
    return randomized(tresnet.TResNet(*MINI, input_shape=(32, 32, 3), classes=3))


@pytest.mark.parametrize(
    "filename, wrap",
    [("w.safetensors", None), ("w.pth", None), ("w.pth.tar", "state_dict"), ("w.pth", "model")],
)
def test_file_formats(tmp_path, monkeypatch, mini_source, filename, wrap):
    state = convert.tresnet_state_dict(mini_source)
    path = str(tmp_path / filename)
    if filename.endswith(".safetensors"):
        save_file(state, path)
        monkeypatch.setitem(sys.modules, "torch", None)  # .safetensors must not need torch
    else:
        tensors = to_torch(state)
        torch.save({wrap: tensors, "epoch": 3} if wrap else tensors, path)
    target = tresnet.TResNet(*MINI, input_shape=(32, 32, 3), classes=3)
    info = convert.load_torch_tresnet_weights(target, path)
    assert_same_weights(target, mini_source)
    assert len(info.loaded) == len(state) and info.tags is None


def test_pth_needs_torch_and_refuses_pickles(tmp_path, monkeypatch, mini_source):
    state = to_torch(convert.tresnet_state_dict(mini_source))
    path = str(tmp_path / "with_args.pth")
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-4)}, path)
    target = tresnet.TResNet(*MINI, input_shape=(32, 32, 3), classes=3)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        convert.load_torch_tresnet_weights(target, path)
    convert.load_torch_tresnet_weights(target, path, allow_pickle=True)
    assert_same_weights(target, mini_source)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match="needs PyTorch"):
        convert.load_torch_tresnet_weights(target, path)


def test_state_dict_round_trip_keeps_outputs(mini_source):
    images = np.random.default_rng(4).uniform(size=(2, 32, 32, 3)).astype("float32")
    target = tresnet.TResNet(*MINI, input_shape=(32, 32, 3), classes=3)
    convert.load_torch_tresnet_weights(target, to_torch(convert.tresnet_state_dict(mini_source)))
    np.testing.assert_allclose(target.predict(images, verbose=0), mini_source.predict(images, verbose=0), atol=1e-6)


# ----------------------------------------------------------------------------- errors name the key


def test_mismatches_name_the_key(mini_source):
    state = convert.tresnet_state_dict(mini_source)
    target = tresnet.TResNet(*MINI, input_shape=(32, 32, 3), classes=3)

    missing = {k: v for k, v in state.items() if k != "body.layer3.0.se.fc2.bias"}
    with pytest.raises(convert.CheckpointMismatchError, match="lacks 1 .*'layer3.0.se.fc2.bias'"):
        convert.load_torch_tresnet_weights(target, missing)

    extra = {**state, "body.layer5.0.conv1.conv.weight": np.zeros((1, 1, 1, 1), "float32")}
    with pytest.raises(convert.CheckpointMismatchError, match="no place .*'body.layer5.0.conv1.conv.weight'"):
        convert.load_torch_tresnet_weights(target, extra)

    bad = dict(state)
    bad["body.layer2.0.conv2.conv.weight"] = np.zeros((16, 16, 3), "float32")
    shape_error = r"'body.layer2.0.conv2.conv.weight' has shape \(16, 16, 3\)"
    with pytest.raises(convert.CheckpointMismatchError, match=shape_error):
        convert.load_torch_tresnet_weights(target, bad)

    mixed = {**state, "conv1.0.weight": state["body.conv1.conv.weight"]}
    with pytest.raises(ValueError, match="'body.conv1.conv.weight' and 'conv1.0.weight' both map"):
        convert.load_torch_tresnet_weights(target, mixed)

    # Nothing was written by the failed loads.
    fresh = tresnet.TResNet(*MINI, input_shape=(32, 32, 3), classes=3)
    fresh.set_weights(target.get_weights())
    assert_same_weights(fresh, target)


def test_head_handling(mini_source):
    state = convert.tresnet_state_dict(mini_source)
    backbone = tresnet.TResNet(*MINI, include_top=False, pooling="avg")
    with pytest.raises(convert.CheckpointMismatchError, match="'head.fc.weight'.*skip_head=True"):
        convert.load_torch_tresnet_weights(backbone, state)
    info = convert.load_torch_tresnet_weights(backbone, state, skip_head=True)
    assert set(info.skipped) == {"head.fc.weight", "head.fc.bias"}

    sdl = mini_sdl_model(*MINI, 32, 2, 4)
    with pytest.raises(convert.CheckpointMismatchError, match="no SDL head 'embedding.weight'"):
        convert.load_torch_tresnet_weights(sdl, state)
    head_before = np.asarray(sdl.layers[-1].kernel.value)
    convert.load_torch_tresnet_weights(sdl, state, skip_head=True)
    np.testing.assert_array_equal(np.asarray(sdl.layers[-1].kernel.value), head_before)

    with pytest.raises(ValueError, match="holds no TResNet"):
        convert.load_torch_tresnet_weights(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), state)


# ----------------------------------------------------------------------------- full-size TResNet-M, the CLI


@pytest.fixture(scope="module")
def tresnet_m_source():
    return randomized(tresnet.tresnet_m(input_shape=(64, 64, 3)), seed=5)


def _backbone_features(model, images):
    return keras.Model(model.input, model.get_layer("head.global_pool").output).predict(images, verbose=0)


def test_cli_turns_timm_safetensors_into_backbone_weights(tmp_path, tresnet_m_source):
    checkpoint = str(tmp_path / "tresnet_m.safetensors")
    save_file(convert.tresnet_state_dict(tresnet_m_source), checkpoint)
    output = str(tmp_path / "tresnet_m.weights.h5")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [testing.REPO_ROOT, os.environ.get("PYTHONPATH")])))
    subprocess.run(
        [sys.executable, "-m", "sdl_keras.convert", "--flagfile=configs/convert.flags",
         f"--checkpoint={checkpoint}", f"--output={output}", "--image_size=64"],
        cwd=testing.REPO_ROOT, env=env, check=True, timeout=300,
    )
    images = np.random.default_rng(6).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    expected = _backbone_features(tresnet_m_source, images / 255.0)
    # The converted weights, and the checkpoint itself, converted on the fly.
    for backbone_weights in (output, checkpoint):
        model = build_sdl_model("tresnet_m", num_rows=2, embed_dim=8, image_size=64, backbone_weights=backbone_weights)
        assert_relative(model.get_layer("tresnet_m").predict(images / 255.0, verbose=0), expected, 1e-5)


def test_convert_official_checkpoint_for_build_sdl_model(tmp_path, tresnet_m_source):
    num_rows, embed_dim = 2, 6
    rng = np.random.default_rng(7)
    embedding = rng.normal(0, 0.02, (num_rows * embed_dim, 2048)).astype("float32")
    checkpoint = str(tmp_path / "NUS_mtresnet_224.pth")
    write_official_checkpoint(checkpoint, convert.tresnet_state_dict(tresnet_m_source), embedding, ["sky", "lake", "cat"])
    output = str(tmp_path / "sdl.weights.h5")
    target, info = conversion.convert_checkpoint(
        checkpoint, output, image_size=64, num_rows=num_rows, embed_dim=embed_dim
    )
    assert target == "sdl"
    assert read_lines(str(tmp_path / "sdl.tags.txt")) == ["sky", "lake", "cat"]
    model = build_sdl_model("tresnet_m", num_rows=num_rows, embed_dim=embed_dim, image_size=64)
    model.load_weights(output)
    images = np.random.default_rng(8).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    flat = _backbone_features(tresnet_m_source, images / 255.0) @ embedding.T
    expected = flat.reshape(-1, embed_dim, num_rows).transpose(0, 2, 1)
    assert_relative(model.predict(images, verbose=0), expected, 1e-4)
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        conversion.convert_checkpoint(checkpoint, str(tmp_path / "sdl.h5"))


if __name__ == "__main__":
    testing.run(__file__)

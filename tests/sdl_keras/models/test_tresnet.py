"""TResNet: parity with timm (../shared goldens), its layers against NumPy references, shapes, saving."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from sdl_keras import convert
from sdl_keras.models import tresnet
from tests import testing

GOLDEN_CASES = ("tresnet_mini_l1111_w025", "tresnet_mini_l1211_w050")


def load_golden(case):
    with np.load(testing.shared_path("golden", f"{case}.npz")) as data:
        return {key: data[key] for key in data.files}


def assert_relative(actual, expected, tolerance=1e-4):
    """Within `tolerance` relative to the reference's largest magnitude (pooled ReLU features hold zeros)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error <= tolerance, f"relative error {error:.3g} > {tolerance}"
    return error


def features_and_logits(model, images):
    both = keras.Model(model.input, [model.get_layer("head.global_pool").output, model.output])
    return [np.asarray(t) for t in both.predict(images, verbose=0)]


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_matches_timm_golden(case):
    golden = load_golden(case)
    with open(testing.shared_path("golden", "tresnet_index.json")) as f:
        index = json.load(f)[case]
    model = tresnet.TResNet(
        list(golden["layers"]),
        float(golden["width_factor"]),
        input_shape=golden["input"].shape[1:],
        classes=int(golden["num_classes"]),
        classifier_activation=None,
    )
    # timm counts parameters, not BatchNorm running statistics.
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == index["params"]
    state = {key[len("w/"):]: value for key, value in golden.items() if key.startswith("w/")}
    convert.load_torch_tresnet_weights(model, state)
    features, logits = features_and_logits(model, golden["input"])
    assert features.shape == (len(golden["input"]), index["feature_dim"])
    assert_relative(features, golden["features"])
    assert_relative(logits, golden["logits"])


JAX_CHECK = textwrap.dedent(
    """
    import sys
    import keras, numpy as np
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from sdl_keras import convert
    from sdl_keras.models import tresnet
    for path in sys.argv[1:]:
        golden = dict(np.load(path))
        model = tresnet.TResNet(list(golden["layers"]), float(golden["width_factor"]),
                                input_shape=golden["input"].shape[1:], classes=int(golden["num_classes"]),
                                classifier_activation=None)
        convert.load_torch_tresnet_weights(model, {k[2:]: v for k, v in golden.items() if k.startswith("w/")})
        both = keras.Model(model.input, [model.get_layer("head.global_pool").output, model.output])
        for name, value in zip(("features", "logits"), both.predict(golden["input"], verbose=0)):
            error = np.abs(value - golden[name]).max() / np.abs(golden[name]).max()
            assert error <= 1e-4, (path, name, error)
    print("tresnet jax parity passed")
    """
)


def test_matches_timm_golden_on_jax():
    """TResNet is keras.ops only: the same parity on the JAX backend (a child process picks it)."""
    paths = [testing.shared_path("golden", f"{case}.npz") for case in GOLDEN_CASES]
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=testing.REPO_ROOT, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", JAX_CHECK, *paths], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "tresnet jax parity passed" in result.stdout


def test_space_to_depth_orders_channels_as_timm():
    images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype("float32")
    nchw = images.transpose(0, 3, 1, 2)
    # timm: view (N, C, H/4, 4, W/4, 4), permute (0, 3, 5, 1, 2, 4), view (N, 16C, H/4, W/4).
    expected = nchw.reshape(2, 3, 2, 4, 3, 4).transpose(0, 3, 5, 1, 2, 4).reshape(2, 48, 2, 3)
    actual = np.asarray(tresnet.SpaceToDepth(4)(images))
    np.testing.assert_array_equal(actual.transpose(0, 3, 1, 2), expected)
    with pytest.raises(ValueError, match="multiple of 4"):
        tresnet.TResNet([1, 1, 1, 1], 0.25, input_shape=(30, 30, 3))


@pytest.mark.parametrize("size", [6, 7])
def test_blur_pool_matches_reference(size):
    images = np.random.default_rng(size).normal(size=(1, size, size, 2)).astype("float32")
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    blur = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    out = (size + 1) // 2
    expected = np.zeros((1, out, out, 2), "float32")
    for i in range(out):
        for j in range(out):
            window = padded[0, 2 * i: 2 * i + 3, 2 * j: 2 * j + 3]
            expected[0, i, j] = np.einsum("hwc,hw->c", window, blur)
    layer = tresnet.BlurPool2D()
    np.testing.assert_allclose(np.asarray(layer(images)), expected, atol=1e-6)
    assert layer.compute_output_shape((1, size, size, 2)) == (1, out, out, 2)


def test_layers_config_round_trip():
    testing.check_config_round_trip(tresnet.SpaceToDepth(block_size=2, name="s2d"))
    testing.check_config_round_trip(tresnet.BlurPool2D(filter_size=3, stride=2, name="aa"))


def test_tresnet_m_size_and_outputs():
    images = np.random.default_rng(1).uniform(size=(2, 64, 64, 3)).astype("float32")
    model = tresnet.tresnet_m(input_shape=(64, 64, 3))
    # timm's tresnet_m: 31,389,032 parameters with its 1000-class head.
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 31_389_032
    probabilities = np.asarray(model(images))
    assert probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    body = keras.Model(model.input, model.get_layer("layer4.2.act").output)
    assert body.output_shape == (None, 2, 2, 2048)


@pytest.mark.parametrize("pooling, shape", [(None, (2, 2, 2, 256)), ("avg", (2, 256)), ("max", (2, 256))])
def test_pooling_options(pooling, shape):
    images = np.random.default_rng(2).uniform(size=(2, 64, 64, 3)).astype("float32")
    model = tresnet.TResNet([1, 1, 1, 1], 0.125, include_top=False, pooling=pooling)
    assert model(images).shape == shape


def test_keras_saving_round_trip(tmp_path):
    model = tresnet.TResNet([1, 1, 1, 1], 0.125, input_shape=(32, 32, 3), classes=3)
    images = np.random.default_rng(3).uniform(size=(2, 32, 32, 3)).astype("float32")
    testing.check_keras_saving(model, images, tmp_path, atol=1e-5)


def test_weights_argument(tmp_path):
    with pytest.raises(ValueError, match="python -m sdl_keras.convert"):
        tresnet.tresnet_m(weights="imagenet")
    with pytest.raises(FileNotFoundError, match="nowhere.weights.h5"):
        tresnet.tresnet_m(weights=str(tmp_path / "nowhere.weights.h5"))
    source = tresnet.TResNet([1, 1, 1, 1], 0.125, include_top=False, pooling="avg")
    path = str(tmp_path / "mini.weights.h5")
    source.save_weights(path)
    loaded = tresnet.TResNet([1, 1, 1, 1], 0.125, include_top=False, pooling="avg", weights=path)
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))


@pytest.mark.parametrize(
    "key, name, from_inplace_abn",
    [
        ("body.conv1.conv.weight", "conv1.conv.weight", False),
        ("conv1.0.weight", "conv1.conv.weight", False),
        ("conv1.1.weight", "conv1.bn.weight", True),
        ("body.layer2.0.conv1.0.0.weight", "layer2.0.conv1.conv.weight", False),
        ("layer2.0.conv1.0.1.running_var", "layer2.0.conv1.bn.running_var", True),
        ("module.body.layer3.0.downsample.1.1.bias", "layer3.0.downsample.1.bn.bias", True),
        ("layer3.0.downsample.1.0.weight", "layer3.0.downsample.1.conv.weight", False),
        ("body.layer4.0.downsample.1.conv.weight", "layer4.0.downsample.1.conv.weight", False),
        ("layer1.0.se.fc1.bias", "layer1.0.se.fc1.bias", False),
        ("head.fc.weight", "head.fc.weight", False),
        ("embedding.weight", "embedding.weight", False),
        ("layer2.0.conv1.1.op.filt", None, False),
        ("body.layer1.0.conv2.bn.num_batches_tracked", None, False),
    ],
)
def test_canonical_key(key, name, from_inplace_abn):
    assert tresnet.canonical_key(key) == (name, from_inplace_abn)


if __name__ == "__main__":
    testing.run(__file__)

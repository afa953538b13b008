"""Every backbone builds into the SDL model, takes uint8-range images and trains one step."""

import os

import keras
import numpy as np
import pytest
from keras.src.utils import file_utils

from sdl_keras.layers import CaffePreprocessing
from sdl_keras.models import backbones, build_sdl_model
from tests import testing

# name -> (image size, pooled feature size)
BACKBONE_CASES = {
    "small_cnn": (32, None),  # its width is the demo's business
    "tresnet_m": (64, 2048),
    "tresnet_l": (64, 2432),
    "tresnet_xl": (64, 2656),
    "resnet50": (32, 2048),
    "vgg19": (32, 512),
    "efficientnetv2_s": (32, 1280),
}


def uint8_images(size, n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("float32")


def check_trains_one_step(model, size, num_rows=2, embed_dim=8):
    images = uint8_images(size)
    assert model(images).shape == (2, num_rows, embed_dim)
    targets = np.random.default_rng(1).normal(size=(2, num_rows, embed_dim)).astype("float32")
    # Eagerly: tracing a deep backbone's training graph takes a minute on 2 cores.
    testing.check_fit_step(model, images, targets, "mse", run_eagerly=True)


@pytest.mark.parametrize("name", sorted(BACKBONE_CASES))
def test_backbone_builds_and_trains(name):
    size, features = BACKBONE_CASES[name]
    model = build_sdl_model(name, num_rows=2, embed_dim=8, image_size=size)
    (features_model,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert features_model.output_shape == (None, features or features_model.output_shape[-1])
    check_trains_one_step(model, size)


def test_saved_model_backbone(tmp_path):
    size = 32
    extractor = keras.Sequential(
        [keras.Input((size, size, 3)), keras.layers.Conv2D(4, 3, name="conv"), keras.layers.GlobalAveragePooling2D()]
    )
    path = str(tmp_path / "extractor")
    extractor.export(path, verbose=False)
    features_model, preprocess = backbones.build_backbone(f"savedmodel:{path}", size)
    images = uint8_images(size)
    # TF-Hub image models take [0, 1] images.
    np.testing.assert_allclose(
        features_model(preprocess(images)), extractor(images / 255.0), rtol=1e-5, atol=1e-6
    )
    check_trains_one_step(build_sdl_model(f"savedmodel:{path}", num_rows=2, embed_dim=8, image_size=size), size)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        backbones.build_backbone(f"savedmodel:{tmp_path / 'nowhere'}", size)


def test_caffe_preprocessing_matches_keras_applications():
    images = uint8_images(8)
    expected = keras.applications.resnet50.preprocess_input(images.copy())
    layer = CaffePreprocessing()
    np.testing.assert_allclose(layer(images), expected, atol=1e-4)
    np.testing.assert_allclose(layer(images.astype("uint8")), expected, atol=1e-4)
    testing.check_config_round_trip(layer)


def test_efficientnetv2_preprocessing_matches_its_own():
    """Our rescaling outside the model equals the one Keras' EfficientNetV2S has inside."""
    size = 32
    _, preprocess = backbones.build_backbone("efficientnetv2_s", size)
    reference = keras.applications.EfficientNetV2S(
        include_top=False, weights=None, input_shape=(size, size, 3), include_preprocessing=True
    )
    (rescaling,) = [layer for layer in reference.layers if isinstance(layer, keras.layers.Rescaling)]
    images = uint8_images(size)
    np.testing.assert_allclose(preprocess(images), keras.Model(reference.input, rescaling.output)(images), atol=1e-6)


def test_keras_weights_file(tmp_path):
    source, _ = backbones.build_backbone("vgg19", 32)
    path = str(tmp_path / "vgg19.weights.h5")
    source.save_weights(path)
    model = build_sdl_model("vgg19", num_rows=2, embed_dim=8, image_size=32, backbone_weights=path)
    for a, b in zip(source.weights, model.get_layer(source.name).weights):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))


def test_imagenet_weights_offline_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.invalid/vgg19.h5: None -- no network")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(RuntimeError, match=r"ImageNet weights of VGG19 \(no network\?\).*~/.keras/models"):
        build_sdl_model("vgg19", image_size=32, backbone_weights="imagenet")
    with pytest.raises(ValueError, match="PyTorch checkpoints"):
        build_sdl_model("tresnet_m", image_size=64, backbone_weights="imagenet")


def test_unknown_backbone():
    with pytest.raises(ValueError, match=r"Unknown backbone 'resnet51'.*'savedmodel:<directory>'"):
        build_sdl_model("resnet51")
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        build_sdl_model("resnet50", image_size=32, backbone_weights=os.path.join("no", "missing.weights.h5"))


if __name__ == "__main__":
    testing.run(__file__)

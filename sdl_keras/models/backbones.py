"""Backbones by name: each maps images scaled as it expects to pooled features (B, F).

`build_backbone(name, image_size, weights)` returns `(model, preprocess)`, where
`preprocess` is the Keras layer that turns uint8-range images [0, 255] into the
backbone's expected input, so that every backbone takes the same images.

Names: the TResNets of the paper (`tresnet_m`, `tresnet_l`, `tresnet_xl`; inputs in
[0, 1]), keras.applications models (`resnet50` and `vgg19`, the supplementary's
choices, "caffe" preprocessing; `efficientnetv2_s`, [-1, 1]), the demo's
`small_cnn`, and `savedmodel:<directory>`: a SavedModel / TF-Hub-format image
feature extractor through `keras.layers.TFSMLayer` (TensorFlow backend only),
fed [0, 1] images as TF-Hub image models expect.

`weights`: None (random), "imagenet" (keras.applications models: downloaded once
into ~/.keras/models), or a file: a Keras `.weights.h5`, or for TResNets a
PyTorch checkpoint (`.safetensors`, `.pth`) that `sdl_keras.convert` reads.
"""

import os

import keras

from sdl_keras import keras_compat
from sdl_keras.layers import CaffePreprocessing
from sdl_keras.models import tresnet
from sdl_keras.models.small_cnn import small_cnn

SAVED_MODEL_PREFIX = "savedmodel:"


@keras.saving.register_keras_serializable(package="sdl_keras")
class SavedModelLayer(keras_compat.TrainableTFSMLayer):
    """A SavedModel / TF-Hub-format feature extractor as a Keras layer whose variables an
    optimizer can train (keras_compat.TrainableTFSMLayer). TensorFlow backend only.
    Arguments as `keras.layers.TFSMLayer`.

    Shape contract: whatever the endpoint maps (here images (B, H, W, 3) -> features).
    """


def _unit_scale():
    return keras.layers.Rescaling(1.0 / 255.0, name="to_unit_range")


def _small_cnn(image_size, weights):
    if weights not in (None, "none"):
        raise ValueError("The demo's small_cnn has no pretrained weights; pass weights=None.")
    return small_cnn(input_shape=(image_size, image_size, 3)), _unit_scale()


def _tresnet(constructor):
    def build(image_size, weights):
        model = constructor(
            include_top=False, weights=weights, input_shape=(image_size, image_size, 3), pooling="avg"
        )
        return model, _unit_scale()

    return build


def _keras_application(constructor, preprocess, **kwargs):
    def build(image_size, weights):
        if weights not in (None, "imagenet") and not os.path.exists(str(weights)):
            raise FileNotFoundError(f"{constructor.__name__} weights file not found: {weights}")
        try:
            model = constructor(
                include_top=False,
                weights=weights,
                input_shape=(image_size, image_size, 3),
                pooling="avg",
                **kwargs,
            )
        except Exception as error:
            # keras.utils.get_file raises a bare Exception when the download fails.
            if weights != "imagenet" or isinstance(error, ValueError):
                raise
            raise RuntimeError(
                f"Could not get the ImageNet weights of {constructor.__name__} (no network?). Keras "
                "downloads them once into ~/.keras/models/: run this once on a connected machine and "
                "copy that folder, pass weights=None, or pass a weights file. Cause: "
                f"{type(error).__name__}: {error}"
            ) from error
        return model, preprocess()

    return build


def _saved_model(path, image_size, weights):
    if weights is not None:
        raise ValueError(f"A SavedModel backbone carries its own weights; got weights={weights!r} for {path}.")
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"SavedModel directory not found: {path!r} (backbone '{SAVED_MODEL_PREFIX}{path}')."
        )
    errors = []
    # model.export() names its endpoint "serve"; tf.saved_model.save and TF-Hub use "serving_default".
    for endpoint in ("serve", "serving_default"):
        try:
            layer = SavedModelLayer(path, call_endpoint=endpoint, name="saved_model")
            break
        except ValueError as error:
            errors.append(str(error))
    else:
        raise ValueError(f"SavedModel {path} has neither a 'serve' nor a 'serving_default' endpoint: {errors}")
    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    outputs = layer(images)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ValueError(
                f"SavedModel {path} returns several outputs {sorted(outputs)}; expected one feature tensor."
            )
        outputs = next(iter(outputs.values()))
    if len(outputs.shape) == 4:
        outputs = keras.layers.GlobalAveragePooling2D(name="pool")(outputs)
    if len(outputs.shape) != 2:
        raise ValueError(
            f"SavedModel {path} returns shape {outputs.shape}; expected features (B, F) or maps (B, H, W, F)."
        )
    return keras.Model(images, outputs, name="saved_model_backbone"), _unit_scale()


BACKBONES = {
    "small_cnn": _small_cnn,
    "tresnet_m": _tresnet(tresnet.tresnet_m),
    "tresnet_l": _tresnet(tresnet.tresnet_l),
    "tresnet_xl": _tresnet(tresnet.tresnet_xl),
    "resnet50": _keras_application(keras.applications.ResNet50, CaffePreprocessing),
    "vgg19": _keras_application(keras.applications.VGG19, CaffePreprocessing),
    # Its own preprocessing layer is kept out of the model so that every backbone's is in one place.
    "efficientnetv2_s": _keras_application(
        keras.applications.EfficientNetV2S,
        lambda: keras.layers.Rescaling(1.0 / 128.0, offset=-1.0, name="to_signed_unit_range"),
        include_preprocessing=False,
    ),
}


def build_backbone(name, image_size=224, weights=None):
    """(features model, preprocessing layer) for a registered backbone name or `savedmodel:<dir>`."""
    if weights in ("none", ""):  # as command-line flags spell "no weights"
        weights = None
    if name.startswith(SAVED_MODEL_PREFIX):
        return _saved_model(name[len(SAVED_MODEL_PREFIX):], int(image_size), weights)
    if name not in BACKBONES:
        raise ValueError(
            f"Unknown backbone {name!r}; available: {sorted(BACKBONES)} or '{SAVED_MODEL_PREFIX}<directory>'."
        )
    return BACKBONES[name](int(image_size), weights)

"""Backbones by name: each maps images scaled as it expects to pooled features (B, F).

`build_backbone(name, image_size, weights)` returns `(model, preprocess)`, where
`preprocess` is the Keras layer that turns uint8-range images [0, 255] into the
backbone's expected input, so that every backbone takes the same images.
"""

import keras

from sdl_keras.models.small_cnn import small_cnn


def _unit_scale():
    return keras.layers.Rescaling(1.0 / 255.0, name="to_unit_range")


def _small_cnn(image_size, weights):
    if weights not in (None, "none"):
        raise ValueError("The demo's small_cnn has no pretrained weights; pass weights=None.")
    return small_cnn(input_shape=(image_size, image_size, 3)), _unit_scale()


BACKBONES = {
    "small_cnn": _small_cnn,
}


def build_backbone(name, image_size=224, weights=None):
    """(features model, preprocessing layer) for a registered backbone name."""
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; available: {sorted(BACKBONES)}.")
    return BACKBONES[name](int(image_size), weights)

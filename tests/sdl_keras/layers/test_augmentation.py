"""Augmentation layers: Cutout with probability 0.5, the random resized crop, the combined
layer inactive outside training, serialization, and an XLA-compiled training step."""

import keras
import numpy as np
import pytest

from sdl_keras.layers import Augmentation, Cutout, RandomResizedCrop
from tests import testing


def images(batch=8, size=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype("float32")


def test_cutout_fills_one_half_size_rectangle_in_about_half_the_images():
    x = images(batch=400, size=20)
    out = keras.ops.convert_to_numpy(Cutout(rate=0.5, size=0.5, seed=1)(x, training=True))
    changed = (out != x).any(axis=(1, 2, 3))
    assert 0.4 < changed.mean() < 0.6
    for i in np.nonzero(changed)[0][:20]:
        mask = (out[i] != x[i]).any(axis=-1)
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        # One rectangle, at most 10 x 10 pixels (half of 20), clipped at the borders ...
        assert rows.max() - rows.min() + 1 <= 11 and cols.max() - cols.min() + 1 <= 11
        box = out[i, rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        # ... filled with a single colour.
        assert np.allclose(box, box[0, 0])
    always = keras.ops.convert_to_numpy(Cutout(rate=1.0, seed=2)(x[:50], training=True))
    # Clipped at a corner, the rectangle still keeps a quarter of its 10 x 10 pixels.
    assert ((always != x[:50]).any(axis=-1).sum(axis=(1, 2)) >= 25).all()
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(Cutout(rate=0.0)(x, training=True)), x)


def test_random_resized_crop_is_the_identity_at_full_scale_and_crops_otherwise():
    x = images()
    identity = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0), seed=0)(x, training=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(identity), x, atol=1e-3)
    crop = RandomResizedCrop(scale=(0.25, 0.25), ratio=(1.0, 1.0), seed=0)
    out = keras.ops.convert_to_numpy(crop(x, training=True))
    assert out.shape == x.shape
    # A half-size square crop magnified 2x: neighbouring output pixels interpolate
    # between the same input pixels, so the image is smoother than the input.
    assert np.abs(np.diff(out, axis=2)).mean() < 0.7 * np.abs(np.diff(x, axis=2)).mean()
    with pytest.raises(ValueError, match="0 < scale <= 1"):
        RandomResizedCrop(scale=(0.0, 1.0))


def test_augmentation_acts_only_in_training():
    x = images()
    layer = Augmentation(rand_augment=True, seed=3)
    assert np.abs(keras.ops.convert_to_numpy(layer(x, training=True)) - x).mean() > 1.0
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, Augmentation(seed=3)(inputs))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), x)  # no training argument
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)


def test_serialization(tmp_path):
    for layer in (Cutout(rate=0.3, size=0.4, seed=1), RandomResizedCrop(scale=(0.3, 0.9), seed=2),
                  Augmentation(crop_scale=None, rand_augment=True, cutout_rate=0.5, seed=4)):
        testing.check_config_round_trip(layer)
    inputs = keras.Input((16, 16, 3))
    x = Augmentation(seed=0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    restored = testing.check_keras_saving(model, images(), tmp_path)
    assert isinstance(restored.layers[1], Augmentation) and restored.layers[1].cutout_rate == 0.5


def test_fits_with_xla():
    inputs = keras.Input((16, 16, 3))
    x = Augmentation(seed=0)(inputs)
    x = keras.layers.Rescaling(1 / 255.0)(x)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    testing.check_fit_step(model, images(), np.ones((8, 2), "float32"), "mse", jit_compile=True)
    assert model.jit_compile is True  # the augmentation did not turn XLA off


if __name__ == "__main__":
    testing.run(__file__)

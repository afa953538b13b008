"""Training augmentation as Keras layers at the front of the model, so it runs on the
accelerator with the rest of the step and is saved with the model. Every layer acts
only when called with training=True: inference, evaluation and exports see the image
unchanged.

The paper trains with "standard ImageNet augmentations" and Cutout (DeVries & Taylor,
its reference [12], which the text calls dropout) "with probability of 0.5"; the
official train.py applies `CutoutPIL(cutout_factor=0.5)` to every image (a rectangle of
half the image's height and width, filled with a random colour), then RandAugment, and
no crop or flip. `recipe_augmentation` builds either (RECIPES). Written in keras.ops
only, so the layers run on every Keras backend.
"""

import math

import keras
from keras import ops


def _uniform(shape, low, high, seed_generator):
    return keras.random.uniform(shape, minval=low, maxval=high, seed=seed_generator)


@keras.saving.register_keras_serializable(package="sdl_keras")
class Cutout(keras.layers.Layer):
    """With probability `rate`, fills a rectangle of `size` x the image's height and
    width, centred at a uniformly random pixel (clipped at the borders), with one random
    colour in `value_range`; independently per image.

    Shape: (B, H, W, C) -> (B, H, W, C), channels last.
    """

    def __init__(self, rate=0.5, size=0.5, value_range=(0, 255), seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate <= 1.0 or not 0.0 < size <= 1.0:
            raise ValueError(f"Cutout needs 0 <= rate <= 1 and 0 < size <= 1, got rate={rate}, size={size}.")
        self.rate = rate
        self.size = size
        self.value_range = tuple(value_range)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or self.rate == 0.0:
            return images
        images = ops.convert_to_tensor(images, dtype=self.compute_dtype)
        shape = ops.shape(images)
        batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
        h = ops.cast(height, "float32")
        w = ops.cast(width, "float32")
        centre_y = _uniform((batch, 1, 1, 1), 0.0, 1.0, self.seed_generator) * h
        centre_x = _uniform((batch, 1, 1, 1), 0.0, 1.0, self.seed_generator) * w
        rows = ops.reshape(ops.cast(ops.arange(height), "float32"), (1, -1, 1, 1)) + 0.5
        cols = ops.reshape(ops.cast(ops.arange(width), "float32"), (1, 1, -1, 1)) + 0.5
        inside = ops.logical_and(
            ops.abs(rows - centre_y) <= 0.5 * self.size * h,
            ops.abs(cols - centre_x) <= 0.5 * self.size * w,
        )
        applied = _uniform((batch, 1, 1, 1), 0.0, 1.0, self.seed_generator) < self.rate
        low, high = self.value_range
        colour = _uniform((batch, 1, 1, channels), low, high, self.seed_generator)
        mask = ops.logical_and(inside, applied)
        return ops.where(mask, ops.cast(colour, images.dtype), images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, size=self.size, value_range=list(self.value_range), seed=self.seed)
        return config


def _interpolation_matrix(start, length, size):
    """(B, size, size) bilinear weights: output pixel o of image b samples the input at
    start[b] + (o + 1/2) length[b] / size - 1/2. As a matrix product the resampling is
    plain matmuls, which XLA compiles (unlike ImageProjectiveTransform)."""
    positions = ops.cast(ops.arange(size), "float32")
    step = ops.expand_dims(length / ops.cast(size, "float32"), 1)
    source = ops.expand_dims(start, 1) + (positions[None, :] + 0.5) * step - 0.5
    source = ops.clip(source, 0.0, ops.cast(size, "float32") - 1.0)
    return ops.relu(1.0 - ops.abs(source[:, :, None] - positions[None, None, :]))


@keras.saving.register_keras_serializable(package="sdl_keras")
class RandomResizedCrop(keras.layers.Layer):
    """Crops a random region, of `scale` x the image's area and aspect ratio in `ratio`
    (log-uniform), and resizes it back to the input size; independently per image. A
    multi-label image keeps its labels, so the default scale is milder than ImageNet's
    (0.08, 1): small crops would cut labelled objects out.

    Shape: (B, H, W, C) -> (B, H, W, C), channels last.
    """

    def __init__(self, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3), seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < scale[0] <= scale[1] <= 1.0 or not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"RandomResizedCrop needs 0 < scale <= 1 and 0 < ratio, got {scale}, {ratio}.")
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training:
            return images
        images = ops.convert_to_tensor(images, dtype=self.compute_dtype)
        shape = ops.shape(images)
        batch = shape[0]
        h = ops.cast(shape[1], "float32")
        w = ops.cast(shape[2], "float32")
        area = _uniform((batch,), self.scale[0], self.scale[1], self.seed_generator)
        log_ratio = _uniform((batch,), math.log(self.ratio[0]), math.log(self.ratio[1]), self.seed_generator)
        aspect = ops.exp(log_ratio)
        # Fractions of the width and height; a crop that would not fit is clipped.
        crop_w = ops.minimum(ops.sqrt(area * aspect), 1.0)
        crop_h = ops.minimum(ops.sqrt(area / aspect), 1.0)
        x0 = _uniform((batch,), 0.0, 1.0, self.seed_generator) * (1.0 - crop_w) * w
        y0 = _uniform((batch,), 0.0, 1.0, self.seed_generator) * (1.0 - crop_h) * h
        rows = ops.cast(_interpolation_matrix(y0, crop_h * h, shape[1]), images.dtype)
        cols = ops.cast(_interpolation_matrix(x0, crop_w * w, shape[2]), images.dtype)
        images = ops.einsum("boh,bhwc->bowc", rows, images)
        return ops.einsum("bpw,bowc->bopc", cols, images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(scale=list(self.scale), ratio=list(self.ratio), seed=self.seed)
        return config


@keras.saving.register_keras_serializable(package="sdl_keras")
class Augmentation(keras.layers.Layer):
    """The training augmentation, one layer for the front of the model: random resized
    crop (`crop_scale`; None turns it off), horizontal flip, optional RandAugment
    (Keras' own, 2 ops; its geometric ops are not XLA-compilable, so a model holding
    it trains without jit_compile), then Cutout (before RandAugment with
    `cutout_first`, the official order). Images in `value_range` (the uint8
    range the pipelines deliver, before each backbone's own preprocessing).

    Unlike Keras' random layers, which also act when a model is called without a
    `training` argument, this layer acts only with training=True: `model(x)`,
    `predict`, `evaluate` and exports see the image unchanged.

    Shape: (B, H, W, C) -> (B, H, W, C), channels last.
    """

    def __init__(
        self,
        crop_scale=(0.5, 1.0),
        flip=True,
        cutout_rate=0.5,
        cutout_size=0.5,
        rand_augment=False,
        value_range=(0, 255),
        seed=None,
        cutout_first=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.crop_scale = None if crop_scale is None else tuple(crop_scale)
        self.flip = flip
        self.cutout_rate = cutout_rate
        self.cutout_size = cutout_size
        self.rand_augment = rand_augment
        self.value_range = tuple(value_range)
        self.seed = seed
        self.cutout_first = bool(cutout_first)
        self.stages = []
        if self.crop_scale is not None:
            self.stages.append(RandomResizedCrop(scale=self.crop_scale, seed=seed))
        if flip:
            self.stages.append(keras.layers.RandomFlip("horizontal", seed=seed))
        colour = [keras.layers.RandAugment(value_range=self.value_range, seed=seed)] if rand_augment else []
        cutout = [Cutout(rate=cutout_rate, size=cutout_size, value_range=self.value_range, seed=seed)] if cutout_rate else []
        self.stages += cutout + colour if self.cutout_first else colour + cutout

    def build(self, input_shape):
        for stage in self.stages:
            stage.build(input_shape)

    def call(self, images, training=None):
        if not training:
            return images
        images = ops.convert_to_tensor(images, dtype=self.compute_dtype)
        for stage in self.stages:
            images = stage(images, training=True)
        return images

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            crop_scale=None if self.crop_scale is None else list(self.crop_scale),
            flip=self.flip,
            cutout_rate=self.cutout_rate,
            cutout_size=self.cutout_size,
            rand_augment=self.rand_augment,
            value_range=list(self.value_range),
            seed=self.seed,
            cutout_first=self.cutout_first,
        )
        return config


# name -> (Augmentation arguments, the default Cutout probability).
RECIPES = {
    # The official train.py: Resize, CutoutPIL(0.5) on every image, RandAugment; no crop or flip.
    "official": (dict(crop_scale=None, flip=False, rand_augment=True, cutout_first=True), 1.0),
    # The paper's text: "standard ImageNet augmentations" and Cutout "with probability of 0.5".
    "crop_flip_cutout": (dict(crop_scale=(0.5, 1.0), flip=True, rand_augment=False), 0.5),
}


def recipe_augmentation(recipe, cutout_rate=None, seed=None, name="augmentation"):
    """The `Augmentation` of a named recipe (RECIPES); `cutout_rate` None is the recipe's own
    (1 for official, 0.5 for crop_flip_cutout)."""
    if recipe not in RECIPES:
        raise ValueError(f"Unknown augmentation {recipe!r}; expected one of {sorted(RECIPES)}.")
    arguments, default_rate = RECIPES[recipe]
    rate = default_rate if cutout_rate is None else cutout_rate
    return Augmentation(cutout_rate=rate, cutout_size=0.5, seed=seed, name=name, **arguments)

"""TResNet (Ridnik et al., "TResNet: High Performance GPU-Dedicated Architecture", WACV 2021).

Layer for layer the architecture of timm's `tresnet.py`, in NHWC Keras 3:
SpaceToDepth stem, BasicBlocks (layers 1-2) then Bottlenecks (layers 3-4),
anti-aliased (blur-pool) downsampling, squeeze-excitation in layers 1-3, and
BatchNorm + LeakyReLU where the original used InPlaceABN (InPlaceABN computes the
same function in eval mode; `checkpoint_filter` converts its weights).

Inputs are float images in [0, 1] without mean/std normalization, as timm's
TResNet configs (mean 0, std 1). Keras layer names follow timm's module names
without the `body.` prefix ("layer2.0.conv1.conv", "head.fc"), so a state-dict key
minus its last component names the Keras layer; `sdl_keras.convert` relies on that.
"""

import math
import os
import re

import keras
import numpy as np
from keras import layers, ops

from sdl_keras.models import torch_files

# timm's TResNet: the stem's activation is LeakyReLU(0.01) and the blocks' is
# LeakyReLU(0.001) (the original code's InPlaceABN `activation_param`s).
STEM_SLOPE = 1e-2
BLOCK_SLOPE = 1e-3
# PyTorch BatchNorm2d / InPlaceABN defaults (Keras' are 1e-3 and 0.99).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
# InPlaceABN keeps its scale positive as |w| + eps; timm converts weights this way.
INPLACE_ABN_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="sdl_keras")
class SpaceToDepth(layers.Layer):
    """TResNet's stem: each block x block patch becomes one pixel with block^2 times the channels.

    Channel order is (row in patch, column in patch, input channel), as timm's
    `SpaceToDepth` in NCHW, so converted stem kernels line up.

    Shape contract: (B, H, W, C) -> (B, H / block, W / block, C * block^2); H and W
    must be multiples of `block_size`.

    Args:
        block_size: the patch side (4 in TResNet).
    """

    def __init__(self, block_size=4, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def build(self, input_shape):
        for axis, size in zip(("height", "width"), input_shape[1:3]):
            if size is not None and size % self.block_size:
                raise ValueError(
                    f"{self.name}: image {axis} {size} is not a multiple of {self.block_size}; "
                    f"TResNet needs sizes divisible by {self.block_size} (use multiples of 32)."
                )

    def call(self, images):
        bs = self.block_size
        _, height, width, channels = ops.shape(images)
        x = ops.reshape(images, (-1, height // bs, bs, width // bs, bs, channels))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (-1, height // bs, width // bs, bs * bs * channels))

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        bs = self.block_size
        return (
            batch,
            None if height is None else height // bs,
            None if width is None else width // bs,
            channels * bs * bs,
        )

    def get_config(self):
        config = super().get_config()
        config.update(block_size=self.block_size)
        return config


@keras.saving.register_keras_serializable(package="sdl_keras")
class BlurPool2D(layers.Layer):
    """Anti-aliased downsampling (Zhang 2019) as timm's `BlurPool2d`: a fixed binomial blur, then subsampling.

    Reflect-pads, then convolves every channel with the outer product of the
    binomial row of `filter_size` (3: [1, 2, 1] / 4) at `stride`. No weights.

    Shape contract: (B, H, W, C) -> (B, ceil(H / stride), ceil(W / stride), C) for
    filter_size 3, stride 2.

    Args:
        filter_size: the blur's side.
        stride: the subsampling factor.
    """

    def __init__(self, filter_size=3, stride=2, **kwargs):
        super().__init__(**kwargs)
        self.filter_size = int(filter_size)
        self.stride = int(stride)
        # timm's get_padding(filter_size, stride)
        self._padding = ((self.stride - 1) + (self.filter_size - 1)) // 2
        row = np.array([math.comb(self.filter_size - 1, k) for k in range(self.filter_size)], "float64")
        self._blur = (np.outer(row, row) / row.sum() ** 2).astype("float32")

    def call(self, inputs):
        channels = inputs.shape[-1]
        pad = self._padding
        x = ops.pad(inputs, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
        kernel = ops.cast(self._blur, inputs.dtype)[:, :, None, None]
        kernel = ops.tile(kernel, (1, 1, channels, 1))
        return ops.depthwise_conv(x, kernel, strides=self.stride, padding="valid")

    def compute_output_shape(self, input_shape):
        def out(size):
            if size is None:
                return None
            return (size + 2 * self._padding - self.filter_size) // self.stride + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(filter_size=self.filter_size, stride=self.stride)
        return config


# ----------------------------------------------------------------------------- blocks


def _conv_norm_act(x, filters, kernel_size, name, slope=None, anti_alias=False):
    """timm's ConvNormAct(Aa): conv (stride 1) -> BN -> LeakyReLU(slope) or nothing -> blur-pool /2."""
    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}.conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}.bn")(x)
    if slope is not None:
        x = layers.LeakyReLU(negative_slope=slope, name=f"{name}.act")(x)
    if anti_alias:
        x = BlurPool2D(name=f"{name}.aa")(x)
    return x


def _squeeze_excite(x, reduced, name):
    """timm's SEModule: global mean -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid gate."""
    channels = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.pool")(x)
    s = layers.Conv2D(reduced, 1, activation="relu", name=f"{name}.fc1")(s)
    s = layers.Conv2D(channels, 1, activation="sigmoid", name=f"{name}.fc2")(s)
    return layers.Multiply(name=f"{name}.gate")([x, s])


def _shortcut(x, filters, stride, name):
    """The residual branch: identity, or (2x2 average pool when striding) -> 1x1 conv -> BN."""
    if stride == 1 and x.shape[-1] == filters:
        return x
    index = 0
    if stride == 2:
        # ceil_mode=True, count_include_pad=False in timm: "same" pooling averages only real pixels.
        x = layers.AveragePooling2D(2, 2, padding="same", name=f"{name}.downsample.0")(x)
        index = 1
    return _conv_norm_act(x, filters, 1, f"{name}.downsample.{index}")


def basic_block(x, planes, stride, use_se, name):
    """TResNet BasicBlock (expansion 1): 3x3 (blur-pooled when striding) -> 3x3 -> SE, + shortcut, ReLU."""
    shortcut = _shortcut(x, planes, stride, name)
    out = _conv_norm_act(x, planes, 3, f"{name}.conv1", BLOCK_SLOPE, anti_alias=stride == 2)
    out = _conv_norm_act(out, planes, 3, f"{name}.conv2")
    if use_se:
        out = _squeeze_excite(out, max(planes // 4, 64), f"{name}.se")
    out = layers.Add(name=f"{name}.add")([out, shortcut])
    return layers.ReLU(name=f"{name}.act")(out)


def bottleneck_block(x, planes, stride, use_se, name):
    """TResNet Bottleneck (expansion 4): 1x1 -> 3x3 (blur-pooled when striding) -> SE -> 1x1, + shortcut, ReLU.

    Unlike a ResNet bottleneck, SE acts on the narrow 3x3 output, before the expansion.
    """
    shortcut = _shortcut(x, planes * 4, stride, name)
    out = _conv_norm_act(x, planes, 1, f"{name}.conv1", BLOCK_SLOPE)
    out = _conv_norm_act(out, planes, 3, f"{name}.conv2", BLOCK_SLOPE, anti_alias=stride == 2)
    if use_se:
        out = _squeeze_excite(out, max(planes * 4 // 8, 64), f"{name}.se")
    out = _conv_norm_act(out, planes * 4, 1, f"{name}.conv3")
    out = layers.Add(name=f"{name}.add")([out, shortcut])
    return layers.ReLU(name=f"{name}.act")(out)


# ----------------------------------------------------------------------------- model


def TResNet(
    layers,
    width_factor=1.0,
    include_top=True,
    weights=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name="tresnet",
):
    """A TResNet as a Keras functional model, with keras.applications conventions.

    Shape contract: images (B, H, W, 3), float in [0, 1] without mean/std
    normalization (H, W multiples of 32) ->
      include_top: class probabilities (or logits with classifier_activation=None) (B, classes);
      else pooling="avg": features (B, F) with F = 8 * 4 * int(64 * width_factor)
      (2048 for TResNet-M), "max": the same with max pooling, None: (B, H/32, W/32, F).

    Args:
        layers: blocks in each of the four stages ([3, 4, 11, 3] for TResNet-M).
        width_factor: channel multiplier; stage widths are multiples of int(64 * width_factor).
        include_top: add the classifier `head.fc` after global average pooling.
        weights: None (random), a Keras `.weights.h5` file, or a PyTorch TResNet
            checkpoint (timm or original layout, `.pth`/`.safetensors`; see
            `sdl_keras.convert`). "imagenet" is refused with instructions: the
            ImageNet weights exist only as PyTorch checkpoints.
        input_shape: (H, W, 3); default (224, 224, 3) with the top, else (None, None, 3).
        pooling: without the top, "avg", "max" or None.
        classes: classifier outputs.
        classifier_activation: activation of the classifier (None for logits, as timm).
        name: the model's name.
    """
    if len(layers) != 4:
        raise ValueError(f"TResNet has four stages; got layers={layers}.")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max'; got {pooling!r}.")
    _check_weights_argument(weights)
    if input_shape is None:
        input_shape = (224, 224, 3) if include_top else (None, None, 3)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"TResNet takes RGB images (H, W, 3); got input_shape={input_shape}.")

    planes = int(64 * width_factor)
    images = keras.Input(shape=tuple(input_shape), name="images")
    x = SpaceToDepth(4, name="s2d")(images)
    x = _conv_norm_act(x, planes, 3, "conv1", STEM_SLOPE)
    stages = (
        (basic_block, planes, 1, True),
        (basic_block, planes * 2, 2, True),
        (bottleneck_block, planes * 4, 2, True),
        (bottleneck_block, planes * 8, 2, False),
    )
    for stage, ((block, width, stride, use_se), blocks) in enumerate(zip(stages, layers), 1):
        for index in range(blocks):
            x = block(x, width, stride if index == 0 else 1, use_se, f"layer{stage}.{index}")

    if include_top:
        # timm's "fast" global pool: the spatial mean.
        x = keras.layers.GlobalAveragePooling2D(name="head.global_pool")(x)
        x = keras.layers.Dense(classes, activation=classifier_activation, name="head.fc")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="head.global_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="head.global_pool")(x)
    model = keras.Model(images, x, name=name)
    if weights is not None:
        load_tresnet_weights(model, weights)
    return model


def _check_weights_argument(weights):
    if weights == "imagenet":
        raise ValueError(
            "TResNet ImageNet weights are published only as PyTorch checkpoints (timm's "
            "'tresnet_m.miil_in1k' and friends, or the original TResNet release), which Keras cannot "
            "download. Fetch the checkpoint file and pass its path as weights= (.safetensors or "
            ".pth), or convert it once with `python -m sdl_keras.convert`."
        )
    if weights is not None and not os.path.exists(str(weights)):
        raise FileNotFoundError(f"TResNet weights file not found: {weights}")


def load_tresnet_weights(model, path):
    """Loads a Keras `.weights.h5` or a PyTorch TResNet checkpoint into `model`.

    PyTorch checkpoints (timm's or the original layout) skip their heads when `model`
    has no classifier, so ImageNet checkpoints initialize a features backbone. (The SDL
    head of a ZS_SDL checkpoint goes through `sdl_keras.convert.load_torch_tresnet_weights`.)
    """
    path = str(path)
    _check_weights_argument(path)
    if path.endswith(".h5") or path.endswith(".keras"):
        model.load_weights(path)
        return
    if not torch_files.is_torch_checkpoint(path):
        raise ValueError(
            f"Cannot tell the format of TResNet weights {path!r}: expected a Keras .weights.h5 or a "
            f"PyTorch checkpoint ({', '.join(torch_files.TORCH_CHECKPOINT_SUFFIXES)})."
        )
    state, _ = torch_files.split_checkpoint(torch_files.read_torch_checkpoint(path), path)
    weights, sources = checkpoint_filter(state)
    net = find_tresnet(model)
    skip_head = not any(layer.name == "head.fc" for layer in net.layers)
    for variable, value in match_checkpoint(net, weights, sources, path, skip_head=skip_head):
        variable.assign(np.asarray(value, dtype=variable.dtype))


# ----------------------------------------------------------------------------- checkpoint filter

# The original TResNet / ASL / ZS_SDL layout: `convN` is Sequential(Conv2d, InPlaceABN), or
# Sequential(Sequential(Conv2d, InPlaceABN), AntiAlias) where it strides; `downsample.N` likewise.
_ORIGINAL_LAYOUT = re.compile(
    r"(?P<module>(?:.*\.)?(?:conv\d+|downsample\.\d+))\.(?:0\.)?(?P<part>[01])\."
    r"(?P<param>weight|bias|running_mean|running_var|num_batches_tracked)"
)
# Anti-alias filters the original code stored as buffers (`convN.1.op.filt`, `convN.1.filt`):
# fixed blurs that BlurPool2D recomputes.
_ANTI_ALIAS_BUFFER = re.compile(r"(?:.*\.)?conv\d+\.1\.(?:op\.)?filt")
_PREFIXES = ("module.", "body.")


def canonical_key(key):
    """The timm-layout name of a TResNet state-dict key, without `module.`/`body.` prefixes.

    Returns (name, from_inplace_abn), or (None, False) for buffers that hold no
    learned state (anti-alias filters, `num_batches_tracked`). Keys of other
    modules (`head.fc.*`, the SDL head `embedding.*`) come back unchanged.
    """
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    if _ANTI_ALIAS_BUFFER.fullmatch(key) or key.endswith("num_batches_tracked"):
        return None, False
    match = _ORIGINAL_LAYOUT.fullmatch(key)
    if match is None:
        return key, False
    part = "conv" if match["part"] == "0" else "bn"
    return f"{match['module']}.{part}.{match['param']}", part == "bn"


def checkpoint_filter(state_dict):
    """A TResNet state dict in either layout -> timm layout: ({name: array}, {name: original key}).

    Original-layout InPlaceABN weights w become BatchNorm weights |w| + 1e-5.
    Two keys that land on one name are an error naming both.
    """
    weights, sources = {}, {}
    for key, value in state_dict.items():
        name, from_inplace_abn = canonical_key(key)
        if name is None:
            continue
        if name in sources:
            raise ValueError(
                f"Checkpoint keys {sources[name]!r} and {key!r} both map to TResNet parameter {name!r}."
            )
        value = np.asarray(value)
        if from_inplace_abn and name.endswith(".bn.weight"):
            value = np.abs(value) + np.asarray(INPLACE_ABN_EPSILON, value.dtype)
        weights[name] = value
        sources[name] = key
    return weights, sources


class CheckpointMismatchError(ValueError):
    """A checkpoint key is missing, extra or mis-shaped for the Keras model; the message names it."""


def _oihw_to_hwio(kernel):
    return np.transpose(kernel, (2, 3, 1, 0))


def _hwio_to_oihw(kernel):
    return np.transpose(kernel, (3, 2, 0, 1))


# Keras layer class -> (torch parameter, Keras attribute, torch->Keras, Keras->torch).
_VARIABLES = (
    (layers.Conv2D, (("weight", "kernel", _oihw_to_hwio, _hwio_to_oihw), ("bias", "bias", None, None))),
    (layers.Dense, (("weight", "kernel", np.transpose, np.transpose), ("bias", "bias", None, None))),
    (
        layers.BatchNormalization,
        (
            ("weight", "gamma", None, None),
            ("bias", "beta", None, None),
            ("running_mean", "moving_mean", None, None),
            ("running_var", "moving_variance", None, None),
        ),
    ),
)
HEAD_PREFIXES = ("head.", "embedding.")


def find_tresnet(model):
    """The TResNet functional model inside `model` (itself, or a nested submodel), by its stem
    layer; ValueError if there is none."""
    names = {layer.name for layer in model.layers}
    if "conv1.conv" in names and "s2d" in names:
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            try:
                return find_tresnet(layer)
            except ValueError:
                continue
    raise ValueError(f"Model {model.name!r} holds no TResNet (no layers 's2d' and 'conv1.conv').")


def tresnet_variables(net):
    """{timm-layout key: (Keras variable, torch->Keras, Keras->torch)} for every weight of a TResNet."""
    entries = {}
    for layer in net.layers:
        if not layer.weights:
            continue
        for cls, params in _VARIABLES:
            if isinstance(layer, cls):
                for param, attr, to_keras, to_torch in params:
                    variable = getattr(layer, attr, None)
                    if variable is not None:
                        entries[f"{layer.name}.{param}"] = (variable, to_keras, to_torch)
                break
        else:
            raise TypeError(f"No PyTorch mapping for TResNet layer {layer.name!r} ({type(layer).__name__}).")
    return entries


def tresnet_state_dict(model):
    """The timm-layout state dict (numpy, PyTorch layouts) of the TResNet in a Keras model:
    the inverse of loading, classifier `head.fc` included; `num_batches_tracked` counters
    are not written."""
    state = {}
    for key, (variable, _, to_torch) in tresnet_variables(find_tresnet(model)).items():
        value = np.asarray(variable.value)
        # Contiguous, as torch.from_numpy and safetensors' writer need.
        value = np.ascontiguousarray(to_torch(value) if to_torch else value)
        state[key if key.startswith("head.") else f"body.{key}"] = value
    return state


def _describe(keys, sources, limit=8):
    shown = [repr(sources.get(k, k)) for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def match_checkpoint(net, weights, sources, source, skip_head=False, other_keys=()):
    """(Keras variable, value) pairs for every weight of the TResNet `net` from a filtered
    checkpoint (`checkpoint_filter`), checked before anything is written.

    Args:
        skip_head: ignore the checkpoint's heads (`head.*`, `embedding.*`) and the net's
            classifier, to start a new head from a pretrained body.
        other_keys: checkpoint keys the caller places elsewhere (an SDL head).

    Raises:
        CheckpointMismatchError: a missing, extra or mis-shaped key, named.
    """
    expected = tresnet_variables(net)
    if skip_head:
        expected = {k: v for k, v in expected.items() if not k.startswith(HEAD_PREFIXES)}
        weights = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIXES)}
    missing = [k for k in expected if k not in weights]
    if missing:
        raise CheckpointMismatchError(
            f"{source} lacks {len(missing)} TResNet weight(s) the Keras model needs: "
            f"{_describe(missing, {})} (timm-layout names). Is it a TResNet of this size?"
        )
    extra = [k for k in weights if k not in expected and k not in set(other_keys)]
    if extra:
        hint = ""
        if all(k.startswith(HEAD_PREFIXES) for k in extra):
            hint = (
                " They are the checkpoint's head, which the model has no place for: pass "
                "skip_head=True to start the head anew (the CLI's --target=backbone does)."
            )
        raise CheckpointMismatchError(
            f"{source} has {len(extra)} key(s) with no place in the Keras model: "
            f"{_describe(extra, sources)}.{hint}"
        )
    assignments = []
    for key, (variable, to_keras, to_torch) in expected.items():
        value = weights[key]
        # Compare in PyTorch layout, before any transpose can fail on a wrong rank.
        torch_shape = np.shape(to_torch(np.broadcast_to(np.float32(0), variable.shape)) if to_torch else variable)
        if tuple(value.shape) != tuple(torch_shape):
            raise CheckpointMismatchError(
                f"{source}: {sources[key]!r} has shape {tuple(value.shape)}; Keras variable "
                f"{variable.path!r} needs {tuple(torch_shape)} in PyTorch layout."
            )
        assignments.append((variable, to_keras(value) if to_keras else value))
    return assignments


# ----------------------------------------------------------------------------- constructors


def tresnet_m(include_top=True, weights=None, input_shape=None, pooling=None, classes=1000,
              classifier_activation="softmax", name="tresnet_m"):
    """TResNet-M, the SDL paper's backbone: layers [3, 4, 11, 3], width 1.0, 2048 features.

    Arguments as `TResNet`.
    """
    return TResNet([3, 4, 11, 3], 1.0, include_top, weights, input_shape, pooling, classes,
                   classifier_activation, name)


def tresnet_l(include_top=True, weights=None, input_shape=None, pooling=None, classes=1000,
              classifier_activation="softmax", name="tresnet_l"):
    """TResNet-L: layers [4, 5, 18, 3], width 1.2, 2432 features. Arguments as `TResNet`."""
    return TResNet([4, 5, 18, 3], 1.2, include_top, weights, input_shape, pooling, classes,
                   classifier_activation, name)


def tresnet_xl(include_top=True, weights=None, input_shape=None, pooling=None, classes=1000,
               classifier_activation="softmax", name="tresnet_xl"):
    """TResNet-XL: layers [4, 5, 24, 3], width 1.3, 2656 features. Arguments as `TResNet`."""
    return TResNet([4, 5, 24, 3], 1.3, include_top, weights, input_shape, pooling, classes,
                   classifier_activation, name)

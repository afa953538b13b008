"""PyTorch TResNet checkpoints -> Keras weights: timm's, the original TResNet/ASL ones, and ZS_SDL's.

Reads `.safetensors` (numpy only, no torch) and `.pth`/`.pth.tar` (torch), whether
the state dict is bare or under a "model"/"state_dict" key, in timm's current key
layout or the original one (see `sdl_keras.models.tresnet.checkpoint_filter`).
The official ZS_SDL checkpoint `{"model", "num_classes", "idx_to_class"}` holds the
TResNet body (no prefix) and the SDL head `embedding.weight` (M*d, F), whose flat
output the official code views as (d, M); it becomes this project's `MatrixHead`
kernel for A (M, d), and its `idx_to_class` the tag list.

Command line (writes a `.weights.h5`):
  python -m sdl_keras.convert --flagfile=configs/convert.flags \\
      --checkpoint=tresnet_m.safetensors --output=tresnet_m.weights.h5
`--target=backbone` (the default for ImageNet checkpoints) writes weights for
`build_sdl_model(backbone=ARCH, backbone_weights=OUTPUT)`; `--target=sdl` (the
default for ZS_SDL checkpoints) writes the whole SDL model's weights for
`build_sdl_model(backbone=ARCH, num_rows=M, embed_dim=d).load_weights(OUTPUT)`,
and the tags beside them; `--target=classifier` a `tresnet_*(include_top=True)`.
"""

import dataclasses
import os
from collections.abc import Mapping

import keras
import numpy as np
from absl import app, flags, logging

from sdl_keras.layers import MatrixHead
from sdl_keras.models import tresnet

HEAD_PREFIXES = ("head.", "embedding.")
TARGETS = ("auto", "backbone", "classifier", "sdl")
ARCHITECTURES = {"tresnet_m": tresnet.tresnet_m, "tresnet_l": tresnet.tresnet_l, "tresnet_xl": tresnet.tresnet_xl}


class CheckpointMismatchError(ValueError):
    """A checkpoint key is missing, extra or mis-shaped for the Keras model; the message names it."""


@dataclasses.dataclass(frozen=True)
class ConversionInfo:
    """What `load_torch_tresnet_weights` did.

    Attributes:
        loaded: checkpoint keys (as in the file) written into the model.
        skipped: checkpoint keys left out (head keys with `skip_head`, buffers).
        tags: the checkpoint's `idx_to_class` as a list in index order, or None.
        num_classes: the checkpoint's `num_classes`, or None.
    """

    loaded: tuple
    skipped: tuple
    tags: list = None
    num_classes: int = None


# ----------------------------------------------------------------------------- reading


def _to_numpy(value):
    """A torch tensor (any device / float dtype) or array-like -> numpy, without importing torch."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # numpy has no bfloat16
        return value.numpy()
    return np.asarray(value)


def _torch_load(path, allow_pickle):
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"Reading {path} needs PyTorch (`pip install torch`); .safetensors checkpoints do not."
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as error:
        if allow_pickle or "weights_only" not in str(error):
            raise
        raise ValueError(
            f"{path} holds Python objects besides tensors and plain containers; torch refuses them "
            f"in its safe mode. If you trust the file, pass allow_pickle=True (--allow_pickle): "
            f"unpickling runs code.\n{error}"
        ) from error


def read_torch_checkpoint(path, allow_pickle=False):
    """The top-level mapping of a `.safetensors` or torch (`.pth`, `.pth.tar`, ...) file, tensors as numpy."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.lower().endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    if not path.lower().endswith(tresnet.TORCH_CHECKPOINT_SUFFIXES):
        raise ValueError(
            f"Cannot tell the format of checkpoint {path!r}: expected one of "
            f"{', '.join(tresnet.TORCH_CHECKPOINT_SUFFIXES)}."
        )
    checkpoint = _torch_load(path, allow_pickle)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a state dict or a dict holding one.")
    return checkpoint


def split_checkpoint(checkpoint, source="checkpoint"):
    """(state dict of numpy arrays, metadata) from a bare state dict or one under "model"/"state_dict"."""
    for key in ("model", "state_dict"):
        if isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            metadata = {k: v for k, v in checkpoint.items() if k != key}
            break
    else:
        state, metadata = checkpoint, {}
    arrays = {}
    for key, value in state.items():
        if not (hasattr(value, "detach") or isinstance(value, np.ndarray) or np.isscalar(value)):
            raise ValueError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a state dict "
                "(bare, or under a 'model' or 'state_dict' key)."
            )
        arrays[str(key)] = _to_numpy(value)
    return arrays, metadata


def _tags_of(metadata):
    idx_to_class = metadata.get("idx_to_class")
    if idx_to_class is None:
        return None
    if isinstance(idx_to_class, Mapping):
        # Index order; the official inference code relies on the dict's insertion order, the same.
        return [str(idx_to_class[i]) for i in sorted(idx_to_class, key=int)]
    return [str(t) for t in idx_to_class]


# ----------------------------------------------------------------------------- the Keras side


def _oihw_to_hwio(kernel):
    return np.transpose(kernel, (2, 3, 1, 0))


def _hwio_to_oihw(kernel):
    return np.transpose(kernel, (3, 2, 0, 1))


# Keras layer class -> (torch parameter, Keras attribute, torch->Keras, Keras->torch).
def _variable_table():
    return (
        (keras.layers.Conv2D, (("weight", "kernel", _oihw_to_hwio, _hwio_to_oihw), ("bias", "bias", None, None))),
        (keras.layers.Dense, (("weight", "kernel", np.transpose, np.transpose), ("bias", "bias", None, None))),
        (
            keras.layers.BatchNormalization,
            (
                ("weight", "gamma", None, None),
                ("bias", "beta", None, None),
                ("running_mean", "moving_mean", None, None),
                ("running_var", "moving_variance", None, None),
            ),
        ),
    )


def find_tresnet(model):
    """The TResNet functional model inside `model` (itself, or a nested submodel), by its stem layer."""
    names = {layer.name for layer in model.layers}
    if "conv1.conv" in names and "s2d" in names:
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found = find_tresnet(layer)
            if found is not None:
                return found
    return None


def _find_matrix_head(model):
    for layer in model.layers:
        if isinstance(layer, MatrixHead):
            return layer
        if isinstance(layer, keras.Model):
            found = _find_matrix_head(layer)
            if found is not None:
                return found
    return None


def _tresnet_variables(net):
    """{timm-layout key: (Keras variable, torch->Keras, Keras->torch)} for every weight of a TResNet."""
    table = _variable_table()
    entries = {}
    for layer in net.layers:
        if not layer.weights:
            continue
        for cls, params in table:
            if isinstance(layer, cls):
                for param, attr, to_keras, to_torch in params:
                    variable = getattr(layer, attr, None)
                    if variable is not None:
                        entries[f"{layer.name}.{param}"] = (variable, to_keras, to_torch)
                break
        else:
            raise TypeError(f"No PyTorch mapping for TResNet layer {layer.name!r} ({type(layer).__name__}).")
    return entries


def _official_head_kernel(weight, num_rows, embed_dim):
    """ZS_SDL's Linear weight (M*d, F), whose output is viewed (d, M), -> MatrixHead kernel (F, M*d) for (M, d)."""
    features = weight.shape[1]
    return weight.reshape(embed_dim, num_rows, features).transpose(1, 0, 2).reshape(-1, features).T


def _official_head_bias(bias, num_rows, embed_dim):
    return bias.reshape(embed_dim, num_rows).T.reshape(-1)


def tresnet_state_dict(model):
    """The timm-layout state dict (numpy, PyTorch layouts) of the TResNet in a Keras model.

    The inverse of `load_torch_tresnet_weights` for the TResNet part (classifier
    `head.fc` included); `num_batches_tracked` counters are not written.
    """
    net = find_tresnet(model)
    if net is None:
        raise ValueError(f"Model {model.name!r} holds no TResNet (no layers 's2d' and 'conv1.conv').")
    state = {}
    for key, (variable, _, to_torch) in _tresnet_variables(net).items():
        value = np.asarray(variable.value)
        # Contiguous, as torch.from_numpy and safetensors' writer need.
        value = np.ascontiguousarray(to_torch(value) if to_torch else value)
        state[key if key.startswith("head.") else f"body.{key}"] = value
    return state


# ----------------------------------------------------------------------------- loading


def _describe(keys, sources, limit=8):
    shown = [repr(sources.get(k, k)) for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def load_torch_tresnet_weights(model, path_or_state_dict, skip_head=False, allow_pickle=False):
    """Loads a PyTorch TResNet checkpoint into a Keras model holding a `TResNet`.

    `model` is a TResNet (with or without its classifier `head.fc`) or a model that
    nests one, like `build_sdl_model`'s, whose `MatrixHead` takes the ZS_SDL
    `embedding.*` head. Every TResNet weight must come from the checkpoint and
    every checkpoint key must find a place; nothing is written unless all match.

    Args:
        model: the Keras model.
        path_or_state_dict: a `.safetensors`/`.pth`/`.pth.tar` path, or a mapping:
            a state dict (numpy arrays or torch tensors), bare or under "model" /
            "state_dict", beside optional "num_classes" and "idx_to_class".
        skip_head: ignore the checkpoint's heads (`head.*`, `embedding.*`) and leave
            the model's classifier / MatrixHead as they are: to start a new head
            from a pretrained body.
        allow_pickle: let torch unpickle arbitrary objects (only for trusted files).

    Returns:
        A `ConversionInfo` (loaded and skipped keys, the checkpoint's tags).

    Raises:
        CheckpointMismatchError: a missing, extra or mis-shaped key, named.
    """
    if isinstance(path_or_state_dict, Mapping):
        source, checkpoint = "state dict", path_or_state_dict
    else:
        source = os.fspath(path_or_state_dict)
        checkpoint = read_torch_checkpoint(source, allow_pickle)
    state, metadata = split_checkpoint(checkpoint, source)
    weights, sources = tresnet.checkpoint_filter(state)
    net = find_tresnet(model)
    if net is None:
        raise ValueError(f"Model {model.name!r} holds no TResNet (no layers 's2d' and 'conv1.conv').")
    expected = _tresnet_variables(net)
    head = None if skip_head else _find_matrix_head(model)
    if skip_head:
        expected = {k: v for k, v in expected.items() if not k.startswith(HEAD_PREFIXES)}
        weights = {k: v for k, v in weights.items() if not k.startswith(HEAD_PREFIXES)}

    assignments = []
    if head is not None:
        if "embedding.weight" not in weights:
            raise CheckpointMismatchError(
                f"{source} has no SDL head 'embedding.weight' for the model's MatrixHead {head.name!r}; "
                "pass skip_head=True to keep the MatrixHead as it is."
            )
        assignments += _matrix_head_assignments(head, weights, sources)
    missing = [k for k in expected if k not in weights]
    if missing:
        raise CheckpointMismatchError(
            f"{source} lacks {len(missing)} TResNet weight(s) the Keras model needs: "
            f"{_describe(missing, {})} (timm-layout names). Is it a TResNet of this size?"
        )
    head_keys = {"embedding.weight", "embedding.bias"} if head is not None else set()
    extra = [k for k in weights if k not in expected and k not in head_keys]
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
    for variable, value in assignments:
        variable.assign(np.asarray(value, dtype=variable.dtype))
    loaded = {sources[k] for k in weights}
    return ConversionInfo(
        loaded=tuple(k for k in state if k in loaded),
        skipped=tuple(k for k in state if k not in loaded),
        tags=_tags_of(metadata),
        num_classes=None if metadata.get("num_classes") is None else int(metadata["num_classes"]),
    )


def _matrix_head_assignments(head, weights, sources):
    """Checks and reorders `embedding.weight`/`.bias` for `head`.

    The official SDL head is a bias-free Linear: its MatrixHead equivalent has a zero bias.
    """
    rows, dim = head.num_rows, head.embed_dim
    weight = weights["embedding.weight"]
    features = head.kernel.shape[0]
    if weight.shape != (rows * dim, features):
        raise CheckpointMismatchError(
            f"{sources['embedding.weight']!r} has shape {tuple(weight.shape)}, but MatrixHead {head.name!r} "
            f"(M={rows}, d={dim}) on {features} features needs ({rows * dim}, {features}): check num_rows "
            "and embed_dim."
        )
    assignments = [(head.kernel, _official_head_kernel(weight, rows, dim))]
    bias = weights.get("embedding.bias")
    if head.bias is not None:
        if bias is None:
            bias = np.zeros((rows * dim,), np.float32)
        elif bias.shape != (rows * dim,):
            raise CheckpointMismatchError(
                f"{sources['embedding.bias']!r} has shape {tuple(bias.shape)}; MatrixHead needs ({rows * dim},)."
            )
        assignments.append((head.bias, _official_head_bias(bias, rows, dim)))
    elif bias is not None and np.any(bias):
        raise CheckpointMismatchError(
            f"{sources['embedding.bias']!r} is nonzero but MatrixHead {head.name!r} has no bias (use_bias=False)."
        )
    return assignments


# ----------------------------------------------------------------------------- command line


def build_target_model(arch, target, checkpoint_state, image_size=224, num_rows=7, embed_dim=300):
    """The Keras model a checkpoint converts into, for `target` in TARGETS ("auto" decided here).

    Returns (model, target, skip_head).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown TResNet {arch!r}; expected one of {sorted(ARCHITECTURES)}.")
    weights, _ = tresnet.checkpoint_filter(checkpoint_state)
    if target == "auto":
        target = "sdl" if "embedding.weight" in weights else "backbone"
    if target == "sdl":
        # Imported here: the backbones load PyTorch checkpoints through this module.
        from sdl_keras.models import build_sdl_model

        if "embedding.weight" not in weights:
            raise ValueError("target 'sdl' needs a checkpoint with the SDL head 'embedding.weight'.")
        model = build_sdl_model(arch, num_rows=num_rows, embed_dim=embed_dim, image_size=image_size)
        return model, target, False
    shape = (image_size, image_size, 3)
    if target == "classifier":
        if "head.fc.weight" not in weights:
            raise ValueError("target 'classifier' needs a checkpoint with a classifier 'head.fc.weight'.")
        classes = weights["head.fc.weight"].shape[0]
        model = ARCHITECTURES[arch](input_shape=shape, classes=classes, classifier_activation=None)
        return model, target, False
    if target == "backbone":
        return ARCHITECTURES[arch](include_top=False, input_shape=shape, pooling="avg"), target, True
    raise ValueError(f"Unknown target {target!r}; expected one of {TARGETS}.")


def convert_checkpoint(checkpoint, output, arch="tresnet_m", target="auto", image_size=224, num_rows=7,
                       embed_dim=300, tags_output=None, allow_pickle=False):
    """Converts a PyTorch TResNet checkpoint file into a Keras `.weights.h5`; the library side of the CLI.

    Writes the tags of a ZS_SDL checkpoint, one per line, to `tags_output`
    (default: OUTPUT without `.weights.h5`, plus `.tags.txt`). Returns
    (target, ConversionInfo).
    """
    output = os.fspath(output)
    if not output.endswith(".weights.h5"):
        raise ValueError(f"Keras weights files end in .weights.h5; got --output={output!r}.")
    state, metadata = split_checkpoint(read_torch_checkpoint(checkpoint, allow_pickle), checkpoint)
    model, target, skip_head = build_target_model(arch, target, state, image_size, num_rows, embed_dim)
    info = load_torch_tresnet_weights(model, {"model": state, **metadata}, skip_head=skip_head)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    model.save_weights(output)
    if info.tags:
        tags_output = tags_output or output[: -len(".weights.h5")] + ".tags.txt"
        with open(tags_output, "w", encoding="utf-8") as f:
            f.writelines(f"{tag}\n" for tag in info.tags)
    return target, info


FLAGS = flags.FLAGS


def define_flags():
    flags.DEFINE_string("checkpoint", None, "PyTorch TResNet checkpoint: .safetensors, .pth or .pth.tar.")
    flags.DEFINE_string("output", None, "The Keras weights file to write (.weights.h5).")
    flags.DEFINE_enum("arch", "tresnet_m", sorted(ARCHITECTURES), "The TResNet the checkpoint holds.")
    flags.DEFINE_enum(
        "target", "auto", TARGETS,
        "What to write weights for: 'backbone' (the pooled-features TResNet that "
        "build_sdl_model(backbone_weights=) loads; drops the checkpoint's head), 'classifier' "
        "(TResNet with its head.fc), 'sdl' (the whole build_sdl_model model, from a ZS_SDL "
        "checkpoint), 'auto' ('sdl' when the checkpoint has embedding.weight, else 'backbone').",
    )
    flags.DEFINE_integer(
        "image_size", 224, "Input size of the model built for conversion (the weights do not depend on it)."
    )
    flags.DEFINE_integer("num_rows", 7, "M of the SDL head (target 'sdl').")
    flags.DEFINE_integer("embed_dim", 300, "d of the SDL head (target 'sdl').")
    flags.DEFINE_string("tags_output", None, "Where a ZS_SDL checkpoint's tags go (default OUTPUT.tags.txt).")
    flags.DEFINE_bool("allow_pickle", False, "Let torch unpickle arbitrary objects (trusted files only).")
    flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv):
    del argv
    target, info = convert_checkpoint(
        FLAGS.checkpoint, FLAGS.output, FLAGS.arch, FLAGS.target, FLAGS.image_size, FLAGS.num_rows,
        FLAGS.embed_dim, FLAGS.tags_output, FLAGS.allow_pickle,
    )
    logging.info(
        "Converted %d tensors of %s into %s weights %s (skipped %d: %s).", len(info.loaded), FLAGS.checkpoint,
        target, FLAGS.output, len(info.skipped), ", ".join(info.skipped[:5]),
    )
    if info.tags:
        logging.info("The checkpoint's %d tags were written beside the weights.", len(info.tags))


if __name__ == "__main__":
    define_flags()
    app.run(main)

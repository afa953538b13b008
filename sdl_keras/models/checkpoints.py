"""PyTorch TResNet checkpoints -> a Keras model: timm's, the original TResNet/ASL ones,
and the official ZS_SDL one with its SDL head.

Reads `.safetensors` (numpy only, no torch) and `.pth`/`.pth.tar` (torch), whether the
state dict is bare or under a "model"/"state_dict" key, in timm's current key layout or
the original one (`tresnet.checkpoint_filter`). The official ZS_SDL checkpoint
`{"model", "num_classes", "idx_to_class"}` holds the TResNet body (no prefix) and the
SDL head `embedding.weight` (M*d, F), whose flat output the official code views as
(d, M); it becomes this project's `MatrixHead` kernel for A (M, d), and its
`idx_to_class` the tag list. `sdl_keras.convert` writes the results to files.
"""

import dataclasses
import os
from collections.abc import Mapping

import keras
import numpy as np

from sdl_keras.layers import MatrixHead
from sdl_keras.models import torch_files, tresnet
from sdl_keras.models.tresnet import CheckpointMismatchError


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


def checkpoint_tags(metadata):
    """The tags of a ZS_SDL checkpoint's `idx_to_class`, in index order, or None."""
    idx_to_class = metadata.get("idx_to_class")
    if idx_to_class is None:
        return None
    if isinstance(idx_to_class, Mapping):
        # Index order; the official inference code relies on the dict's insertion order, the same.
        return [str(idx_to_class[i]) for i in sorted(idx_to_class, key=int)]
    return [str(t) for t in idx_to_class]


def find_matrix_head(model):
    """The MatrixHead of a model (searched through nested models), or None."""
    for layer in model.layers:
        if isinstance(layer, MatrixHead):
            return layer
        if isinstance(layer, keras.Model):
            found = find_matrix_head(layer)
            if found is not None:
                return found
    return None


def official_head_kernel(weight, num_rows, embed_dim):
    """ZS_SDL's Linear weight (M*d, F), whose output is viewed (d, M), -> MatrixHead kernel (F, M*d) for (M, d)."""
    features = weight.shape[1]
    return weight.reshape(embed_dim, num_rows, features).transpose(1, 0, 2).reshape(-1, features).T


def _official_head_bias(bias, num_rows, embed_dim):
    return bias.reshape(embed_dim, num_rows).T.reshape(-1)


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
    assignments = [(head.kernel, official_head_kernel(weight, rows, dim))]
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
        checkpoint = torch_files.read_torch_checkpoint(source, allow_pickle)
    state, metadata = torch_files.split_checkpoint(checkpoint, source)
    weights, sources = tresnet.checkpoint_filter(state)
    net = tresnet.find_tresnet(model)
    head = None if skip_head else find_matrix_head(model)
    assignments, head_keys = [], ()
    if head is not None:
        if "embedding.weight" not in weights:
            raise CheckpointMismatchError(
                f"{source} has no SDL head 'embedding.weight' for the model's MatrixHead {head.name!r}; "
                "pass skip_head=True to keep the MatrixHead as it is."
            )
        assignments += _matrix_head_assignments(head, weights, sources)
        head_keys = ("embedding.weight", "embedding.bias")
    assignments += tresnet.match_checkpoint(net, weights, sources, source, skip_head, other_keys=head_keys)
    for variable, value in assignments:
        variable.assign(np.asarray(value, dtype=variable.dtype))
    if skip_head:
        weights = {k: v for k, v in weights.items() if not k.startswith(tresnet.HEAD_PREFIXES)}
    loaded = {sources[k] for k in weights}
    return ConversionInfo(
        loaded=tuple(k for k in state if k in loaded),
        skipped=tuple(k for k in state if k not in loaded),
        tags=checkpoint_tags(metadata),
        num_classes=None if metadata.get("num_classes") is None else int(metadata["num_classes"]),
    )

"""Reading PyTorch checkpoint files as NumPy state dicts: `.safetensors` (no torch needed)
and torch's own `.pth`/`.pth.tar`/... pickles (torch, in its weights-only mode unless
the caller trusts the file). Knows nothing of any architecture."""

import os
from collections.abc import Mapping

import numpy as np

TORCH_CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar", ".bin", ".ckpt", ".safetensors")


def is_torch_checkpoint(path):
    return str(path).lower().endswith(TORCH_CHECKPOINT_SUFFIXES)


def to_numpy(value):
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
    if not is_torch_checkpoint(path):
        raise ValueError(
            f"Cannot tell the format of checkpoint {path!r}: expected one of "
            f"{', '.join(TORCH_CHECKPOINT_SUFFIXES)}."
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
        arrays[str(key)] = to_numpy(value)
    return arrays, metadata

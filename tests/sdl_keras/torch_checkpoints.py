"""Official-format PyTorch checkpoints for the tests, written independently of the
converter: timm's TResNet key layout turned into the original TResNet/ASL/ZS_SDL one
(InPlaceABN-style keys, the anti-aliased convs' `convN.0.0`/`convN.0.1` and their blur
filter buffers), and the ZS_SDL file `{"model", "num_classes", "idx_to_class"}` whose
model is the TResNet body (no prefix) + `embedding.weight`, as the official
`create_model` builds it."""

import re

import numpy as np
import torch


def to_original_layout(state, prefix, flip_signs=True):
    """timm layout -> the original TResNet/ASL/ZS_SDL layout, written independently of the converter.

    Convs that stride through an anti-alias layer are `convN.0.0`/`convN.0.1` (with the
    filter buffer `convN.1.op.filt`), others `convN.0`/`convN.1`; BatchNorms become
    InPlaceABNs whose weight w holds |w| + 1e-5 = the BatchNorm weight (random signs).
    """
    rng = np.random.default_rng(0)
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        match = re.fullmatch(r"body\.(.+)\.(conv|bn)\.(\w+)", key)
        if match is None:
            out[prefix + key.removeprefix("body.")] = value
            continue
        module, part, param = match.groups()
        anti_aliased = re.fullmatch(r"layer2\.0\.conv1|layer[34]\.0\.conv2", module)
        index = {"conv": 0, "bn": 1}[part]
        name = f"{module}.0.{index}" if anti_aliased else f"{module}.{index}"
        if part == "bn" and param == "weight":
            value = (value - 1e-5) * (rng.choice([-1.0, 1.0], value.shape) if flip_signs else 1.0)
            value = value.astype(np.float32)
        out[f"{prefix}{name}.{param}"] = value
        if anti_aliased and part == "conv":
            blur = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 16
            out[f"{prefix}{module}.1.op.filt"] = np.tile(blur, (value.shape[0], 1, 1, 1))
    return out


def to_torch(state):
    return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()}


def randomized(model, seed=0):
    """`model` (random kernels) with random BatchNorm parameters and statistics and biases too."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "gamma" in weight.path or "variance" in weight.path:
            weight.assign(rng.uniform(0.5, 1.5, weight.shape).astype("float32"))
        elif "beta" in weight.path or "mean" in weight.path or "bias" in weight.path:
            weight.assign(rng.uniform(-0.2, 0.2, weight.shape).astype("float32"))
    return model


def write_official_checkpoint(path, body_state, embedding, tags):
    """torch.save's an official ZS_SDL checkpoint: `body_state` in timm's layout (e.g.
    `tresnet_state_dict` of a Keras TResNet), `embedding` the head's (M*d, F) weight,
    `tags` its idx_to_class."""
    body = {k: v for k, v in to_original_layout(body_state, "", flip_signs=False).items() if not k.startswith("head.")}
    torch.save({"model": to_torch({**body, "embedding.weight": embedding}), "num_classes": len(tags),
                "idx_to_class": dict(enumerate(tags))}, path)

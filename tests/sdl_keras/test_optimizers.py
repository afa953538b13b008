"""The official recipe's optimization: the one-cycle schedule step by step against torch's
OneCycleLR, which variables get weight decay (decoupled and coupled), Adam's step against
torch's, and the augmentation each recipe applies.

torch (CPU) is a dev requirement (requirements-dev.txt)."""

import keras
import numpy as np
import pytest
import torch

from sdl_keras.config import TrainConfig
from sdl_keras.embeddings import TagVocabulary
from sdl_keras.layers import Augmentation, Cutout, MatrixHead, RandomResizedCrop
from sdl_keras.training import build_compiled_model, build_optimizer
from sdl_keras.optimizers import OneCycleSchedule, SDLAdam
from tests import testing


def numpy(value):
    return keras.ops.convert_to_numpy(value)


@pytest.mark.parametrize("total_steps, warmup_fraction", [(1000, 0.1), (137, 0.1), (50, 0.3), (7, 0.1)])
def test_one_cycle_matches_torch_step_by_step(total_steps, warmup_fraction):
    schedule = OneCycleSchedule(1e-4, total_steps, warmup_fraction)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=1e-4)
    torch_schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=1e-4, total_steps=total_steps, pct_start=warmup_fraction)
    steps = np.arange(total_steps)
    ours, momentum = numpy(schedule(steps)), numpy(schedule.momentum(steps))
    expected, expected_momentum = [], []
    for _ in steps:
        expected.append(optimizer.param_groups[0]["lr"])
        expected_momentum.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        torch_schedule.step()
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=0)
    np.testing.assert_allclose(momentum, expected_momentum, rtol=1e-9, atol=0)
    assert ours.dtype == np.float64 and ours.max() == pytest.approx(1e-4, rel=1e-2)


def small_model():
    """A kernel, a bias, BatchNorm's gamma and beta, and a MatrixHead kernel and bias."""
    inputs = keras.Input((4,))
    x = keras.layers.Dense(6, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="norm")(x)
    return keras.Model(inputs, MatrixHead(2, 3, use_bias=True, name="head")(x))


def one_step(optimizer, gradients):
    model = small_model()
    before = {v.path: numpy(v) for v in model.trainable_variables}
    optimizer.apply_gradients(zip([keras.ops.convert_to_tensor(gradients(v)) for v in model.trainable_variables],
                                  model.trainable_variables))
    return {v.path: (before[v.path], numpy(v)) for v in model.trainable_variables}


def test_weight_decay_reaches_kernels_only():
    """With zero gradients Adam moves nothing, so only weight decay changes a variable:
    the kernels (dense, head), never the bias, gamma, beta or the head's bias."""
    zero = lambda v: np.zeros(v.shape, "float32")  # noqa: E731
    for decoupled in (True, False):
        changed = one_step(SDLAdam(1e-2, weight_decay=0.1, decoupled_weight_decay=decoupled), zero)
        moved = sorted(path for path, (a, b) in changed.items() if not np.array_equal(a, b))
        assert moved == ["dense/kernel", "head/kernel"], (decoupled, moved)
        kernel_before, kernel_after = changed["dense/kernel"]
        if decoupled:  # AdamW: w <- w - lr * wd * w
            np.testing.assert_allclose(kernel_after, kernel_before * (1 - 1e-2 * 0.1), rtol=1e-6)
        else:  # L2 in the gradient g = wd * w, then Adam's first step (about lr * sign(w); less for tiny w)
            g, root = 0.1 * kernel_before.astype(np.float64), np.sqrt(1 - 0.999)
            first_step = 1e-2 * root * g / (root * np.abs(g) + 1e-8)
            np.testing.assert_allclose(kernel_after, kernel_before - first_step, rtol=0, atol=1e-6)
    config = TrainConfig.from_flat(weight_decay_mode="coupled", cycle_momentum=True)
    optimizer = build_optimizer(config, total_steps=10)
    assert isinstance(optimizer, SDLAdam) and not optimizer.decoupled_weight_decay and optimizer.cycle_momentum


@pytest.mark.parametrize("decoupled", [True, False])
def test_adam_steps_match_torch(decoupled):
    """Three steps of SDLAdam with a cycled beta_1 against torch's Adam (coupled L2) or
    AdamW (decoupled) under OneCycleLR, on one kernel."""
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4)).astype("float32")
    grads = [rng.standard_normal((3, 4)).astype("float32") for _ in range(3)]
    kernel = keras.Variable(start)
    optimizer = SDLAdam(OneCycleSchedule(1e-2, 20), weight_decay=0.05, decoupled_weight_decay=decoupled,
                        cycle_momentum=True)
    parameter = torch.nn.Parameter(torch.from_numpy(start.copy()))
    torch_optimizer = (torch.optim.AdamW if decoupled else torch.optim.Adam)([parameter], lr=1e-2, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(torch_optimizer, max_lr=1e-2, total_steps=20, pct_start=0.1)
    for grad in grads:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(grad), kernel)])
        parameter.grad = torch.from_numpy(grad.copy())
        torch_optimizer.step()
        schedule.step()
    np.testing.assert_allclose(numpy(kernel), parameter.detach().numpy(), rtol=1e-5, atol=1e-6)


def tiny_vocabulary():
    rng = np.random.default_rng(1)
    return TagVocabulary([f"t{i}" for i in range(6)], rng.standard_normal((6, 4)), unseen=[5])


def augmentation_of(recipe, **overrides):
    config = TrainConfig.from_flat(backbone="small_cnn", image_size=16, augment=True, augmentation=recipe, seed=3,
                                   **overrides)
    model = build_compiled_model(config, tiny_vocabulary(), max_positives=2, total_steps=4, jit_compile=False)
    return model.get_layer("augmentation")


def test_the_official_preset_applies_cutout_on_every_image_then_rand_augment():
    layer = augmentation_of("official")
    assert [type(stage) for stage in layer.stages] == [Cutout, keras.layers.RandAugment]  # no crop, no flip
    cutout = layer.stages[0]
    assert (cutout.rate, cutout.size, cutout.value_range) == (1.0, 0.5, (0, 255))
    # Every image gets one rectangle of a single random colour, half its side.
    images = np.full((16, 16, 16, 3), -1.0, "float32")
    filled = numpy(cutout(images, training=True))
    for image in filled:
        mask = (image != -1.0).all(axis=-1)
        rows, cols = np.nonzero(mask)
        assert mask.any() and len(np.unique(image[mask], axis=0)) == 1
        assert rows.max() - rows.min() + 1 <= 8 and cols.max() - cols.min() + 1 <= 8
    assert (filled != -1.0).any(axis=(1, 2, 3)).all()
    # Inference sees the image unchanged.
    np.testing.assert_array_equal(numpy(layer(images, training=False)), images)


def test_the_paper_text_recipe_and_none():
    layer = augmentation_of("crop_flip_cutout")
    assert [type(stage) for stage in layer.stages] == [RandomResizedCrop, keras.layers.RandomFlip, Cutout]
    assert layer.stages[-1].rate == 0.5
    assert augmentation_of("official", cutout_rate=0.25).stages[0].rate == 0.25
    model = build_compiled_model(TrainConfig.from_flat(backbone="small_cnn", image_size=16), tiny_vocabulary(), 2, 4,
                                 jit_compile=False)
    assert not [layer for layer in model.layers if isinstance(layer, Augmentation)]
    assert model.get_layer("matrix_head").bias is None  # the official bias-free head


if __name__ == "__main__":
    testing.run(__file__)

"""The compiled model of a run: the SDL model (or a baseline's trainer) with SDLLoss over
the seen tags, SDLMetrics, LossParts, and Adam (weight decay on kernels only) on a
one-cycle cosine schedule (sdl_keras.optimizers)."""

import contextlib

import keras

from sdl_keras import methods
from sdl_keras.layers import recipe_augmentation
from sdl_keras.losses import SDLLoss
from sdl_keras.metrics import LossParts, SDLMetrics
from sdl_keras.models import build_sdl_model
from sdl_keras.optimizers import OneCycleSchedule, SDLAdam


def resolve(config):
    """The config a run trains with: the fields its method fixes set (sdl_keras.methods),
    once, so config.json records how the run's matrices are scored."""
    return methods.resolve_config(config)


def learning_rate_schedule(optimizer_config, total_steps):
    """One-cycle cosine, as torch's OneCycleLR(pct_start=warmup_fraction): a cosine warm-up
    from lr/25 to the maximum lr, then a cosine down to lr/25/1e4."""
    return OneCycleSchedule(optimizer_config.learning_rate, total_steps, optimizer_config.warmup_fraction)


def build_optimizer(config, total_steps):
    """Adam with weight decay on kernels only (not biases or normalization parameters),
    decoupled or coupled (`weight_decay_mode`), beta_1 cycled with `cycle_momentum`; with
    `ema_momentum`, an exponential moving average of the weights, which replaces the
    weights when training ends (the official code leaves its EMA off); under float16,
    dynamic loss scaling."""
    settings = config.optimizer
    optimizer = SDLAdam(
        learning_rate=learning_rate_schedule(settings, total_steps),
        weight_decay=settings.weight_decay,
        decoupled_weight_decay=settings.weight_decay_mode == "decoupled",
        cycle_momentum=settings.cycle_momentum,
        use_ema=settings.ema_momentum is not None,
        ema_momentum=settings.ema_momentum or 0.99,
    )
    if config.runtime.precision == "mixed_float16":
        # float16 gradients underflow without it; bfloat16 has float32's exponent range.
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


@contextlib.contextmanager
def precision_policy(name):
    """Keras' global dtype policy set to `name` while layers are created, then restored
    (a layer keeps the policy it was created with)."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def augmentation_layers(config):
    """The layers in front of the model that augment training images: [] without --augment."""
    model_config = config.model
    if not model_config.augment:
        return []
    return [recipe_augmentation(model_config.augmentation, model_config.cutout_rate, config.runtime.seed)]


def build_compiled_model(config, vocabulary, max_positives, total_steps, jit_compile=None):
    """The SDL model compiled with SDLLoss over the seen tags, SDLMetrics and LossParts.

    `config` is resolved (`resolve`). The model computes in the run's precision; its
    output A (the MatrixHead is float32), the loss, the scores and the metrics are
    float32. Build it inside `strategy.scope()` to distribute it. `jit_compile` defaults
    to the config's. A baseline method gets its own trainer over the same backbone
    (sdl_keras.methods).
    """
    model_config, loss_config = config.model, config.loss
    jit_compile = config.runtime.jit_compile if jit_compile is None else jit_compile
    with precision_policy(config.runtime.precision):
        model = build_sdl_model(
            backbone=model_config.backbone,
            num_rows=model_config.num_rows,
            embed_dim=vocabulary.dim,
            image_size=config.data.image_size,
            backbone_weights=model_config.backbone_weights,
            augmentation=augmentation_layers(config),
            dropout=model_config.dropout,
            head_bias=model_config.head_bias,
        )
        if methods.has_trainer(model_config.method):
            optimizer = build_optimizer(config, total_steps)
            return methods.build_compiled_trainer(model, config, vocabulary, optimizer, jit_compile)
    loss = SDLLoss(
        vocabulary.seen_vectors,
        reg_weight=loss_config.reg_weight,
        diversity_weight=loss_config.diversity_weight,
        normalization=loss_config.normalization,
        aggregation=loss_config.aggregation,
        unknown_as_negative=loss_config.unknown_as_negative,
        max_positives=max_positives,
    )
    model.compile(
        optimizer=build_optimizer(config, total_steps),
        loss=loss,
        # The metrics score with the loss's tag vectors, saved once, with the loss.
        metrics=[SDLMetrics(loss, ks=config.evaluation.ks, aggregation=loss_config.aggregation, name="seen"),
                 LossParts(loss)],
        jit_compile=jit_compile,
    )
    return model

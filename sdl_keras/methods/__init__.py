"""The zero-shot tagging methods, selected by `TrainConfig.method` (`--method` of the train CLI).

Every method is trained by `sdl_keras.training.train`, evaluated by `evaluate_scores`
and exported by `sdl_keras.export` (sdl_keras.saved_model), because every method's saved model maps images to a
matrix A (B, M, d) scored as score(t) = aggregation over rows of A t:

  sdl               Semantic Diversity Learning, the paper's method.
  fast0tag          Fast0Tag (Zhang et al. 2016): one principal direction (M = 1), the rank
                    loss without diversity weight or regularization.
  l2                the paper's multi-direction ablation baseline: M directions scored by
                    ||A t||_2, no diversity weight, no regularization.
  conse             CONSE (Norouzi et al. 2013): a seen-tag classifier whose top-T tags'
                    vectors embed the image (sdl_keras/methods/conse.py). M = 1.
  semantic_softmax  Semantic Softmax (Ji et al.), adapted to multi-label
                    (sdl_keras/methods/semantic_softmax.py). M = 1.

A method fixes some TrainConfig fields (`Method.overrides`); `resolve_config` applies them,
so the run's config.json says how its matrices are scored.
"""

import dataclasses
import logging
from typing import Callable, Optional

from sdl_keras import config as run_config
from sdl_keras.methods import conse, semantic_softmax
from sdl_keras.methods.trainer import BaselineTrainer
from sdl_keras.metrics import SDLMetrics

logger = logging.getLogger(__name__)

_RANK_LOSS_ONLY = {"reg_weight": None, "diversity_weight": False}
# One principal direction, scored by its product with the tag (max over one row).
_ONE_DIRECTION = {"num_rows": 1, "aggregation": "max", **_RANK_LOSS_ONLY}


@dataclasses.dataclass(frozen=True)
class Method:
    """A zero-shot method: the TrainConfig fields it fixes, and the builder of its trainer
    (None: the SDL model trained with SDLLoss as the config sets it)."""

    description: str
    overrides: dict
    build: Optional[Callable] = None


METHODS = {
    "sdl": Method("Semantic Diversity Learning (Ben-Cohen et al. 2021)", {}),
    "fast0tag": Method("Fast0Tag (Zhang et al. 2016): M = 1, rank loss", _ONE_DIRECTION),
    "l2": Method("M directions scored by ||A t||, no SDW, no regularization", {"aggregation": "l2", **_RANK_LOSS_ONLY}),
    "conse": Method("CONSE (Norouzi et al. 2013)", _ONE_DIRECTION, conse.build_trainer),
    "semantic_softmax": Method(
        "Semantic Softmax (Ji et al.), multi-label", _ONE_DIRECTION, semantic_softmax.build_trainer
    ),
}


assert tuple(METHODS) == run_config.METHODS, "sdl_keras.config.METHODS names the methods registered here"


def get_method(name):
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; available: {sorted(METHODS)}.")
    return METHODS[name]


def resolve_config(config):
    """The config with the fields its method fixes set (logged where they change)."""
    overrides = get_method(config.model.method).overrides
    current = config.flat()
    changed = {k: v for k, v in overrides.items() if current[k] != v}
    if changed:
        settings = ", ".join(f"{k}={v} (was {current[k]})" for k, v in changed.items())
        logger.info("--method=%s sets %s.", config.model.method, settings)
    return config.replace(**overrides)


def has_trainer(method):
    return get_method(method).build is not None


def build_compiled_trainer(sdl_model, config, vocabulary, optimizer, jit_compile=None):
    """The compiled BaselineTrainer of a method that has one (`has_trainer`), built on the
    images and features of `sdl_model` (from `build_sdl_model`, whose MatrixHead it replaces).
    `config` is resolved (`resolve_config`)."""
    trainer = get_method(config.model.method).build(config, vocabulary, sdl_model)
    metrics = [SDLMetrics(vocabulary.seen_vectors, ks=config.evaluation.ks, aggregation=config.loss.aggregation,
                          name="seen")]
    trainer.compile(
        optimizer=optimizer, metrics=metrics,
        jit_compile=config.runtime.jit_compile if jit_compile is None else jit_compile,
    )
    return trainer


__all__ = ["METHODS", "Method", "BaselineTrainer", "build_compiled_trainer", "get_method", "has_trainer",
           "resolve_config"]

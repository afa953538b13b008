"""The names DESIGN.md's public API promises, importable where it says they are, and the
commands it lists, runnable with `python -m`."""

import importlib
import inspect

import pytest

from tests import testing

PUBLIC = {
    "sdl_keras.layers": ["MatrixHead"],
    "sdl_keras.scoring": ["tag_scores"],
    "sdl_keras.losses": ["SDLLoss"],
    "sdl_keras.metrics": ["SDLMetrics"],
    "sdl_keras.evaluation": ["evaluate_scores"],
    "sdl_keras.embeddings": ["load_tag_vectors", "TagVocabulary"],
    "sdl_keras.models": ["build_sdl_model"],
    "sdl_keras.models.tresnet": ["tresnet_m", "tresnet_l", "tresnet_xl", "TResNet"],
    "sdl_keras.convert": ["load_torch_tresnet_weights"],
    "sdl_keras.saving": ["load_model"],
    "sdl_keras.retrieval": ["RetrievalIndex", "MilvusIndex"],
}
COMMANDS = ["sdl_keras.train", "sdl_keras.evaluate", "sdl_keras.export", "sdl_keras.tag", "sdl_keras.convert",
            "sdl_keras.search", "sdl_keras.serving.server", "sdl_keras.serving.client"]


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names(module):
    imported = importlib.import_module(module)
    for name in PUBLIC[module]:
        assert callable(getattr(imported, name)), f"{module}.{name}"


def test_signatures_named_in_the_design():
    from sdl_keras.losses import SDLLoss
    from sdl_keras.models import build_sdl_model
    from sdl_keras.scoring import tag_scores

    assert list(inspect.signature(tag_scores).parameters)[:3] == ["A", "tag_vectors", "aggregation"]
    loss = inspect.signature(SDLLoss).parameters
    assert {"tag_vectors", "reg_weight", "diversity_weight", "normalization", "aggregation"} <= set(loss)
    model = inspect.signature(build_sdl_model).parameters
    assert list(model)[:4] == ["backbone", "num_rows", "embed_dim", "image_size"]


@pytest.mark.parametrize("module", COMMANDS)
def test_commands_run_with_python_m(module):
    spec = importlib.util.find_spec(module)
    assert spec is not None and callable(importlib.import_module(module).run), module


if __name__ == "__main__":
    testing.run(__file__)

"""RunDirectory owns a run's file names and reads it back, checking its files belong
together; importing it needs no TensorFlow (tests/sdl_keras/test_jax_backend.py runs it
where TensorFlow cannot be imported)."""

import numpy as np
import pytest

from sdl_keras import saving
from sdl_keras.config import TrainConfig
from sdl_keras.embeddings import TagVocabulary
from sdl_keras.models import build_sdl_model
from sdl_keras.run_dir import RunDirectory
from tests import testing


def write_run(path, image_size=16):
    run = RunDirectory(path)
    saving.save_model(build_sdl_model("small_cnn", num_rows=2, embed_dim=4, image_size=16), run.model_path)
    run.write_vocabulary(TagVocabulary(["a", "b", "c"], np.eye(3, 4), [2]))
    run.write_config(TrainConfig.from_flat(image_size=image_size, num_rows=2, crop="center"))
    return run


def test_a_complete_run_reads_back(tmp_path):
    run = write_run(tmp_path / "run")
    assert run.missing() == [] and run.name == "run"
    model, vocabulary, config = run.load()
    assert model.output_shape == (None, 2, 4) and vocabulary.unseen_tags == ["c"]
    assert run.decoding() == {"image_size": 16, "crop": "center", "decode_mode": "fast"}
    run.write_results({"model": {"zsl/mAP": 1.0}})
    assert run.results_path.endswith("results.json")


def test_missing_or_mismatched_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lacks model.keras, vocabulary.npz, config.json"):
        RunDirectory(tmp_path / "empty").load()
    run = write_run(tmp_path / "run", image_size=32)
    with pytest.raises(ValueError, match=r"config.json says image_size=32, but .*model.keras takes 16x16 images"):
        run.load()


if __name__ == "__main__":
    testing.run(__file__)

"""Saving and loading that cannot miss a class: every class `import sdl_keras` registers,
saved in this process and loaded in a fresh one; a compiled model's config stays small
(its tag vectors live in the weights file); a loaded model comes back compiled and `fit`
resumes from it."""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import sdl_keras  # noqa: F401  registers every serializable class
from sdl_keras import keras_compat, saving
from sdl_keras.embeddings import TagVocabulary
from sdl_keras.layers import Augmentation, CaffePreprocessing, Cutout, MatrixHead, RandomResizedCrop
from sdl_keras.losses import SDLLoss
from sdl_keras.methods.conse import ConSEEmbedding
from sdl_keras.methods.semantic_softmax import SemanticSoftmaxHead
from sdl_keras.metrics import LossParts, SDLMetrics
from sdl_keras.models.backbones import SavedModelLayer
from sdl_keras.models.tresnet import BlurPool2D, SpaceToDepth
from sdl_keras.optimizers import OneCycleSchedule, SDLAdam
from tests import testing

RNG = np.random.default_rng(0)


def _images(size=8):
    return RNG.integers(0, 256, (2, size, size, 3)).astype("float32")


def _layer_model(layer, input_shape):
    inputs = keras.Input(input_shape)
    return keras.Model(inputs, layer(inputs))


def _compiled_model(folder):
    """A model compiled as training compiles one: SDLLoss, and SDLMetrics and LossParts
    sharing its tag vectors."""
    vectors = RNG.standard_normal((6, 4)).astype("float32")
    model = _layer_model(MatrixHead(3, 4, name="head"), (5,))
    loss = SDLLoss(vectors, reg_weight=0.3, max_positives=3)
    optimizer = SDLAdam(OneCycleSchedule(1e-3, 20), weight_decay=1e-4, cycle_momentum=True)
    model.compile(optimizer=optimizer, loss=loss, metrics=[SDLMetrics(loss, ks=(1, 3)), LossParts(loss)])
    features = RNG.standard_normal((4, 5)).astype("float32")
    model.fit(features, (RNG.random((4, 6)) < 0.4).astype("float32"), epochs=1, verbose=0)
    return model, features


def _saved_model_backbone(folder):
    inner = _layer_model(keras.layers.Dense(3, name="dense"), (5,))
    path = os.path.join(folder, "inner_savedmodel")
    inner.export(path, verbose=False)
    return _layer_model(SavedModelLayer(path, call_endpoint="serve"), (5,)), RNG.standard_normal((2, 5)).astype("float32")


# One example model per registered class: a class registered without an example fails
# test_every_registered_class_has_an_example, so none is left out of the fresh-process load.
EXAMPLES = {
    "MatrixHead": lambda folder: (_layer_model(MatrixHead(2, 3), (5,)), RNG.standard_normal((2, 5)).astype("float32")),
    "SpaceToDepth": lambda folder: (_layer_model(SpaceToDepth(4), (8, 8, 3)), _images()),
    "BlurPool2D": lambda folder: (_layer_model(BlurPool2D(), (8, 8, 3)), _images()),
    "CaffePreprocessing": lambda folder: (_layer_model(CaffePreprocessing(), (8, 8, 3)), _images()),
    "Cutout": lambda folder: (_layer_model(Cutout(seed=1), (8, 8, 3)), _images()),
    "RandomResizedCrop": lambda folder: (_layer_model(RandomResizedCrop(seed=1), (8, 8, 3)), _images()),
    "Augmentation": lambda folder: (_layer_model(Augmentation(rand_augment=True, seed=1), (8, 8, 3)), _images()),
    "ConSEEmbedding": lambda folder: (
        _layer_model(ConSEEmbedding(RNG.standard_normal((4, 6)), top_t=2), (4,)),
        RNG.standard_normal((2, 4)).astype("float32"),
    ),
    "SemanticSoftmaxHead": lambda folder: (
        _layer_model(SemanticSoftmaxHead(6), (5,)), RNG.standard_normal((2, 5)).astype("float32")),
    "SavedModelLayer": _saved_model_backbone,
    "SDLLoss": _compiled_model,
    "SDLMetrics": _compiled_model,
    "LossParts": _compiled_model,
    "SDLAdam": _compiled_model,
    "OneCycleSchedule": _compiled_model,
}

FRESH_PROCESS = """
import json, sys
import numpy as np
from sdl_keras.saving import load_model
import keras
cases = json.load(open(sys.argv[1]))
for name, case in cases.items():
    # An external SavedModel backbone loads outside Keras' safe mode (sdl_keras.saving).
    model = load_model(case["model"], safe_mode=name != "SavedModelLayer")
    data = np.load(case["data"])
    np.testing.assert_allclose(np.asarray(model(data["inputs"])), data["outputs"], atol=1e-5, err_msg=name)
    if case["compiled"]:
        assert model.compiled and type(model.loss).__name__ == "SDLLoss", name
print("loaded", len(cases))
"""


def registered():
    return sorted(k.split(">", 1)[1] for k in keras.saving.get_custom_objects() if k.startswith("sdl_keras>"))


def test_every_registered_class_has_an_example():
    missing = sorted(set(registered()) - set(EXAMPLES))
    assert not missing, f"add an example model for {missing} to EXAMPLES in {__file__}"
    assert not sorted(set(EXAMPLES) - set(registered())), "an example names a class that is not registered"


def test_every_registered_class_loads_in_a_fresh_process(tmp_path):
    cases = {}
    for name in registered():
        model, inputs = EXAMPLES[name](str(tmp_path))
        path = str(tmp_path / f"{name}.keras")
        saving.save_model(model, path)
        np.savez(tmp_path / f"{name}.npz", inputs=inputs, outputs=np.asarray(model(inputs)))
        cases[name] = {"model": path, "data": str(tmp_path / f"{name}.npz"), "compiled": bool(model.compiled)}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "cases.json")], capture_output=True,
                          text=True, env=testing.python_env(), cwd=str(tmp_path), timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"loaded {len(cases)}" in done.stdout


def nus_sized_vocabulary():
    """1006 tags of 300 dimensions, 81 unseen: NUS-WIDE's shape (925 seen)."""
    return TagVocabulary([f"tag {i}" for i in range(1006)], RNG.standard_normal((1006, 300)), range(925, 1006))


def test_compiled_model_config_holds_no_tag_vectors(tmp_path):
    from sdl_keras.config import TrainConfig
    from sdl_keras.training import build_compiled_model

    config = TrainConfig.from_flat(backbone="small_cnn", image_size=32, num_rows=7, jit_compile=False)
    model = build_compiled_model(config, nus_sized_vocabulary(), max_positives=5, total_steps=10)
    path = str(tmp_path / "model.keras")
    saving.save_model(model, path)
    with zipfile.ZipFile(path) as archive:
        config_bytes = archive.getinfo("config.json").file_size
        weights_bytes = archive.getinfo("model.weights.h5").file_size
    # The 925 x 300 float32 seen vectors (1.1 MB) are in the weights, once.
    assert config_bytes < 0.5 * 2**20, config_bytes
    assert weights_bytes > 925 * 300 * 4
    restored = saving.load_model(path)
    np.testing.assert_array_equal(restored.loss.tag_vectors, model.loss.tag_vectors)
    metric = next(m for m in keras_compat.compiled_metrics(restored) if isinstance(m, SDLMetrics))
    assert metric.tag_vectors is restored.loss.tag_vectors


RESUME = """
import sys
import numpy as np
from sdl_keras.saving import load_model
model = load_model(sys.argv[1])
assert model.compiled, "the model came back uncompiled"
steps = int(model.optimizer.iterations.numpy())
rng = np.random.default_rng(1)
images = rng.integers(0, 256, (4, 16, 16, 3)).astype("float32")
labels = (rng.random((4, 3)) < 0.5).astype("float32")
labels[:, 0] = 1
history = model.fit(images, labels, epochs=1, batch_size=4, verbose=0)
assert int(model.optimizer.iterations.numpy()) == steps + 1
assert np.isfinite(history.history["loss"][0])
assert {"loss", "P@3", "mAP", "loss/rank"} <= set(history.history), sorted(history.history)
print("resumed at step", steps)
"""


def test_a_loaded_model_comes_back_compiled_and_fit_resumes(tmp_path):
    from sdl_keras.config import TrainConfig
    from sdl_keras.training import build_compiled_model

    vocabulary = TagVocabulary(["a b", "c d", "e f", "g h"], RNG.standard_normal((4, 8)), [3])
    config = TrainConfig.from_flat(backbone="small_cnn", image_size=16, num_rows=2, jit_compile=False)
    model = build_compiled_model(config, vocabulary, max_positives=2, total_steps=10)
    images = RNG.integers(0, 256, (4, 16, 16, 3)).astype("float32")
    model.fit(images, np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [1, 0, 1]], "float32"), epochs=2, verbose=0)
    saving.save_model(model, str(tmp_path / "model.keras"))
    done = subprocess.run([sys.executable, "-c", RESUME, str(tmp_path / "model.keras")], capture_output=True,
                          text=True, env=testing.python_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "resumed at step 2" in done.stdout


def test_a_loss_without_its_vectors_says_so():
    config = SDLLoss(np.eye(3, dtype="float32")).get_config()
    assert config["tag_vectors"] == {"shape": [3, 3]}
    bare = SDLLoss.from_config(config)
    with pytest.raises(ValueError, match="rebuilt from a config without its tag vectors"):
        bare(np.ones((1, 3), "float32"), np.ones((1, 2, 3), "float32"))
    with pytest.raises(ValueError, match="saved without its tag vectors"):
        SDLMetrics.from_config(SDLMetrics(np.eye(3)).get_config()).tag_vectors


def test_missing_model_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.keras"):
        saving.load_model(str(tmp_path / "nowhere.keras"))


if __name__ == "__main__":
    testing.run(__file__)

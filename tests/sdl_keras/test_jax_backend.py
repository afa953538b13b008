"""sdl_keras's core is keras.ops only and runs where TensorFlow cannot even be imported:
the loss (golden parity, under jax.jit), the head, scoring, metrics, evaluation and
`fit` on the JAX backend, and `import sdl_keras` with its models, losses, metrics, run
directories and saving.

The checks run in child processes with KERAS_BACKEND=jax (a process picks its Keras
backend once, at import) and `import tensorflow` blocked.
"""

import subprocess
import sys
import textwrap

from tests import testing

# Any `import tensorflow` in the child raises ImportError, as where it is not installed.
BLOCK_TENSORFLOW = textwrap.dedent(
    """
    import sys
    class NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "tensorflow":
                raise ModuleNotFoundError("No module named 'tensorflow' (blocked by the test)")
    sys.meta_path.insert(0, NoTensorFlow())
    """
)

CHECKS = BLOCK_TENSORFLOW + textwrap.dedent(
    """
    import glob, os, sys
    import jax, keras, numpy as np
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from sdl_keras.evaluation import evaluate_scores
    from sdl_keras.losses import SDLLoss, max_positives_needed
    from sdl_keras.metrics import SDLMetrics
    from sdl_keras.models import build_sdl_model
    from sdl_keras.scoring import tag_scores

    golden = sorted(glob.glob(os.path.join(sys.argv[1], "loss_*.npz")))
    assert golden, "no loss goldens in " + sys.argv[1]
    for path in golden:
        case = np.load(path)
        reg = float(case["weight"])
        loss = SDLLoss(case["word_vectors"], reg_weight=None if reg < 0 else reg,
                       max_positives=max_positives_needed(case["y"]))
        value, grad = jax.jit(jax.value_and_grad(lambda a: loss(case["y"], a)))(case["A"])
        np.testing.assert_allclose(float(value), case["loss"], rtol=1e-4)
        scale = np.abs(case["grad_A"]).max()
        np.testing.assert_allclose(np.asarray(grad) / scale, case["grad_A"] / scale, atol=1e-4)

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((6, 8)).astype("float32")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    model = build_sdl_model("small_cnn", num_rows=2, embed_dim=8, image_size=16)
    model.compile(optimizer="adam", loss=SDLLoss(vectors[:4], max_positives=2),
                  metrics=[SDLMetrics(vectors[:4], ks=(1,))], jit_compile=True)
    images = rng.integers(0, 256, (8, 16, 16, 3)).astype("float32")
    labels = np.eye(4, dtype="float32")[rng.integers(0, 4, 8)]
    logs = model.fit(images, labels, epochs=2, verbose=0).history
    assert np.isfinite(logs["loss"]).all() and "P@1" in logs, logs
    scores, rows = tag_scores(model.predict(images, verbose=0), vectors)
    full_labels = np.concatenate([labels, np.eye(2, dtype="float32")[rng.integers(0, 2, 8)]], axis=1)
    results = evaluate_scores(np.asarray(scores), full_labels, unseen=[4, 5], ks=(1, 3))
    assert 0 <= results["zsl/mAP"] <= 100 and results["gzsl/num_images"] == 8
    print("jax backend checks passed")
    """
)


WITHOUT_TENSORFLOW = BLOCK_TENSORFLOW + textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import sdl_keras
    import sdl_keras.evaluation, sdl_keras.layers, sdl_keras.losses, sdl_keras.methods, sdl_keras.metrics
    import sdl_keras.calibration, sdl_keras.models, sdl_keras.run_dir, sdl_keras.saving, sdl_keras.scoring
    import keras
    assert keras.backend.backend() == "jax"
    from sdl_keras.config import TrainConfig
    from sdl_keras.embeddings import TagVocabulary
    from sdl_keras.layers import Augmentation
    from sdl_keras.losses import SDLLoss
    from sdl_keras.metrics import LossParts, SDLMetrics
    from sdl_keras.models import build_sdl_model
    from sdl_keras.run_dir import RunDirectory

    folder = sys.argv[1]
    rng = np.random.default_rng(0)
    vocabulary = TagVocabulary(["a b", "c d", "e f", "g h"], rng.standard_normal((4, 8)), [3])
    model = build_sdl_model("tresnet_m", num_rows=2, embed_dim=8, image_size=32,
                            augmentation=[Augmentation(seed=0)])
    loss = SDLLoss(vocabulary.seen_vectors, max_positives=2)
    model.compile(optimizer="adam", loss=loss, metrics=[SDLMetrics(loss, ks=(1,)), LossParts(loss)])
    images = rng.integers(0, 256, (2, 32, 32, 3)).astype("float32")
    model.fit(images, np.array([[1, 0, 0], [0, 1, 1]], "float32"), verbose=0)
    run = RunDirectory(folder)
    sdl_keras.saving.save_model(model, run.model_path)
    run.write_vocabulary(vocabulary)
    run.write_config(TrainConfig.from_flat(image_size=32, num_rows=2))
    restored, vocab, config = run.load()
    np.testing.assert_allclose(np.asarray(restored(images)), np.asarray(model(images)), atol=1e-5)
    assert vocab.unseen_tags == ["g h"] and config.model.num_rows == 2
    assert "tensorflow" not in sys.modules
    print("sdl_keras ran without tensorflow")
    """
)


def run_child(script, *args):
    env = testing.python_env(KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_core_numerics_run_on_jax():
    assert "jax backend checks passed" in run_child(CHECKS, testing.shared_path("golden"))


def test_sdl_keras_imports_and_runs_where_tensorflow_cannot_be_imported(tmp_path):
    assert "sdl_keras ran without tensorflow" in run_child(WITHOUT_TENSORFLOW, str(tmp_path))


if __name__ == "__main__":
    testing.run(__file__)

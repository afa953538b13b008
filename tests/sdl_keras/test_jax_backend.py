"""sdl_keras's numerics are keras.ops only: the loss (golden parity, under jax.jit),
the head, scoring, metrics, evaluation and one `fit` step also run on the JAX backend.

The checks run in a child process with KERAS_BACKEND=jax, since a process picks its
Keras backend once, at import.
"""

import os
import subprocess
import sys
import textwrap

from tests import testing

CHECKS = textwrap.dedent(
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


def test_core_numerics_run_on_jax():
    golden = testing.shared_path("golden")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=testing.REPO_ROOT, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", CHECKS, golden], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "jax backend checks passed" in result.stdout


if __name__ == "__main__":
    testing.run(__file__)

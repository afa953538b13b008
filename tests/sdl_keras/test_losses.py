"""SDLLoss: parity with the official implementation's goldens, the paper normalization
against a plain per-image loop, and the edge cases training relies on."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from sdl_keras.losses import SDLLoss, fast0tag_loss, l2_baseline_loss, max_positives_needed
from tests import testing


def golden_cases():
    folder = os.path.join(testing.shared_dir(), "golden")
    return sorted(glob.glob(os.path.join(folder, "loss_*.npz"))) or ["<missing>"]


def loss_and_grad(loss, labels, A):
    A = tf.Variable(A)
    with tf.GradientTape() as tape:
        value = loss(labels, A)
    return float(value), tape.gradient(value, A).numpy()


@pytest.mark.parametrize("path", golden_cases(), ids=os.path.basename)
def test_matches_official_golden(path):
    if path == "<missing>":
        testing.shared_path("golden")
    case = np.load(path)
    reg = float(case["weight"])
    # The official code always applies the diversity weight, Fast0Tag case included.
    loss = SDLLoss(case["word_vectors"], reg_weight=None if reg < 0 else reg)
    value, grad = loss_and_grad(loss, case["y"], case["A"])
    np.testing.assert_allclose(value, case["loss"], rtol=1e-4)
    np.testing.assert_allclose(loss.terms(case["y"], case["A"])["loss"], case["per_sample_loss"], rtol=1e-4)
    scale = np.abs(case["grad_A"]).max()
    np.testing.assert_allclose(grad / scale, case["grad_A"] / scale, atol=1e-4)


def reference_loss(A, labels, T, reg, diversity, normalization, aggregation="max", unknown_negative=True):
    """The loss written as the paper states it: one image at a time, float64."""
    A, T = A.astype(np.float64), T.astype(np.float64)
    per_image = []
    for a, y in zip(A, labels):
        pos = np.nonzero(y == 1)[0]
        neg = np.nonzero(y != 1 if unknown_negative else y == 0)[0]
        if not pos.size:
            per_image.append(None)
            continue
        products = a @ T.T
        s = products.max(0) if aggregation == "max" else np.sqrt((products**2).sum(0))
        rank = sum(np.log1p(np.exp(s[n] - s[p])) for p in pos for n in neg)
        w = 1 + T[pos].var(0, ddof=1).sum() if diversity and pos.size > 1 else 1.0
        r = a.var(0, ddof=1).sum() if reg is not None and a.shape[0] > 1 else 0.0
        lam = reg or 0.0
        if normalization == "paper":
            lt = lam / len(neg)
            per_image.append((1 - lt) * w * rank / (len(pos) * len(neg)) + lt * r)
        elif reg is None:
            per_image.append(w * rank / len(pos))
        else:
            per_image.append(2 * ((1 - lam) * w * rank / len(pos) + lam * r))
    valid = [v for v in per_image if v is not None]
    return np.mean(valid) if valid else 0.0


def random_case(seed=0, batch=6, rows=3, dim=8, tags=12, unknown=True):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((batch, rows, dim)).astype(np.float32)
    T = rng.standard_normal((tags, dim)).astype(np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    labels = (rng.random((batch, tags)) < 0.25).astype(np.float32)
    if unknown:
        labels[rng.random((batch, tags)) < 0.15] = -1
    labels[0] = 0  # an image without positives
    labels[1, :4] = 1  # one with several
    return A, labels, T


@pytest.mark.parametrize("normalization", ["paper", "official"])
@pytest.mark.parametrize("reg", [None, 0.3])
@pytest.mark.parametrize("diversity", [True, False])
def test_matches_per_image_loop(normalization, reg, diversity):
    A, labels, T = random_case()
    loss = SDLLoss(T, reg_weight=reg, diversity_weight=diversity, normalization=normalization)
    expected = reference_loss(A, labels, T, reg, diversity, normalization)
    np.testing.assert_allclose(float(loss(labels, A)), expected, rtol=1e-5)


def test_baselines_are_configurations():
    A, labels, T = random_case(seed=1)
    np.testing.assert_allclose(
        float(fast0tag_loss(T)(labels, A[:, :1])),
        reference_loss(A[:, :1], labels, T, None, False, "official"),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        float(l2_baseline_loss(T)(labels, A)),
        reference_loss(A, labels, T, None, False, "official", aggregation="l2"),
        rtol=1e-5,
    )


def test_unknown_labels_can_be_ignored():
    A, labels, T = random_case(seed=2)
    loss = SDLLoss(T, unknown_as_negative=False)
    expected = reference_loss(A, labels, T, 0.3, True, "official", unknown_negative=False)
    np.testing.assert_allclose(float(loss(labels, A)), expected, rtol=1e-5)
    assert float(loss(labels, A)) != pytest.approx(float(SDLLoss(T)(labels, A)))


def test_images_without_positives_add_zero_never_nan():
    A, labels, T = random_case(seed=3)
    loss = SDLLoss(T)
    terms = loss.terms(labels, A)
    assert float(terms["loss"][0]) == 0.0
    # Adding positive-free images leaves the batch mean unchanged.
    padded_A = np.concatenate([A, A[:2]])
    padded_labels = np.concatenate([labels, np.zeros((2, labels.shape[1]), np.float32)])
    np.testing.assert_allclose(float(loss(padded_labels, padded_A)), float(loss(labels, A)), rtol=1e-6)
    value, grad = loss_and_grad(loss, np.zeros_like(labels), A)
    assert value == 0.0 and np.isfinite(grad).all()


def test_single_row_has_no_regularization():
    A, labels, T = random_case(seed=4, rows=1)
    terms = SDLLoss(T, reg_weight=0.3).terms(labels, A)
    assert np.all(np.asarray(terms["reg"]) == 0.0)


def test_static_bound_equals_dynamic_and_compiles_with_xla():
    A, labels, T = random_case(seed=5)
    bound = max_positives_needed(labels)
    dynamic = float(SDLLoss(T)(labels, A))
    static_loss = SDLLoss(T, max_positives=bound)
    compiled = tf.function(lambda y, a: static_loss(y, a), jit_compile=True)
    np.testing.assert_allclose(float(static_loss(labels, A)), dynamic, rtol=1e-6)
    np.testing.assert_allclose(float(compiled(labels, A)), dynamic, rtol=1e-5)


def test_positives_over_the_bound_are_an_error():
    A, labels, T = random_case(seed=6)
    needed = max_positives_needed(labels)
    with pytest.raises(ValueError, match=f"set max_positives >= {needed}"):
        SDLLoss(T, max_positives=2)(labels, A)


def test_config_round_trip_and_bad_arguments():
    _, _, T = random_case()
    loss = SDLLoss(T, reg_weight=None, diversity_weight=False, normalization="paper", aggregation="l2",
                   unknown_as_negative=False, max_positives=5, name="custom")
    clone = testing.check_config_round_trip(loss)
    assert clone.name == "custom" and clone.max_positives == 5
    assert keras.losses.get({"class_name": "sdl_keras>SDLLoss", "config": loss.get_config()}).aggregation == "l2"
    for bad in ({"normalization": "nope"}, {"aggregation": "mean"}, {"reg_weight": 2.0}, {"max_positives": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SDLLoss(T, **bad)


def test_labels_over_all_tags_with_seen_vectors_get_a_clear_error():
    """The slicing a user gets wrong: labels over the whole vocabulary given to a loss over
    the seen tags; the error says what to pass instead of a graph shape error."""
    A, labels, T = random_case()
    loss = SDLLoss(T[:9], max_positives=labels.shape[1])
    with pytest.raises(ValueError, match=r"12 tag columns but there are 9 tag vectors.*labels\[:, vocabulary.seen\]"):
        loss(labels, A)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3 * 8), keras.layers.Reshape((3, 8))])
    model.compile("sgd", loss=loss)
    with pytest.raises(ValueError, match="12 tag columns but there are 9 tag vectors"):
        model.fit(np.ones((6, 5), "float32"), labels, verbose=0)


if __name__ == "__main__":
    testing.run(__file__)

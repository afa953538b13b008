"""MatrixHead and tag_scores: the shape contract, the row layout, serialization."""

import keras
import numpy as np
import pytest
import torch

from sdl_keras.layers import MatrixHead
from sdl_keras.scoring import tag_scores
from tests import testing


def test_matrix_head_is_a_linear_map_viewed_as_rows():
    features = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    head = MatrixHead(3, 5, use_bias=True)
    A = keras.ops.convert_to_numpy(head(features))
    assert A.shape == (4, 3, 5)
    flat = features @ keras.ops.convert_to_numpy(head.kernel) + keras.ops.convert_to_numpy(head.bias)
    # Row-major (M, d): row m holds outputs m*d ... m*d + d - 1.
    np.testing.assert_allclose(A, flat.reshape(4, 3, 5), rtol=1e-6)


def test_default_head_is_the_official_bias_free_linear():
    """torch's Linear(F, M * d, bias=False): kaiming_uniform(a=sqrt(5)), U(-1/sqrt(F), 1/sqrt(F))."""
    head = MatrixHead(7, 300)
    head.build((None, 2048))
    kernel = keras.ops.convert_to_numpy(head.kernel)
    bound = 1 / np.sqrt(2048)
    assert head.bias is None and np.abs(kernel).max() <= bound
    assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.01)  # a uniform's std
    reference = torch.nn.Linear(2048, 2100, bias=False).weight.detach().numpy()
    assert kernel.std() == pytest.approx(reference.std(), rel=0.01) and np.abs(reference).max() <= bound


def test_matrix_head_serializes_saves_and_fits(tmp_path):
    head = MatrixHead(2, 4, use_bias=False, kernel_initializer="he_normal", kernel_regularizer="l2", name="head")
    clone = testing.check_config_round_trip(head)
    assert (clone.num_rows, clone.embed_dim, clone.use_bias) == (2, 4, False)
    inputs = keras.Input((6,))
    model = keras.Model(inputs, MatrixHead(2, 4)(inputs))
    x = np.random.default_rng(1).standard_normal((8, 6)).astype(np.float32)
    testing.check_keras_saving(model, x, tmp_path)
    testing.check_fit_step(model, x, np.zeros((8, 2, 4), np.float32), "mse")


def test_matrix_head_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_rows >= 1"):
        MatrixHead(0, 4)


def test_tag_scores_max_and_l2_with_dominant_rows():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((3, 4, 6)).astype(np.float32)
    T = rng.standard_normal((5, 6)).astype(np.float32)
    products = np.einsum("bmd,cd->bmc", A, T)
    scores, rows = tag_scores(A, T)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scores), products.max(1), rtol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(rows), products.argmax(1))
    scores, rows = tag_scores(A, T, aggregation="l2")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(scores), np.linalg.norm(products, axis=1), rtol=1e-5)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(rows), np.abs(products).argmax(1))
    with pytest.raises(ValueError, match="aggregation"):
        tag_scores(A, T, aggregation="mean")


if __name__ == "__main__":
    testing.run(__file__)

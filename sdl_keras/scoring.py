"""Tag scores from the matrix of principal directions (paper, equation 1)."""

from keras import ops

AGGREGATIONS = ("max", "l2")


def row_tag_products(A, tag_vectors):
    """(B, M, d) x (C, d) -> (B, M, C): every principal direction against every tag.

    One (B*M, d) x (d, C) matrix product, the form BLAS and XLA run fastest.
    """
    tag_vectors = ops.cast(tag_vectors, A.dtype)
    num_rows, dim = A.shape[1], A.shape[2]
    flat = ops.matmul(ops.reshape(A, (-1, dim)), ops.transpose(tag_vectors))
    return ops.reshape(flat, (-1, num_rows, ops.shape(tag_vectors)[0]))


def aggregate_rows(products, aggregation="max"):
    """Reduces (B, M, C) row-tag products to (scores (B, C), dominant rows (B, C) int32).

    "max" is SDL's score max_m (A t)_m (equation 1); "l2" is the ablation
    baseline ||A t||_2, whose dominant row is the one with the largest |(A t)_m|.
    """
    if aggregation == "max":
        scores = ops.max(products, axis=1)
        rows = ops.argmax(products, axis=1)
    elif aggregation == "l2":
        squared = ops.square(products)
        scores = ops.sqrt(ops.sum(squared, axis=1))
        rows = ops.argmax(squared, axis=1)
    else:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
    return scores, ops.cast(rows, "int32")


def tag_scores(A, tag_vectors, aggregation="max"):
    """Scores every tag for every image.

    Args:
        A: (B, M, d) principal directions per image.
        tag_vectors: (C, d) l2-normalized tag vectors, seen or unseen alike.
        aggregation: "max" (SDL) or "l2" (the multi-direction baseline).

    Returns:
        (scores, rows): scores (B, C) float, rows (B, C) int32, the index of the
        dominant principal direction for each tag.
    """
    return aggregate_rows(row_tag_products(A, tag_vectors), aggregation)

"""Tag scores from the matrix of principal directions (paper, equation 1)."""

from keras import ops

AGGREGATIONS = ("max", "l2")


def check_columns(owner, labels, A, tag_vectors):
    """Raises ValueError saying what to do when the labels' tag columns or A's width do not
    match the (C, d) tag vectors: a mismatch would otherwise surface as a graph shape error.
    Static shapes only (unknown dimensions pass)."""
    num_tags, dim = tag_vectors.shape[0], tag_vectors.shape[-1]
    width = labels.shape[-1] if len(labels.shape) else None
    if width is not None and num_tags is not None and width != num_tags:
        raise ValueError(
            f"{owner}: the labels have {width} tag columns but there are {num_tags} tag vectors. Labels must "
            f"follow the tag vectors' rows: to train on the seen tags, give SDLLoss(vocabulary.seen_vectors) the "
            f"labels' seen columns, labels[:, vocabulary.seen] (sdl_keras.training.seen_labels)."
        )
    if A.shape[-1] is not None and dim is not None and A.shape[-1] != dim:
        raise ValueError(f"{owner}: the matrices A have rows of {A.shape[-1]} values but the tag vectors {dim}.")


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

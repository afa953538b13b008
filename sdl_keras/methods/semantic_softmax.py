"""Semantic Softmax ("Semantic Softmax Loss for Zero-Shot Learning", Ji et al.), adapted to
multi-label tagging.

The class semantic descriptors (here the tag vectors t_c) sit inside the softmax layer:
    logits_c = f(x)^T W t_c,
with f(x) the visual feature (the backbone's pooled features) and W (F x d) learned, so
W t_c is the visual prototype of class c reconstructed from its descriptor. Training
minimizes softmax cross-entropy over the seen classes plus the L2 constraint between the
visual feature and the prototype of its class, ||f(x) - W t_y||^2. A new tag scores
through the same layer: zero-shot by construction.

Multi-label adaptation (the original is single-label):
- the softmax target spreads uniformly over an image's positive tags, q_c = 1/|P|, and
  the cross-entropy is -sum_c q_c log softmax(logits)_c over the seen tags (with
  `unknown_as_negative=False`, unannotated tags are left out of the softmax);
- the L2 constraint pulls f(x) to the prototype of the mean positive descriptor,
  W tbar with tbar = (1/|P|) sum_{c in P} t_c (= the mean of the positives' prototypes,
  W being linear), averaged over the F feature dimensions so that its weight does not
  depend on the backbone's width;
- images without a positive tag add nothing (as in SDLLoss).
Per image: loss = CE + l2_weight * ||f(x) - W tbar||^2 / F.

As a matrix: A = (W^T f(x))^T is one row of shape (B, 1, d), and max_m (A t)_m = A t =
f(x)^T W t is exactly the logit, so evaluation, export, serving and retrieval score
Semantic Softmax like SDL with M = 1.
"""

import keras
from keras import ops

from sdl_keras.methods.trainer import BaselineTrainer, image_features, label_masks


@keras.saving.register_keras_serializable(package="sdl_keras")
class SemanticSoftmaxHead(keras.layers.Layer):
    """Visual features -> A = f^T W, one row: the semantic softmax layer without its descriptors.

    Shape contract: features (B, F) -> A (B, 1, d); `prototypes(tag_vectors (C, d))` ->
    (C, F), the visual prototypes W t_c.

    Args:
        embed_dim: d, the tag-vector size.
        kernel_initializer: the initializer of W (F x d).
    """

    def __init__(self, embed_dim, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if int(embed_dim) < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}.")
        self.embed_dim = int(embed_dim)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"SemanticSoftmaxHead needs a known feature size, got input shape {input_shape}.")
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], self.embed_dim), initializer=self.kernel_initializer
        )

    def call(self, features):
        return ops.matmul(ops.cast(features, self.kernel.dtype), self.kernel)[:, None, :]

    def prototypes(self, tag_vectors):
        return ops.matmul(ops.cast(tag_vectors, self.kernel.dtype), ops.transpose(self.kernel))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.embed_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            embed_dim=self.embed_dim, kernel_initializer=keras.initializers.serialize(self.kernel_initializer)
        )
        return config


def semantic_softmax_loss(labels, matrix, features, kernel, seen_vectors, l2_weight, unknown_as_negative=True):
    """Per-image multi-label Semantic Softmax loss (module docstring) and the mask of images
    with a positive tag, both (B,).

    Args:
        labels: (B, S) in {1, 0, -1} over the seen tags.
        matrix: A (B, 1, d) = f^T W.
        features: f (B, F).
        kernel: W (F, d).
        seen_vectors: (S, d) tag vectors.
        l2_weight: the weight of the L2 constraint.
    """
    positives, negatives = label_masks(labels, unknown_as_negative)
    seen_vectors = ops.cast(seen_vectors, "float32")
    logits = ops.matmul(ops.cast(matrix[:, 0, :], "float32"), ops.transpose(seen_vectors))
    # Tags neither positive nor negative (unknown, when not counted as negatives) leave the softmax.
    logits = ops.where(positives + negatives > 0, logits, -1e9)
    num_positives = ops.sum(positives, axis=-1)
    targets = positives / ops.maximum(num_positives, 1.0)[:, None]
    cross_entropy = -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)
    mean_vector = ops.matmul(targets, seen_vectors)  # tbar (B, d)
    prototype = ops.matmul(mean_vector, ops.transpose(ops.cast(kernel, "float32")))  # W tbar (B, F)
    constraint = ops.mean(ops.square(ops.cast(features, "float32") - prototype), axis=-1)
    has_positive = ops.cast(num_positives > 0, "float32")
    return (cross_entropy + l2_weight * constraint) * has_positive, has_positive


class SemanticSoftmaxTrainer(BaselineTrainer):
    """Trains Semantic Softmax; training outputs "matrix" and "features"."""

    def __init__(self, training_outputs, head, seen_vectors, l2_weight, unknown_as_negative=True, **kwargs):
        super().__init__(training_outputs, **kwargs)
        self.head = head
        self.seen_vectors = seen_vectors
        self.l2_weight = float(l2_weight)
        self.unknown_as_negative = bool(unknown_as_negative)

    def per_image_loss(self, labels, outputs):
        return semantic_softmax_loss(
            labels, outputs["matrix"], outputs["features"], self.head.kernel, self.seen_vectors,
            self.l2_weight, self.unknown_as_negative,
        )


def build_trainer(config, vocabulary, sdl_model):
    """The Semantic Softmax trainer: `sdl_model`'s images and features, the semantic softmax layer on top."""
    images, features = image_features(sdl_model)
    head = SemanticSoftmaxHead(vocabulary.dim, dtype="float32", name="semantic_softmax_head")
    matrix = head(features)
    outputs = keras.Model(images, {"matrix": matrix, "features": features}, name="semantic_softmax")
    return SemanticSoftmaxTrainer(
        outputs, head, vocabulary.seen_vectors, config.model.semantic_softmax_l2, config.loss.unknown_as_negative,
        name="semantic_softmax",
    )

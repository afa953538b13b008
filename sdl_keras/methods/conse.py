"""CONSE (Norouzi et al. 2013, "Zero-Shot Learning by Convex Combination of Semantic Embeddings").

A classifier over the seen tags (sigmoid cross-entropy: a multi-label classifier where
the paper had a softmax over ImageNet classes) embeds an image as the convex combination
of its top-T seen tags' vectors, weighted by their probabilities:
    f(x) = (1 / Z) sum_{i <= T} p(y_i | x) t_{y_i},   Z = sum_{i <= T} p(y_i | x),
and every tag t, seen or unseen, scores cos(f(x), t).

As this project scores tags, the embedding is a one-row matrix A = f(x) / ||f(x)|| of
shape (B, 1, d): with l2-normalized tag vectors, max_m (A t)_m = A t = cos(f(x), t), so
evaluation, export, serving and retrieval treat CONSE exactly like SDL with M = 1.
"""

import keras
import numpy as np
from keras import ops

from sdl_keras.methods.trainer import BaselineTrainer, image_features, label_masks


@keras.saving.register_keras_serializable(package="sdl_keras")
class ConSEEmbedding(keras.layers.Layer):
    """Seen-tag logits -> the CONSE image embedding as a one-row matrix A.

    Shape contract: logits (B, S) over the S seen tags -> A (B, 1, d), l2-normalized,
    the probability-weighted mean of the top-T seen tag vectors.

    Saving: the seen tags' vectors are a non-trainable weight, saved with the model's
    weights; the JSON config records only their shape.

    Args:
        seen_vectors: (S, d) l2-normalized vectors of the seen tags, in the logits' order
            (from a saved config: {"shape": [S, d]}, filled when the weights load).
        top_t: T, the seen tags combined (10 in the paper); at most S.
    """

    def __init__(self, seen_vectors, top_t=10, **kwargs):
        super().__init__(**kwargs)
        values = None if isinstance(seen_vectors, dict) else np.asarray(seen_vectors, dtype="float32")
        shape = tuple(seen_vectors["shape"]) if values is None else values.shape
        if len(shape) != 2 or not shape[0]:
            raise ValueError(f"seen_vectors must be a non-empty (S, d) array, got shape {shape}.")
        if int(top_t) < 1:
            raise ValueError(f"top_t must be >= 1, got {top_t}.")
        self.top_t = int(top_t)
        self.seen_vectors = self.add_weight(
            name="seen_vectors",
            shape=shape,
            initializer="zeros" if values is None else keras.initializers.Constant(values),
            trainable=False,
            dtype="float32",
        )

    def call(self, logits):
        probabilities = ops.sigmoid(ops.cast(logits, "float32"))
        weights, top = ops.top_k(probabilities, min(self.top_t, self.seen_vectors.shape[0]))
        vectors = ops.take(self.seen_vectors, top, axis=0)  # (B, T, d)
        # 1/Z drops out under the normalization: cosine scores do not depend on it.
        embedding = ops.sum(weights[:, :, None] * vectors, axis=1)
        norm = ops.sqrt(ops.maximum(ops.sum(ops.square(embedding), axis=-1, keepdims=True), 1e-12))
        return (embedding / norm)[:, None, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, self.seen_vectors.shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(seen_vectors={"shape": list(self.seen_vectors.shape)}, top_t=self.top_t)
        return config


def conse_loss(labels, logits, unknown_as_negative=True):
    """Per-image sigmoid cross-entropy over the seen tags, averaged over the tags each
    image is labelled for; (B, S) labels in {1, 0, -1} and logits -> (B,)."""
    positives, negatives = label_masks(labels, unknown_as_negative)
    labelled = positives + negatives
    logits = ops.cast(logits, "float32")
    # log(1 + e^-z) for positives, log(1 + e^z) for negatives, without overflow.
    losses = positives * ops.softplus(-logits) + negatives * ops.softplus(logits)
    return ops.sum(losses, axis=-1) / ops.maximum(ops.sum(labelled, axis=-1), 1.0)


class ConSETrainer(BaselineTrainer):
    """Trains the seen-tag classifier of CONSE; training outputs "matrix" and "logits"."""

    def __init__(self, training_outputs, unknown_as_negative=True, **kwargs):
        super().__init__(training_outputs, **kwargs)
        self.unknown_as_negative = bool(unknown_as_negative)

    def per_image_loss(self, labels, outputs):
        losses = conse_loss(labels, outputs["logits"], self.unknown_as_negative)
        return losses, ops.ones_like(losses)


def build_trainer(config, vocabulary, sdl_model):
    """The CONSE trainer: `sdl_model`'s images and features, the seen-tag classifier on top."""
    images, features = image_features(sdl_model)
    seen_vectors = vocabulary.seen_vectors
    logits = keras.layers.Dense(len(seen_vectors), dtype="float32", name="seen_classifier")(features)
    matrix = ConSEEmbedding(seen_vectors, config.model.conse_top_t, name="conse_embedding")(logits)
    outputs = keras.Model(images, {"matrix": matrix, "logits": logits}, name="conse")
    return ConSETrainer(outputs, config.loss.unknown_as_negative, name="conse")

"""Training a baseline whose loss needs more than the matrix A, as a model that otherwise
behaves like the SDL model (predicts A, saves as images -> A)."""

import keras
from keras import ops

# The layer of `build_sdl_model` whose input is the (pooled, dropped-out) image features.
FEATURES_OF = "matrix_head"


def image_features(sdl_model):
    """The images input and the features tensor of an SDL model (`build_sdl_model`): a
    baseline replaces the MatrixHead and keeps the rest (augmentation, backbone, dropout)."""
    try:
        head = sdl_model.get_layer(FEATURES_OF)
    except ValueError:
        raise ValueError(f"{sdl_model.name} has no {FEATURES_OF!r} layer: not built by build_sdl_model.") from None
    return sdl_model.input, head.input


class BaselineTrainer(keras.Model):
    """A zero-shot baseline, trained with its own loss, scored like SDL.

    Shape contract: images (B, S, S, 3) -> A (B, M, d) when called for inference, and,
    in training (`training=True`), a dict {"matrix": A, ...} with what the method's
    loss needs (classifier logits, visual features). So `predict`, the training loop's
    zero-shot evaluation and the compiled SDLMetrics see A, and a tag scores
    max_m (A t)_m as for SDL. `save` writes `scoring_model()`, the plain functional
    model images -> A over the same layers: a run directory's model.keras, which
    evaluation, export, serving and retrieval load like an SDL model's. (The trainer
    itself, with its loss, is rebuilt from the run's config, not deserialized.)

    Subclasses implement `per_image_loss(labels, outputs) -> (losses (B,), counted (B,))`;
    the batch loss is sum(losses * counted) / sum(counted), plus layer losses.

    Args:
        training_outputs: the functional model images -> dict of outputs with "matrix".
    """

    def __init__(self, training_outputs, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(training_outputs.output, dict) or "matrix" not in training_outputs.output:
            raise ValueError("A BaselineTrainer's training outputs must be a dict holding the 'matrix' A.")
        self.training_outputs = training_outputs

    def call(self, images, training=False):
        outputs = self.training_outputs(images, training=training)
        return outputs if training else outputs["matrix"]

    def scoring_model(self):
        """images -> A, sharing this trainer's layers and weights."""
        return keras.Model(self.training_outputs.input, self.training_outputs.output["matrix"], name=self.name)

    def save(self, filepath, *args, **kwargs):
        """Saves `scoring_model()` (images -> A): what a run directory holds."""
        return self.scoring_model().save(filepath, *args, **kwargs)

    def per_image_loss(self, labels, outputs):
        raise NotImplementedError

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__} does not support sample weights.")
        # `evaluate` calls the model for inference (A only): recompute the loss's inputs.
        outputs = y_pred if isinstance(y_pred, dict) else self.training_outputs(x, training=False)
        losses, counted = self.per_image_loss(ops.cast(y, "float32"), outputs)
        loss = ops.sum(losses * counted) / ops.maximum(ops.sum(counted), 1.0)
        for extra in self.losses:
            loss = loss + ops.sum(ops.cast(extra, loss.dtype))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        matrix = y_pred["matrix"] if isinstance(y_pred, dict) else y_pred
        return super().compute_metrics(x, y, matrix, sample_weight)


def label_masks(labels, unknown_as_negative):
    """(positives, negatives) float masks of {1, 0, -1} labels; -1 is a negative only when
    `unknown_as_negative` (SDLLoss's convention)."""
    positives = ops.cast(ops.equal(labels, 1.0), "float32")
    if unknown_as_negative:
        return positives, 1.0 - positives
    return positives, ops.cast(ops.equal(labels, 0.0), "float32")

"""The Semantic Diversity Learning loss (paper, equations 2-5)."""

import warnings

import keras
import numpy as np
from keras import ops

from sdl_keras.scoring import AGGREGATIONS, check_columns, tag_scores

NORMALIZATIONS = ("official", "paper")


def max_positives_needed(labels):
    """The largest number of positive (== 1) labels of any one image: the bound P that loses nothing."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {labels.shape}.")
    return int((labels == 1).sum(axis=1).max(initial=0))


def _concrete_max(x):
    """max(x) as a Python number when x holds values (eager), None while tracing a graph."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(np.max(ops.convert_to_numpy(x)))
    except Exception:  # symbolic TF tensors and JAX tracers have no values yet
        return None


def _unbiased_variance_sum(x, axis, count):
    """sum over the last axis of the unbiased variance along `axis` (0 where count < 2)."""
    mean = ops.mean(x, axis=axis, keepdims=True)
    squares = ops.sum(ops.square(x - mean), axis=axis)
    return ops.sum(squares, axis=-1) / ops.maximum(count - 1.0, 1.0)


@keras.saving.register_keras_serializable(package="sdl_keras")
class SDLLoss(keras.losses.Loss):
    """Semantic Diversity Learning loss over a fixed set of (seen) tag vectors.

    Per image i with positives P (label 1) and negatives N (label 0, and -1 unless
    `unknown_as_negative=False`), scores s = `tag_scores(A, tag_vectors)`:
      rank_i = sum_{p, n} softplus(s_n - s_p)                       (equation 2)
      w_i    = 1 + sum_d unbiased var of the positives' tag vectors (equation 3)
      reg_i  = sum_d unbiased var of A's M rows                     (equation 4)
    "official" (the released code, which produced the paper's tables):
      loss_i = 2 ((1 - lam) w_i rank_i / |P| + lam reg_i), or w_i rank_i / |P| without reg.
    "paper" (equation 5): loss_i = (1 - lt) w_i rank_i / (|P||N|) + lt reg_i, lt = lam / |N|.
    The batch loss is the mean over images with at least one positive; an image
    without positives adds 0.

    Fast0Tag is `num_rows=1, diversity_weight=False, reg_weight=None`; the
    multi-direction ablation baseline is `aggregation="l2", diversity_weight=False,
    reg_weight=None`.

    Shape contract: y_true labels (B, C) in {1, 0, -1}; y_pred A (B, M, d); C and d
    match `tag_vectors` (C, d).

    The rank term gathers each image's positives into a static (B, P) set so the
    pairwise term is (B, P, C) (XLA-compilable). `max_positives=None` sizes P from
    the batch (exact, but a dynamic shape that XLA cannot compile); set it, e.g. to
    `max_positives_needed(train_labels)`, for `jit_compile=True`. An image with more
    positives than P raises an error when run eagerly; in graphs the input pipeline
    (`pipelines.files.check_positives_bound`) enforces the bound.

    Saving: the tag vectors are saved with the model's weights (`save_own_variables`),
    not in the JSON config, which records only their shape.

    Args:
        tag_vectors: (C, d) l2-normalized vectors of the tags the labels index (from a
            saved config: {"shape": [C, d]}, filled when the model's weights load).
        reg_weight: lam, the regularization weight; None disables regularization.
        diversity_weight: apply the semantic diversity weight w_i (else w_i = 1).
        normalization: "official" or "paper".
        aggregation: "max" (SDL) or "l2" (baseline); see `sdl_keras.scoring`.
        unknown_as_negative: count -1 (unannotated) labels as negatives (the
            official code does); if False they are ignored.
        max_positives: the static bound P, or None.
    """

    def __init__(
        self,
        tag_vectors,
        reg_weight=0.3,
        diversity_weight=True,
        normalization="official",
        aggregation="max",
        unknown_as_negative=True,
        max_positives=None,
        name="sdl_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        # A saved config holds only the shape; the values come with the weights.
        self._vectors_restored = not isinstance(tag_vectors, dict)
        if not self._vectors_restored:
            tag_vectors = np.zeros(tag_vectors["shape"], dtype="float32")
        tag_vectors = np.asarray(tag_vectors, dtype="float32")
        if tag_vectors.ndim != 2:
            raise ValueError(f"tag_vectors must be (C, d), got shape {tag_vectors.shape}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        if reg_weight is not None and not 0.0 <= float(reg_weight) <= 1.0:
            raise ValueError(f"reg_weight must be in [0, 1] or None, got {reg_weight}.")
        if max_positives is not None and int(max_positives) < 1:
            raise ValueError(f"max_positives must be >= 1 or None, got {max_positives}.")
        self.tag_vectors = tag_vectors
        self.reg_weight = None if reg_weight is None else float(reg_weight)
        self.diversity_weight = bool(diversity_weight)
        self.normalization = normalization
        self.aggregation = aggregation
        self.unknown_as_negative = bool(unknown_as_negative)
        self.max_positives = None if max_positives is None else int(max_positives)

    def _positive_slots(self, positives, num_positives):
        """Indices (B, P) of each image's positives and a (B, P) mask of the real ones."""
        num_tags = self.tag_vectors.shape[0]
        if self.max_positives is None:
            bound = ops.maximum(ops.cast(ops.max(num_positives), "int32"), 1)
        else:
            bound = min(self.max_positives, num_tags)
            overflow = _concrete_max(num_positives)
            if overflow is not None and overflow > bound:
                raise ValueError(
                    f"An image has {int(overflow)} positive tags but SDLLoss(max_positives={bound}) "
                    f"would drop the ones over the bound; set max_positives >= {int(overflow)}."
                )
        # top_k over the 0/1 mask puts the positives first; slots past |P_i| are masked out.
        slot_mask, slots = ops.top_k(positives, bound)
        return slots, slot_mask

    def check_restored(self):
        """Raises unless the tag vectors are real (not the placeholder of a bare config)."""
        if not self._vectors_restored:
            raise ValueError(
                f"{type(self).__name__} {self.name!r} was rebuilt from a config without its tag vectors, which are "
                "saved with the model's weights: load it with its model (sdl_keras.saving.load_model)."
            )

    def save_own_variables(self, store):
        store["tag_vectors"] = self.tag_vectors

    def load_own_variables(self, store):
        vectors = np.asarray(store["tag_vectors"], dtype="float32")
        if vectors.shape != self.tag_vectors.shape:
            raise ValueError(f"Saved tag vectors of shape {vectors.shape} for an SDLLoss of {self.tag_vectors.shape}.")
        self.tag_vectors = vectors
        self._vectors_restored = True

    def terms(self, y_true, y_pred):
        """The loss per image and its parts, each (B,): rank, weight, reg, has_positive, loss."""
        self.check_restored()
        labels = ops.cast(y_true, "float32")
        A = ops.cast(y_pred, "float32")
        check_columns(type(self).__name__, labels, A, self.tag_vectors)
        positives = ops.cast(ops.equal(labels, 1.0), "float32")
        if self.unknown_as_negative:
            negatives = 1.0 - positives
        else:
            negatives = ops.cast(ops.equal(labels, 0.0), "float32")
        num_pos = ops.sum(positives, axis=-1)
        num_neg = ops.sum(negatives, axis=-1)
        has_positive = ops.cast(num_pos > 0, "float32")
        vectors = ops.convert_to_tensor(self.tag_vectors)

        scores, _ = tag_scores(A, vectors, self.aggregation)
        slots, slot_mask = self._positive_slots(positives, num_pos)
        positive_scores = ops.take_along_axis(scores, slots, axis=1)
        # Equation 2: every (positive, negative) pair, as a (B, P, C) tensor.
        margins = ops.softplus(scores[:, None, :] - positive_scores[:, :, None])
        pair_mask = slot_mask[:, :, None] * negatives[:, None, :]
        rank = ops.sum(margins * pair_mask, axis=(1, 2))

        if self.diversity_weight:
            # Equation 3 over the gathered positives: (B, P, d), where P holds all of them.
            positive_vectors = ops.take(vectors, slots, axis=0) * slot_mask[:, :, None]
            n = num_pos[:, None]
            mean = ops.sum(positive_vectors, axis=1) / ops.maximum(n, 1.0)
            deviations = (positive_vectors - mean[:, None, :]) * slot_mask[:, :, None]
            variance = ops.sum(ops.square(deviations), axis=1) / ops.maximum(n - 1.0, 1.0)
            weight = 1.0 + ops.where(num_pos >= 2, ops.sum(variance, axis=-1), 0.0)
        else:
            weight = ops.ones_like(num_pos)

        num_rows = A.shape[1]
        if self.reg_weight is None or num_rows == 1:
            reg = ops.zeros_like(num_pos)
        else:
            # Equation 4: variance across the M rows, per word-vector dimension.
            reg = _unbiased_variance_sum(A, axis=1, count=float(num_rows))

        safe_pos = ops.maximum(num_pos, 1.0)
        lam = 0.0 if self.reg_weight is None else self.reg_weight
        if self.normalization == "official":
            weighted_rank = weight * rank / safe_pos
            if self.reg_weight is None:
                loss = weighted_rank
            else:
                loss = 2.0 * ((1.0 - lam) * weighted_rank + lam * reg)
        else:
            safe_neg = ops.maximum(num_neg, 1.0)
            # Equation 5 with lambda~ = lambda / |N| (Sec. 3.3).
            lam_tilde = lam / safe_neg
            loss = (1.0 - lam_tilde) * weight * rank / (safe_pos * safe_neg) + lam_tilde * reg
        loss = loss * has_positive
        return {
            "rank": rank,
            "weight": weight,
            "reg": reg,
            "has_positive": has_positive,
            "loss": loss,
        }

    def call(self, y_true, y_pred):
        """Per-image losses scaled so that Keras' mean over the batch is the mean over
        images with a positive (B / count); images without positives are 0."""
        terms = self.terms(y_true, y_pred)
        loss, has_positive = terms["loss"], terms["has_positive"]
        batch = ops.cast(ops.shape(has_positive)[0], "float32")
        return loss * batch / ops.maximum(ops.sum(has_positive), 1.0)

    def get_config(self):
        config = super().get_config()
        config.update(
            tag_vectors={"shape": list(self.tag_vectors.shape)},
            reg_weight=self.reg_weight,
            diversity_weight=self.diversity_weight,
            normalization=self.normalization,
            aggregation=self.aggregation,
            unknown_as_negative=self.unknown_as_negative,
            max_positives=self.max_positives,
        )
        return config


def fast0tag_loss(tag_vectors, **kwargs):
    """Fast0Tag (Zhang et al. 2016) as an SDLLoss configuration: use with a 1-row MatrixHead."""
    return SDLLoss(tag_vectors, reg_weight=None, diversity_weight=False, **kwargs)


def l2_baseline_loss(tag_vectors, **kwargs):
    """The paper's M-direction ablation baseline: l2 aggregation, no SDW, no regularization."""
    return SDLLoss(tag_vectors, reg_weight=None, diversity_weight=False, aggregation="l2", **kwargs)



"""Metrics for `model.compile(metrics=[...])`: streaming ZSL/GZSL tagging and retrieval
figures (`SDLMetrics`), and the parts of the SDL loss (`LossParts`)."""

import keras
import numpy as np
from keras import ops

from sdl_keras.evaluation import check_empty_tags
from sdl_keras.losses import SDLLoss
from sdl_keras.scoring import AGGREGATIONS, check_columns, tag_scores


def binned_average_precision(positive_hist, negative_hist):
    """Per-tag AP from score histograms (C, bins), bins ordered by increasing score.

    Scores that share a bin count as tied, pessimistically: a positive ranks below
    everything in its bin, as `evaluation.average_precisions` treats exact ties.
    """
    pos_desc = ops.flip(positive_hist, axis=-1)
    all_desc = pos_desc + ops.flip(negative_hist, axis=-1)
    precision = ops.cumsum(pos_desc, axis=-1) / ops.maximum(ops.cumsum(all_desc, axis=-1), 1.0)
    total = ops.sum(pos_desc, axis=-1)
    ap = ops.sum(pos_desc * precision, axis=-1) / ops.maximum(total, 1.0)
    return ap, total > 0


@keras.saving.register_keras_serializable(package="sdl_keras")
class SDLMetrics(keras.metrics.Metric):
    """P/R/F1@K (exact, streaming) and mAP (binned) of SDL scores, for ZSL and GZSL.

    Scores are `tag_scores(A, tag_vectors, aggregation)`; the subsets follow
    `sdl_keras.evaluation`: GZSL uses every tag and the images with a positive,
    ZSL the `unseen` tags and the images with an unseen positive. ZSL figures
    are reported only when `unseen` is non-empty. Results are percentages under
    the keys "gzsl/P@K", "gzsl/R@K", "gzsl/F1@K", "gzsl/mAP" and "zsl/..."; with no
    unseen tags (training on seen tags) simply "P@K", "R@K", "F1@K", "mAP".

    P/R/F1@K are exact: they only need running counts of hits, images and
    positives. mAP is an approximation: each tag keeps a histogram of its
    positives' and negatives' scores over `num_bins` bins of
    sigmoid(score / score_scale), and AP is computed from the histogram with
    in-bin ties. For exact mAP, use `evaluation.evaluate_scores` on collected
    scores (the evaluation callback does). The error is measured in
    tests/sdl_keras/test_metrics.py (typically under 0.5 points with 1000 bins).
    As in `evaluate_scores`, mAP averages over every tag of a task, a tag without a
    positive image counting 0 (the official evaluation), unless `empty_tags="skip"`.
    The states are sums, so replicas under tf.distribute merge exactly.

    Shape contract: y_true labels (B, C) in {1, 0, -1}; y_pred A (B, M, d);
    `tag_vectors` (C, d).

    Saving: Keras saves no metric state, so pass the model's `SDLLoss` as `tag_vectors`:
    the metric then scores with the loss's vectors, which are saved once, with the loss,
    and a reloaded model's metric and loss share them again. A metric given an array
    saves only its shape; reloaded, it asks for its vectors when first used.

    Args:
        tag_vectors: (C, d) vectors of the tags the labels index, or an `SDLLoss` whose
            tag vectors these are.
        unseen: indices of the unseen tags among them.
        ks: the K of P/R/F1@K.
        aggregation: "max" or "l2" (see `sdl_keras.scoring`).
        num_bins: histogram bins per tag for mAP.
        score_scale: the temperature of the sigmoid that maps scores to bins.
        empty_tags: "zero" (a tag without a positive counts AP 0) or "skip" (left out).
    """

    def __init__(
        self,
        tag_vectors,
        unseen=(),
        ks=(3, 5),
        aggregation="max",
        num_bins=1000,
        score_scale=1.0,
        empty_tags="zero",
        name="sdl_metrics",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if isinstance(tag_vectors, dict) and "class_name" in tag_vectors:
            tag_vectors = keras.saving.deserialize_keras_object(tag_vectors)
        self._loss = tag_vectors if isinstance(tag_vectors, SDLLoss) else None
        if self._loss is None:
            # An array, or from a saved config {"shape": [C, d]} (see Saving).
            self._vectors = None if isinstance(tag_vectors, dict) else np.asarray(tag_vectors, dtype="float32")
            shape = tuple(tag_vectors["shape"]) if self._vectors is None else self._vectors.shape
        else:
            shape = self._loss.tag_vectors.shape
        if len(shape) != 2:
            raise ValueError(f"tag_vectors must be (C, d), got shape {shape}.")
        self._shape = tuple(int(n) for n in shape)
        num_tags = self._shape[0]
        self.unseen = tuple(sorted(int(i) for i in unseen))
        bad = [i for i in self.unseen if not 0 <= i < num_tags]
        if bad:
            raise ValueError(f"unseen indices out of range for {num_tags} tags: {bad}")
        self.ks = tuple(int(k) for k in ks)
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got {ks}.")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}.")
        self.aggregation = aggregation
        self.num_bins = int(num_bins)
        self.score_scale = float(score_scale)
        self.empty_tags = check_empty_tags(empty_tags)
        # Without unseen tags there is one task, reported without a prefix.
        self.tasks = {"gzsl/" if self.unseen else "": num_tags}
        if self.unseen:
            self.tasks["zsl/"] = len(self.unseen)
        self._counts = {}
        for task, width in self.tasks.items():
            zeros = lambda shape, name: self.add_variable(  # noqa: E731
                shape=shape, initializer="zeros", dtype="float32", name=f"{task.strip('/') or 'all'}_{name}"
            )
            self._counts[task] = {
                "hits": zeros((len(self.ks),), "hits"),
                "images": zeros((), "images"),
                "positives": zeros((), "positives"),
                "positive_hist": zeros((width, self.num_bins), "positive_hist"),
                "negative_hist": zeros((width, self.num_bins), "negative_hist"),
            }

    @property
    def tag_vectors(self):
        """The (C, d) vectors scored: the loss's when given one."""
        if self._loss is not None:
            self._loss.check_restored()
            return self._loss.tag_vectors
        if self._vectors is None:
            raise ValueError(
                f"SDLMetrics {self.name!r} was saved without its tag vectors (it was given an array): compile "
                "with SDLMetrics(loss, ...) to save them with the loss, or build the metric again with its vectors."
            )
        return self._vectors

    def _histogram(self, bins, weights, width):
        offsets = ops.arange(width, dtype="int32")[None, :] * self.num_bins
        flat = ops.segment_sum(
            ops.reshape(weights, (-1,)),
            ops.reshape(bins + offsets, (-1,)),
            num_segments=width * self.num_bins,
        )
        return ops.reshape(flat, (width, self.num_bins))

    def _update_task(self, counts, scores, labels):
        positives = ops.cast(ops.equal(labels, 1.0), "float32")
        negatives = ops.cast(ops.equal(labels, 0.0), "float32")
        image = ops.cast(ops.sum(positives, axis=-1) > 0, "float32")
        k_max = min(max(self.ks), scores.shape[-1])
        _, top = ops.top_k(scores, k_max)
        hits = ops.take_along_axis(positives, top, axis=-1) * image[:, None]
        counts["hits"].assign_add(ops.stack([ops.sum(hits[:, : min(k, k_max)]) for k in self.ks]))
        counts["images"].assign_add(ops.sum(image))
        counts["positives"].assign_add(ops.sum(positives))
        unit = ops.sigmoid(scores / self.score_scale)
        bins = ops.clip(ops.cast(ops.floor(unit * self.num_bins), "int32"), 0, self.num_bins - 1)
        width = scores.shape[-1]
        counts["positive_hist"].assign_add(self._histogram(bins, positives * image[:, None], width))
        counts["negative_hist"].assign_add(self._histogram(bins, negatives * image[:, None], width))

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("SDLMetrics does not support sample_weight: counts are per image and tag.")
        labels = ops.cast(y_true, "float32")
        check_columns(type(self).__name__, labels, y_pred, self.tag_vectors)
        scores, _ = tag_scores(ops.cast(y_pred, "float32"), self.tag_vectors, self.aggregation)
        self._update_task(self._counts["gzsl/" if self.unseen else ""], scores, labels)
        if self.unseen:
            unseen = ops.convert_to_tensor(np.array(self.unseen, dtype="int32"))
            self._update_task(
                self._counts["zsl/"], ops.take(scores, unseen, axis=1), ops.take(labels, unseen, axis=1)
            )

    def result(self):
        results = {}
        for task, counts in self._counts.items():
            for i, k in enumerate(self.ks):
                tp = counts["hits"][i]
                precision = tp / ops.maximum(counts["images"] * k, 1.0)
                recall = tp / ops.maximum(counts["positives"], 1.0)
                f1 = 2.0 * precision * recall / ops.maximum(precision + recall, 1e-12)
                results[f"{task}P@{k}"] = 100.0 * precision
                results[f"{task}R@{k}"] = 100.0 * recall
                results[f"{task}F1@{k}"] = 100.0 * f1
            ap, valid = binned_average_precision(counts["positive_hist"], counts["negative_hist"])
            if self.empty_tags == "zero":  # an empty tag's AP is 0 already; every tag counts
                valid = ops.ones_like(ap)
            valid = ops.cast(valid, "float32")
            results[f"{task}mAP"] = 100.0 * ops.sum(ap * valid) / ops.maximum(ops.sum(valid), 1.0)
        return results

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(
            tag_vectors=(
                keras.saving.serialize_keras_object(self._loss) if self._loss is not None
                else {"shape": list(self._shape)}
            ),
            unseen=list(self.unseen),
            ks=list(self.ks),
            aggregation=self.aggregation,
            num_bins=self.num_bins,
            score_scale=self.score_scale,
            empty_tags=self.empty_tags,
        )
        return config


@keras.saving.register_keras_serializable(package="sdl_keras")
class LossParts(keras.metrics.Metric):
    """The parts of an `SDLLoss` (see `SDLLoss.terms`), averaged over the epoch's images:
    "loss/rank", the pairwise rank term rank_i of equation 2 (a sum over the image's
    (positive, negative) pairs); "loss/diversity_weight", the semantic diversity weight
    w_i of equation 3; both over the images with a positive, as the loss averages; and
    "loss/reg", the row-variance term of equation 4, over all images. The states are
    sums, so replicas under tf.distribute merge exactly.

    Shape contract: y_true labels (B, C) over the loss's tags; y_pred A (B, M, d).

    Args:
        loss: the SDLLoss the model trains with.
    """

    def __init__(self, loss, name="loss_parts", **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not hasattr(loss, "terms"):
            raise TypeError(f"LossParts needs a loss with terms() (SDLLoss), got {type(loss).__name__}.")
        self.loss = loss
        zero = lambda name: self.add_variable(shape=(), initializer="zeros", dtype="float32", name=name)  # noqa: E731
        self.sums = {part: zero(part) for part in ("rank", "weight", "reg", "with_positive", "images")}

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("LossParts does not support sample_weight.")
        terms = self.loss.terms(y_true, y_pred)
        has_positive = terms["has_positive"]
        self.sums["rank"].assign_add(ops.sum(terms["rank"] * has_positive))
        self.sums["weight"].assign_add(ops.sum(terms["weight"] * has_positive))
        self.sums["reg"].assign_add(ops.sum(terms["reg"]))
        self.sums["with_positive"].assign_add(ops.sum(has_positive))
        self.sums["images"].assign_add(ops.cast(ops.shape(has_positive)[0], "float32"))

    def result(self):
        with_positive = ops.maximum(self.sums["with_positive"], 1.0)
        return {
            "loss/rank": self.sums["rank"] / with_positive,
            "loss/diversity_weight": self.sums["weight"] / with_positive,
            "loss/reg": self.sums["reg"] / ops.maximum(self.sums["images"], 1.0),
        }

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))

    def get_config(self):
        config = super().get_config()
        config["loss"] = keras.saving.serialize_keras_object(self.loss)
        return config

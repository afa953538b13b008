"""Calibrated probabilities and decision thresholds for SDL scores (NumPy only).

SDL's scores are dot products `max_m (A t)_m` on a scale of their own: top-K is all they
give. A `Calibration` turns them into probabilities that a tag applies, fitted on held-out
labelled images (a validation split carved from the training data, never the test set),
and holds the thresholds that turn probabilities into "this tag applies":

- Seen tags: one monotone map per tag from score to probability: Platt scaling
  `sigmoid(a s + b)` with a > 0 (the default), temperature only `sigmoid(s / T)`, or
  isotonic regression (pool adjacent violators, stored as a piecewise-linear curve on a
  uniform grid). A tag with fewer than `min_positives` positives, or whose own fit does
  not increase with the score, uses the shared map: the same method fitted on every
  seen (image, tag) pair pooled.
- Unseen tags have no labels: one map shared by all of them, fitted on the seen tags'
  pairs, that transfers to tags never trained on. Pooled by raw score (`"score"`: the
  shared map) or by the tag's rank among the vocabulary's tags in the same image
  (`"rank"`: a map of -log(rank), rank 1 the image's best tag). Which transfers better
  is measured on the demo's held-out unseen tags by benchmarks/calibration.py.
- Thresholds: per seen tag, the probability threshold with the best F1 on the
  validation split (the shared threshold for tags with few positives); for the unseen
  tags one threshold, the best pooled F1 of the seen pairs through the unseen map; the
  one threshold with the best pooled F1 over all seen pairs (`shared_threshold`, the
  baseline the tuned ones are measured against); and an optional user-set probability.

Every map is monotone non-decreasing in the score for each tag (the rank map, in the
score within an image). `probabilities` is the reference implementation: the SavedModel
export (sdl_keras.saved_model) computes the same functions as graph ops.
"""

import dataclasses
import json
from typing import Optional

import numpy as np

from sdl_keras.atomic import read_json

FORMAT = "sdl_keras.calibration/1"
METHODS = ("platt", "temperature", "isotonic")
UNSEEN_POOLINGS = ("score", "rank")
# Points of the uniform grid an isotonic curve is stored on (per tag).
GRID_POINTS = 64
# The smallest slope a logistic map keeps: monotone increasing in the score.
MIN_SLOPE = 1e-6


def sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


# -- fitting one map ---------------------------------------------------------------------------
def fit_logistic(x, y, fit_bias=True, iterations=100):
    """(slope, bias) of p = sigmoid(slope x + bias) by Newton's method on the log-loss, with
    Platt's smoothed targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2) (Platt 1999), which keep
    the fit finite when the classes separate. The slope is kept >= MIN_SLOPE (the map
    increases with x); without `fit_bias` the bias is 0 (temperature scaling)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y) == 1
    positives = y.sum()
    targets = np.where(y, (positives + 1) / (positives + 2), 1 / (len(y) - positives + 2))
    features = np.stack([x, np.ones_like(x)], axis=1) if fit_bias else x[:, None]
    theta = np.zeros(features.shape[1])
    theta[0] = 1.0 / max(np.std(x), 1e-6)

    def loss(t):
        z = features @ t
        return np.sum(np.logaddexp(0.0, z) - targets * z)

    current = loss(theta)
    for _ in range(iterations):
        p = sigmoid(features @ theta)
        gradient = features.T @ (p - targets)
        hessian = (features * (p * (1 - p))[:, None]).T @ features + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-6:
            candidate = theta - scale * step
            candidate[0] = max(candidate[0], MIN_SLOPE)
            value = loss(candidate)
            if value <= current:
                break
            scale /= 2
        else:
            break
        converged = abs(current - value) < 1e-10 * max(1.0, abs(current))
        theta, current = candidate, value
        if converged:
            break
    return float(theta[0]), float(theta[1]) if fit_bias else 0.0


def pool_adjacent_violators(x, y):
    """Isotonic regression of y on x: (block centres (mean x), block means), non-decreasing."""
    order = np.argsort(x, kind="stable")
    x, y = np.asarray(x, np.float64)[order], (np.asarray(y) == 1).astype(np.float64)[order]
    sums, counts, centres = [], [], []
    for xi, yi in zip(x, y):
        sums.append(yi), counts.append(1.0), centres.append(xi)
        while len(sums) > 1 and sums[-2] / counts[-2] >= sums[-1] / counts[-1]:
            s, c, m = sums.pop(), counts.pop(), centres.pop()
            centres[-1] = (centres[-1] * counts[-1] + m * c) / (counts[-1] + c)
            sums[-1] += s
            counts[-1] += c
    return np.asarray(centres), np.asarray(sums) / np.asarray(counts)


def fit_isotonic(x, y, points=GRID_POINTS):
    """(start, step, values (points,)): an isotonic fit resampled on a uniform grid from the
    lowest to the highest x; between grid points the curve is linear, outside it constant."""
    centres, means = pool_adjacent_violators(x, y)
    low, high = float(np.min(x)), float(np.max(x))
    step = (high - low) / (points - 1) if high > low else 1.0
    grid = low + step * np.arange(points)
    values = np.maximum.accumulate(np.interp(grid, centres, means))
    return low, step, values


# -- maps over tags ------------------------------------------------------------------------------
@dataclasses.dataclass
class ScoreMap:
    """Monotone maps from a feature (a score, or -log(rank)) to a probability, one per row.

    Shape contract: `apply(x)` takes (..., K) features, column k through row k (K = 1
    broadcasts one map over every column) and returns probabilities of the same shape.

    kind "logistic": p = sigmoid(slope x + bias), slope and bias (K,).
    kind "isotonic": p = linear interpolation of values (K, G) on the grid
        start + step * [0, G), constant beyond its ends.
    """

    kind: str
    slope: Optional[np.ndarray] = None
    bias: Optional[np.ndarray] = None
    start: Optional[np.ndarray] = None
    step: Optional[np.ndarray] = None
    values: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.kind not in ("logistic", "isotonic"):
            raise ValueError(f"ScoreMap kind must be 'logistic' or 'isotonic', got {self.kind!r}.")
        for name in ("slope", "bias", "start", "step", "values"):
            if getattr(self, name) is not None:
                setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64))

    def __len__(self):
        return len(self.slope if self.kind == "logistic" else self.start)

    def apply(self, x):
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "logistic":
            return sigmoid(self.slope * x + self.bias)
        points = self.values.shape[1]
        position = np.clip((x - self.start) / self.step, 0.0, points - 1)
        lower = np.minimum(np.floor(position), points - 2).astype(np.int64)
        fraction = position - lower
        rows = np.broadcast_to(np.arange(len(self)), x.shape) if len(self) > 1 else np.zeros(x.shape, np.int64)
        low, high = self.values[rows, lower], self.values[rows, lower + 1]
        return low + fraction * (high - low)

    def take(self, rows):
        """The maps of some rows, as a ScoreMap."""
        fields = {n: getattr(self, n) for n in ("slope", "bias", "start", "step", "values")}
        return ScoreMap(self.kind, **{n: None if v is None else v[rows] for n, v in fields.items()})

    @classmethod
    def stack(cls, maps):
        """One ScoreMap of single-row maps of the same kind."""
        kind = maps[0].kind
        fields = ("slope", "bias") if kind == "logistic" else ("start", "step", "values")
        return cls(kind, **{n: np.concatenate([getattr(m, n) for m in maps]) for n in fields})

    def to_dict(self):
        fields = ("slope", "bias") if self.kind == "logistic" else ("start", "step", "values")
        return {"kind": self.kind, **{n: getattr(self, n).tolist() for n in fields}}

    @classmethod
    def from_dict(cls, values):
        return cls(**values)


def fit_map(x, y, method):
    """A one-row ScoreMap fitted on features x and labels y (1 positive, else negative)."""
    if method == "isotonic":
        start, step, values = fit_isotonic(x, y)
        return ScoreMap("isotonic", start=[start], step=[step], values=[values])
    slope, bias = fit_logistic(x, y, fit_bias=method == "platt")
    return ScoreMap("logistic", slope=[slope], bias=[bias])


# Scores within this relative margin of a tag's count as tied, not higher: a vocabulary
# tag sent again (score_tags, a query) scores it up to rounding and must not outrank itself.
RANK_TOLERANCE = 1e-5


def score_ranks(scores, vocabulary_scores):
    """(N, T) ranks of `scores` (N, T) among each image's vocabulary scores (N, C): 1 + the
    number of vocabulary tags that score higher (by more than RANK_TOLERANCE relative; a
    vocabulary tag's own rank counts the others; a tag outside the vocabulary ranks as if
    it were added). float32, as the export computes it."""
    ordered = np.sort(np.asarray(vocabulary_scores, dtype=np.float32), axis=1)
    scores = np.asarray(scores, dtype=np.float32)
    limits = scores + np.float32(RANK_TOLERANCE) * (np.float32(1) + np.abs(scores))
    at_or_below = np.stack([np.searchsorted(row, s, side="right") for row, s in zip(ordered, limits)])
    return 1 + ordered.shape[1] - at_or_below.reshape(scores.shape)


def rank_feature(ranks):
    """The rank map's feature: -log(rank), increasing with the score."""
    return -np.log(np.asarray(ranks, dtype=np.float64))


# -- thresholds ------------------------------------------------------------------------------------
def best_f1_threshold(probabilities, labels):
    """(threshold, F1) of the rule p >= threshold with the best F1 over the pairs given:
    halfway between the lowest probability kept and the next one below it."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    y = (np.asarray(labels) == 1).reshape(-1)
    positives = y.sum()
    if not positives:
        return 1.0, 0.0
    order = np.argsort(-p, kind="stable")
    p, y = p[order], y[order]
    true_positives = np.cumsum(y)
    # Only cut where the probability changes: tied pairs are kept or dropped together.
    cuts = np.nonzero(np.r_[p[1:] < p[:-1], True])[0]
    f1 = 2 * true_positives[cuts] / (cuts + 1 + positives)
    best = cuts[int(np.argmax(f1))]
    below = p[best + 1] if best + 1 < len(p) else 0.0
    return float((p[best] + below) / 2), float(f1.max())


# -- the calibration of a run --------------------------------------------------------------------
@dataclasses.dataclass
class Calibration:
    """Score -> probability maps and thresholds for every tag of a vocabulary.

    Shape contract: `probabilities(scores)` maps (N, C) scores over the vocabulary's C
    tags (in its order) to (N, C) probabilities; `unseen_probabilities(scores,
    vocabulary_scores)` maps (N, T) scores of any tags through the unseen-tag map.

    Attributes:
        tags: the vocabulary's tags; unseen: the indices of its unseen tags.
        method: "platt", "temperature" or "isotonic".
        tag_map: a ScoreMap with one row per tag (unseen tags' rows hold the shared map).
        shared: the tags (indices) whose row is the shared map (few positives, or a fit
            that did not increase with the score); unseen tags are not listed.
        unseen_pooling: "score" or "rank"; unseen_map: its one-row ScoreMap.
        thresholds: (C,) probabilities tuned for F1 (unseen tags: `unseen_threshold`).
        shared_threshold: the one threshold with the best F1 over all seen pairs.
        probability_threshold: a user-set global threshold, or None.
        fitted_on: what the maps were fitted on (source, images, pairs, positives).
    """

    tags: list
    unseen: list
    method: str
    tag_map: ScoreMap
    shared: list
    unseen_pooling: str
    unseen_map: ScoreMap
    thresholds: np.ndarray
    unseen_threshold: float
    shared_threshold: float
    probability_threshold: Optional[float] = None
    fitted_on: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64)
        self.unseen = [int(i) for i in self.unseen]
        if len(self.tag_map) != len(self.tags) or self.thresholds.shape != (len(self.tags),):
            raise ValueError(f"A calibration of {len(self.tags)} tags holds {len(self.tag_map)} maps and "
                             f"{self.thresholds.shape} thresholds.")
        check_probability(self.probability_threshold, "probability_threshold", optional=True)

    @property
    def seen(self):
        unseen = set(self.unseen)
        return [i for i in range(len(self.tags)) if i not in unseen]

    def probabilities(self, scores):
        """(N, C) probabilities of (N, C) scores over the vocabulary."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.tags):
            raise ValueError(f"Expected (N, {len(self.tags)}) scores over the vocabulary, got {scores.shape}.")
        probabilities = self.tag_map.apply(scores)
        if self.unseen:
            probabilities[:, self.unseen] = self.unseen_probabilities(scores[:, self.unseen], scores)
        return probabilities

    def unseen_probabilities(self, scores, vocabulary_scores=None):
        """(N, T) probabilities of any tags' (N, T) scores through the unseen-tag map; the
        rank pooling needs the image's (N, C) vocabulary scores."""
        if self.unseen_pooling == "score":
            return self.unseen_map.apply(scores)
        if vocabulary_scores is None:
            raise ValueError("The rank-pooled unseen map needs the images' vocabulary scores.")
        return self.unseen_map.apply(rank_feature(score_ranks(scores, vocabulary_scores)))

    def tag_probabilities(self, scores, names, vocabulary_scores=None):
        """(N, T) probabilities of (N, T) scores of tags named `names`: a seen tag of the
        calibration through its own map, any other name (an unseen tag, a word outside
        the vocabulary, an unnamed vector) through the unseen-tag map."""
        scores = np.asarray(scores, dtype=np.float64)
        index = {tag: i for i, tag in enumerate(self.tags)}
        seen = set(self.seen)
        columns = [index.get(name) for name in names]
        own = [j for j, c in enumerate(columns) if c in seen]
        probabilities = np.empty(scores.shape)
        if own:
            probabilities[:, own] = self.tag_map.take([columns[j] for j in own]).apply(scores[:, own])
        other = [j for j in range(len(columns)) if j not in set(own)]
        if other:
            probabilities[:, other] = self.unseen_probabilities(scores[:, other], vocabulary_scores)
        return probabilities

    def threshold_vector(self, threshold=None):
        """(C,) thresholds: "tuned" (per tag), a probability (one for all tags), or None: the
        user-set probability_threshold when there is one, else the tuned ones."""
        if threshold is None:
            threshold = "tuned" if self.probability_threshold is None else self.probability_threshold
        if isinstance(threshold, str):
            if threshold != "tuned":
                raise ValueError(f"A threshold is a probability in [0, 1] or 'tuned', got {threshold!r}.")
            return self.thresholds.copy()
        return np.full(len(self.tags), check_probability(threshold, "threshold"))

    # -- files ----------------------------------------------------------------------------------
    def to_dict(self):
        return {
            "format": FORMAT,
            "tags": list(self.tags),
            "unseen": list(self.unseen),
            "method": self.method,
            "tag_map": self.tag_map.to_dict(),
            "shared": [int(i) for i in self.shared],
            "unseen_pooling": self.unseen_pooling,
            "unseen_map": self.unseen_map.to_dict(),
            "thresholds": self.thresholds.tolist(),
            "unseen_threshold": self.unseen_threshold,
            "shared_threshold": self.shared_threshold,
            "probability_threshold": self.probability_threshold,
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_dict(cls, values, source="calibration"):
        if not isinstance(values, dict) or values.get("format") != FORMAT:
            found = values.get("format") if isinstance(values, dict) else type(values).__name__
            raise ValueError(f"{source}: not a calibration (format {found!r}, expected {FORMAT!r}).")
        values = {k: v for k, v in values.items() if k != "format"}
        try:
            values["tag_map"] = ScoreMap.from_dict(values["tag_map"])
            values["unseen_map"] = ScoreMap.from_dict(values["unseen_map"])
            return cls(**values)
        except (KeyError, TypeError) as error:
            raise ValueError(f"{source}: a malformed calibration ({error}).") from None

    def save(self, path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f)

    @classmethod
    def load(cls, path):
        return cls.from_dict(read_json(path), source=str(path))

    def check_tags(self, tags, source="the vocabulary"):
        """Raises unless the calibration was fitted for exactly these tags, in this order."""
        if list(tags) != list(self.tags):
            pairs = enumerate(zip(tags, self.tags))
            differ = next((i for i, (a, b) in pairs if a != b), min(len(tags), len(self.tags)))
            raise ValueError(f"The calibration was fitted for {len(self.tags)} tags, {source} has {len(tags)}; they "
                             f"first differ at position {differ}. Calibrate again (python -m sdl_keras.calibrate).")


def check_probability(value, name, optional=False):
    if value is None and optional:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}.")
    return value


def fit_calibration(scores, labels, tags, unseen, method="platt", unseen_pooling="rank", min_positives=10,
                    probability_threshold=None, fitted_on=None):
    """Fits a Calibration on validation scores and labels.

    Args:
        scores: (N, C) scores over the vocabulary.
        labels: (N, C) labels in {1, 0, -1}; -1 pairs are left out; only the seen tags'
            columns are used (unseen tags have no labels to fit on).
        tags: the vocabulary's C tags; unseen: the indices of its unseen tags.
        method: "platt", "temperature" or "isotonic".
        unseen_pooling: "score" or "rank" (module docstring).
        min_positives: a seen tag with fewer positive pairs uses the shared map and the
            shared threshold.
        probability_threshold: a user-set global probability threshold, stored, or None.
        fitted_on: a JSON-able description of the data, stored.
    """
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}.")
    if unseen_pooling not in UNSEEN_POOLINGS:
        raise ValueError(f"unseen_pooling must be one of {UNSEEN_POOLINGS}, got {unseen_pooling!r}.")
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape or scores.ndim != 2 or scores.shape[1] != len(tags):
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must both be (N, {len(tags)}).")
    unseen = sorted(int(i) for i in unseen)
    seen = [i for i in range(len(tags)) if i not in set(unseen)]
    known = labels[:, seen] != -1
    pooled_scores, pooled_labels = scores[:, seen][known], labels[:, seen][known]
    if not (pooled_labels == 1).any() or (pooled_labels == 1).all():
        raise ValueError(f"The validation split's {len(scores)} images hold {int((pooled_labels == 1).sum())} "
                         f"positive and {int((pooled_labels != 1).sum())} negative seen (image, tag) pairs: "
                         "calibration needs both.")
    shared_map = fit_map(pooled_scores, pooled_labels, method)
    rows, shared = [], []
    for tag in range(len(tags)):
        column = labels[:, tag] != -1
        x, y = scores[column, tag], labels[column, tag]
        fitted = None
        if tag in set(seen) and (y == 1).sum() >= min_positives and (y != 1).sum() >= min_positives:
            fitted = fit_map(x, y, method)
            # A map that does not rise with the score (slope at its floor, or a flat curve)
            # says the tag's scores carry no information: the pooled map knows more.
            flat = fitted.slope[0] <= MIN_SLOPE if method != "isotonic" else fitted.values[0, -1] <= fitted.values[0, 0]
            fitted = None if flat else fitted
        if fitted is None and tag not in set(unseen):
            shared.append(tag)
        rows.append(fitted or shared_map)
    tag_map = ScoreMap.stack(rows)

    ranks = score_ranks(scores[:, seen], scores)
    unseen_feature = pooled_scores if unseen_pooling == "score" else rank_feature(ranks)[known]
    unseen_map = fit_map(unseen_feature, pooled_labels, method)

    probabilities = tag_map.apply(scores)
    shared_threshold, _ = best_f1_threshold(probabilities[:, seen][known], pooled_labels)
    unseen_threshold, _ = best_f1_threshold(unseen_map.apply(unseen_feature), pooled_labels)
    thresholds = np.full(len(tags), shared_threshold)
    thresholds[unseen] = unseen_threshold
    for tag in set(seen) - set(shared):
        column = labels[:, tag] != -1
        thresholds[tag], _ = best_f1_threshold(probabilities[column, tag], labels[column, tag])
    fitted_on = dict(fitted_on or {}, images=int(len(scores)), pairs=int(known.sum()),
                     positives=int((pooled_labels == 1).sum()), min_positives=int(min_positives))
    return Calibration(list(tags), unseen, method, tag_map, shared, unseen_pooling, unseen_map, thresholds,
                       unseen_threshold, shared_threshold, check_probability(probability_threshold,
                                                                             "probability_threshold", True),
                       fitted_on)


def parse_threshold(value):
    """A threshold as commands take it: None, "tuned", or a probability (from text)."""
    if value is None or value == "tuned":
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"A threshold is 'tuned' or a probability in [0, 1], got {value!r}.") from None
    return check_probability(number, "threshold")

"""How much a model's confidence means: intervals, calibration error, temperature, "unknown".

Everything here works on plain numpy arrays of logits (one row per image, one column per class)
and integer labels, so the same code scores a PyTorch model, an ONNX export or a simulation.
A single-logit (binary) head is turned into two columns ``[0, z]`` first (``as_two_columns``):
softmax of that pair is exactly the sigmoid the head was trained with.

* ``wilson_interval``: a 95 % interval for an accuracy measured on n images. Wilson's score
  interval, not the normal approximation: it stays inside [0, 1] and keeps close to 95 %
  coverage near 100 % accuracy and on a few dozen images, where the normal one undercovers.
* ``two_proportion_p``: whether accuracies on two different image sets (val, test) really differ.
* ``expected_calibration_error`` / ``reliability``: confidence (top probability) against accuracy
  in equal-width bins; ECE is the image-weighted mean gap.
* ``fit_temperature``: one number T dividing every logit, chosen on validation images to minimise
  their negative log-likelihood (Guo et al. 2017). It changes confidences, never the predicted class.
* ``choose_threshold``: the lowest top-probability cut for which the accepted validation images
  reach a target accuracy; below it the model answers "unknown".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: z for a two-sided 95 % interval.
Z95 = 1.959963984540054
DEFAULT_BINS = 10


def as_two_columns(logits) -> np.ndarray:
    """Logits as an (n, classes) float64 array; a single binary logit z becomes ``[0, z]``."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 1:
        logits = logits[:, None]
    if logits.shape[1] == 1:
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    return logits


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    z = as_two_columns(logits) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes out of ``total`` (95 % by default)."""
    if total <= 0:
        return (0.0, 1.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_p(correct_a: int, n_a: int, correct_b: int, n_b: int) -> float:
    """Two-sided p-value that two accuracies measured on *different* images differ (pooled z-test).

    For two models on the *same* images use a paired test instead (``tlcourse.compare``).
    """
    pooled = (correct_a + correct_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 1.0
    z = abs(correct_a / n_a - correct_b / n_b) / se
    return math.erfc(z / math.sqrt(2))


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    confidence: float  # mean top probability of the images in the bin (nan when empty)
    accuracy: float    # their accuracy (nan when empty)


def reliability(probs, labels, bins: int = DEFAULT_BINS) -> list[Bin]:
    """Equal-width confidence bins (the last one includes 1.0): count, mean confidence, accuracy."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        n = int(inside.sum())
        rows.append(Bin(float(edges[b]), float(edges[b + 1]), n,
                        float(confidence[inside].mean()) if n else math.nan,
                        float(correct[inside].mean()) if n else math.nan))
    return rows


def expected_calibration_error(probs, labels, bins: int = DEFAULT_BINS) -> float:
    """Sum over bins of (images in bin / all images) × |accuracy − mean confidence|."""
    table = reliability(probs, labels, bins)
    total = sum(b.count for b in table)
    return float(sum(b.count / total * abs(b.accuracy - b.confidence) for b in table if b.count))


def nll(logits, labels, temperature: float = 1.0) -> float:
    probs = softmax(logits, temperature)
    picked = probs[np.arange(len(probs)), np.asarray(labels)]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def fit_temperature(logits, labels, low: float = 0.05, high: float = 20.0) -> float:
    """The T in [low, high] minimising the NLL of ``softmax(logits / T)``: a golden-section search on log T.

    The NLL is convex in 1/T, so a one-dimensional search finds the minimum; no optimiser state,
    the same answer every run.
    """
    a, b = math.log(low), math.log(high)
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, math.exp(c)), nll(logits, labels, math.exp(d))
    for _ in range(80):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, math.exp(d))
    return float(math.exp((a + b) / 2))


@dataclass(frozen=True)
class Threshold:
    value: float            # answer "unknown" when the top probability is below this
    target: float           # the accuracy asked for on accepted images
    accuracy: float         # accuracy of the accepted validation images
    accepted: float         # share of validation images accepted
    reached: bool           # False: no cut reaches the target; value then accepts only the most confident image


def choose_threshold(probs, labels, target: float = 0.95) -> Threshold:
    """The lowest cut on the top probability whose accepted images reach ``target`` accuracy.

    Lowest, so the share of images still answered is as large as the target allows. Candidates
    are the images' own confidences: accepting every image at or above one of them.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target accuracy {target} must be in (0, 1]")
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(correct[order])
    counts = np.arange(1, len(order) + 1)
    accuracy = hits / counts
    # only cut between distinct confidences: accepting "all images >= c" takes every tie of c
    last_of_tie = np.r_[confidence[order][1:] != confidence[order][:-1], True]
    ok = np.flatnonzero((accuracy >= target - 1e-12) & last_of_tie)
    if len(ok) == 0:
        return Threshold(float(confidence[order][0]), target, float(accuracy[0]), 1 / len(order), False)
    k = ok[-1]
    return Threshold(float(confidence[order][k]), target, float(accuracy[k]), float(counts[k] / len(order)), True)


def accepted_share(probs, labels, threshold: float) -> tuple[float, float | None]:
    """(share of images at or above ``threshold``, accuracy on them or None when none is accepted)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    keep = probs.max(axis=1) >= threshold
    if not keep.any():
        return 0.0, None
    return float(keep.mean()), float((probs[keep].argmax(axis=1) == labels[keep]).mean())


def plot_reliability(before: list[Bin], after: list[Bin] | None = None, ax=None, title: str = ""):
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(4.2, 4))[1]
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for table, label, marker in ((before, "before", "o"), (after, "after temperature", "s")):
        if table is None:
            continue
        shown = [b for b in table if b.count]
        ax.plot([b.confidence for b in shown], [b.accuracy for b in shown], marker=marker, label=label)
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    return ax

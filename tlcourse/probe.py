"""A linear-probe baseline: logistic regression on the frozen backbone's pooled features.

Training only a new linear head on frozen features is a convex problem: a multinomial logistic
regression fitted to convergence on the un-augmented features is what a head-only run can be
expected to reach, and L-BFGS fits it in seconds. ``tlcourse.engine.train`` prints it beside
every head-only and last_stage result, so a learner sees at once whether training beat it.

The features are standardised with the training set's mean and standard deviation. The L2
strength is chosen by stratified k-fold cross-validation on the *training* features only (the
validation images never choose anything), then the probe is refitted on all training
features and scored once on validation.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

__all__ = ["L2_GRID", "ProbeResult", "baseline", "fit_logistic", "linear_probe", "probe_correct"]

#: L2 strengths tried (loss = mean cross-entropy + l2 / 2 * ||W||^2, on standardised features).
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0)
#: Used when a class has too few training images for cross-validation.
FALLBACK_L2 = 1e-2


@dataclass
class ProbeResult:
    """The probe's scores and how it was fitted."""

    val_acc: float
    val_loss: float
    train_acc: float
    l2: float
    folds: int                  # 0: too few images per class to cross-validate, FALLBACK_L2 used
    train_images: int
    val_images: int
    seconds: float

    def line(self) -> str:
        chosen = (f"L2 {self.l2:g} chosen by {self.folds}-fold cross-validation on train" if self.folds
                  else f"L2 {self.l2:g} (too few images per class to cross-validate)")
        return (f"linear probe (baseline): val_acc {self.val_acc:.4f}, val_loss {self.val_loss:.4f}: logistic "
                f"regression on the frozen pooled features of {self.train_images} train images, {chosen} "
                f"({self.seconds:.1f} s)")

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ProbeResult:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__})


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float, max_iter: int = 200,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS: (weights ``(D, C)``, bias ``(C,)``).

    ``init``: a starting point, e.g. the solution for a stronger L2 (a warm start along the path).
    """
    if init is None:
        init = (torch.zeros(x.shape[1], num_classes, dtype=x.dtype), torch.zeros(num_classes, dtype=x.dtype))
    weight, bias = (t.detach().clone().requires_grad_(True) for t in init)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def _scores(weight, bias, x, y) -> tuple[float, float]:
    logits = x @ weight + bias
    return (logits.argmax(1) == y).double().mean().item(), F.cross_entropy(logits, y).item()


def _folds(y: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """Stratified folds: each class's shuffled indices dealt round-robin into ``k`` folds."""
    generator = torch.Generator().manual_seed(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for cls in y.unique().tolist():
        members = (y == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        for i, index in enumerate(members.tolist()):
            folds[i % k].append(index)
    return [torch.tensor(sorted(f)) for f in folds]


def _standardised(train_x, train_y, val_x, val_y) -> tuple[torch.Tensor, ...]:
    """Features in float64, standardised with the training set's mean and standard deviation."""
    train_x, val_x = train_x.double().flatten(1), val_x.double().flatten(1)
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    return (train_x - mean) / std, train_y.long(), (val_x - mean) / std, val_y.long()


def probe_correct(data: tuple, l2: float, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(correct, targets)`` of the probe on each validation image: the final fit of
    :func:`linear_probe` again, with its chosen ``l2``, on ``FastSetup.probe_data`` (for a paired test)."""
    train_x, train_y, val_x, val_y = _standardised(*data[:4])
    weight, bias = fit_logistic(train_x, train_y, num_classes, l2)
    return (val_x @ weight + bias).argmax(1) == val_y, val_y


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor, *,
                 num_classes: int | None = None, l2_grid=L2_GRID, folds: int = 3, seed: int = 0) -> ProbeResult:
    """Fit the probe on ``train_x`` (L2 by cross-validation on train) and score it on ``val_x``."""
    started = time.perf_counter()
    train_x, train_y, val_x, val_y = _standardised(train_x, train_y, val_x, val_y)
    num_classes = num_classes or int(max(train_y.max(), val_y.max())) + 1
    smallest = int(torch.bincount(train_y).min()) if len(train_y.unique()) == num_classes else 0
    k = min(folds, smallest)
    if k >= 2:
        grid = sorted(l2_grid, reverse=True)              # strong to weak: each fit starts from the last
        scores = {l2: [0.0, 0.0] for l2 in grid}
        for held in _folds(train_y, k, seed):
            keep = torch.ones(len(train_y), dtype=torch.bool)
            keep[held] = False
            solution = None
            for l2 in grid:
                solution = fit_logistic(train_x[keep], train_y[keep], num_classes, l2, init=solution)
                acc, loss = _scores(*solution, train_x[held], train_y[held])
                scores[l2][0] += acc / k
                scores[l2][1] -= loss / k
        l2 = max(grid, key=lambda v: tuple(scores[v]))   # accuracy first, then the lower loss; ties: stronger
    else:
        k, l2 = 0, FALLBACK_L2
    weight, bias = fit_logistic(train_x, train_y, num_classes, l2)
    train_acc, _ = _scores(weight, bias, train_x, train_y)
    val_acc, val_loss = _scores(weight, bias, val_x, val_y)
    return ProbeResult(val_acc, val_loss, train_acc, l2, k, len(train_y), len(val_y),
                       time.perf_counter() - started)


def baseline(data: tuple, *, num_classes: int, seed: int = 0, cache=None) -> ProbeResult:
    """The probe for ``FastSetup.probe_data``; kept in the feature cache next to its features.

    The probe is a fixed function of the cached features, the seed (its folds) and this
    module's settings, so a warm run reads it back instead of fitting it again.
    """
    train_x, train_y, val_x, val_y, keys = data
    key = None
    if cache is not None and keys is not None:
        from .feature_cache import key_name

        key = {"kind": "tlcourse.probe", "version": 1, "features": [key_name(k) for k in keys], "seed": seed,
               "num_classes": num_classes, "l2_grid": list(L2_GRID), "folds": 3}
        stored = cache.load_json(key)
        if stored is not None:
            try:
                return ProbeResult.from_dict(stored)
            except (KeyError, TypeError):
                pass
    result = linear_probe(train_x, train_y, val_x, val_y, num_classes=num_classes, seed=seed)
    if key is not None:
        cache.store_json(key, result.as_dict(), f"linear probe on {result.train_images} train / "
                                                f"{result.val_images} val feature rows: val_acc {result.val_acc:.4f}")
    return result

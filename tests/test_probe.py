"""The linear-probe baseline: a real logistic regression, chosen without looking at validation."""

from __future__ import annotations

import pytest
import torch

from tlcourse.feature_cache import FeatureCache
from tlcourse.probe import FALLBACK_L2, L2_GRID, ProbeResult, baseline, fit_logistic, linear_probe


def _blobs(n_per_class: int, classes: int, dim: int = 16, spread: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[y] + spread * torch.randn(len(y), dim, generator=g), y


def test_separable_features_are_classified_and_noise_is_not():
    x, y = _blobs(20, 3)
    vx, vy = _blobs(10, 3, seed=0)                      # same centres, fresh points
    result = linear_probe(x, y, vx, vy)
    assert result.val_acc == 1.0 and result.train_acc == 1.0 and result.folds == 3 and result.l2 in L2_GRID
    noise = linear_probe(torch.randn(90, 16), torch.arange(3).repeat(30), torch.randn(300, 16),
                         torch.arange(3).repeat(100), l2_grid=(0.1, 1.0))
    assert noise.val_acc < 0.5                          # 3 classes: chance is 1/3


def test_the_probe_is_deterministic_and_ignores_validation_labels_when_choosing():
    x, y = _blobs(15, 4, spread=3.0)
    vx, vy = _blobs(15, 4, spread=3.0, seed=1)
    grid = (0.01, 1.0)
    first, second = linear_probe(x, y, vx, vy, seed=5, l2_grid=grid), linear_probe(x, y, vx, vy, seed=5, l2_grid=grid)
    assert (first.val_acc, first.l2) == (second.val_acc, second.l2)
    shuffled = linear_probe(x, y, vx, vy[torch.randperm(len(vy))], seed=5, l2_grid=grid)
    assert shuffled.l2 == first.l2                      # validation never picks the L2 strength


def test_too_few_images_per_class_uses_the_fallback_strength():
    x, y = _blobs(1, 3)
    result = linear_probe(x, y, x, y)
    assert result.folds == 0 and result.l2 == FALLBACK_L2 and "too few" in result.line()


def test_fit_logistic_reaches_the_optimum():
    x, y = _blobs(30, 2, spread=2.0)
    w, b = fit_logistic(x.double(), y, 2, l2=0.1)
    w.requires_grad_(True)
    b.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(x.double() @ w + b, y) + 0.05 * w.pow(2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4   # a stationary point of a convex loss


def test_baseline_is_kept_in_the_feature_cache(tmp_path, monkeypatch):
    x, y = _blobs(10, 3)
    keys = ({"a": 1}, {"b": 2})
    cache = FeatureCache(tmp_path)
    first = baseline((x, y, x, y, keys), num_classes=3, cache=cache)
    monkeypatch.setattr("tlcourse.probe.linear_probe", lambda *a, **k: pytest.fail("refitted"))
    assert baseline((x, y, x, y, keys), num_classes=3, cache=cache) == first
    assert ProbeResult.from_dict(first.as_dict()) == first

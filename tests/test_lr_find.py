"""The learning-rate range test: state is given back bit for bit, the suggestion is where it should be."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import make_image_folder

from tlcourse import TLCourseError
from tlcourse.cli import main
from tlcourse.data import make_loaders
from tlcourse.freeze import apply_freeze
from tlcourse.lr_find import lr_find, lr_range_test, suggest
from tlcourse.models import build_model
from tlcourse.optim import make_optimizer


def _snapshot(model, optimizer):
    """Copies (not views) of everything the sweep may change."""
    return ({k: v.clone() for k, v in model.state_dict().items()}, copy.deepcopy(optimizer.state_dict()),
            [None if p.grad is None else p.grad.clone() for p in model.parameters()])


def _identical(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))
    return a == b


def test_model_optimizer_batchnorm_and_random_state_are_restored_bit_for_bit(tiny_data):
    """Plain route, ``last_stage`` trainable: the sweep updates layer4's BatchNorm statistics and Adam's state."""
    loaders = make_loaders(tiny_data, image_size=64, batch_size=4, augment=True, seed=0)
    torch.manual_seed(0)
    model = apply_freeze(build_model("resnet18", 2, weights=None), "last_stage")
    optimizer = make_optimizer(model, "adam", 1e-3, head_lr_mult=10)
    # one real step first, so the optimizer has state and parameters have gradients to give back
    inputs, targets = next(iter(loaders.train))
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
    model.train()
    before = _snapshot(model, optimizer)
    generator_before = loaders.train.generator.get_state()
    rng_before = torch.get_rng_state()
    bn = model.layer4[0].bn1

    stats_seen, during = [], {}
    bn.register_forward_hook(lambda m, i, o: stats_seen.append(m.running_mean.clone()))
    optimizer.register_step_post_hook(lambda opt, *_: during.update(copy.deepcopy(opt.state_dict())))
    result = lr_range_test(model, loaders.train, optimizer=optimizer, steps=6, end_lr=1.0)
    assert not torch.equal(stats_seen[0], stats_seen[-1]), "the sweep did move BatchNorm statistics"
    after = _snapshot(model, optimizer)
    assert _identical(before[0], after[0])                       # parameters and BatchNorm buffers
    assert _identical(before[1], after[1])                       # Adam's moments, step counts, the two lrs
    assert before[1]["state"] and not _identical(before[1]["state"], during["state"])
    assert _identical(before[2], after[2])                       # gradients
    assert torch.equal(generator_before, loaders.train.generator.get_state())
    assert torch.equal(rng_before, torch.get_rng_state())
    assert model.training and not model.layer1[0].bn1.training   # modes (frozen BN stays in eval)
    assert sorted(g["lr"] for g in optimizer.param_groups) == [1e-3, 1e-2]
    assert 2 <= result.steps <= 6 and result.lrs[0] == pytest.approx(1e-7)


def test_suggestion_lies_in_the_sweep_and_before_the_loss_turns_up():
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    # flat, then falling fastest around 1e-3, lowest near 1e-2, then exploding
    curve = [2 - 1.5 / (1 + math.exp(-3 * (math.log10(lr) + 3))) + max(0.0, math.log10(lr) + 2) ** 2 * 4
             for lr in lrs]
    suggestion, method, steepest = suggest(lrs, curve)
    assert method == "steepest" and suggestion == steepest
    assert 5e-4 < suggestion < 2e-3
    low = lrs[curve.index(min(curve))]
    assert suggestion < low
    rising = suggest(lrs[:30], [1 + i / 10 for i in range(30)])     # no descent at all
    assert rising == (lrs[0], "minimum/10", None)                    # minimum/10, kept inside the sweep


def _noisy_clusters(n: int = 512, seed: int = 0):
    """Two Gaussian clusters in 20 dimensions with 10 % of the labels flipped: a loss that falls, then explodes."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 2, (n,), generator=g)
    inputs = torch.randn(n, 20, generator=g) + (targets[:, None] * 2 - 1) * 0.8
    flip = torch.rand(n, generator=g) < 0.1
    data = torch.utils.data.TensorDataset(inputs, torch.where(flip, 1 - targets, targets))
    return torch.utils.data.DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_divergence_stops_the_sweep_and_the_suggestion_lies_before_the_minimum():
    torch.manual_seed(0)
    model = torch.nn.Linear(20, 2)
    result = lr_range_test(model, _noisy_clusters(), loss_fn=torch.nn.CrossEntropyLoss(),
                           optimizer=torch.optim.SGD(model.parameters(), lr=1.0), start_lr=1e-5, end_lr=1e3, steps=200)
    assert result.diverged_at is not None and result.steps < 200                 # stopped early...
    assert result.smoothed[-1] > 4 * min(result.smoothed[result.lrs.index(result.minimum_lr):])   # ...for that reason
    assert result.method == "steepest"
    assert result.start_lr < result.suggestion < result.minimum_lr < result.diverged_at
    # at the suggestion the loss is falling: lower than a decade before it, higher than at the minimum
    at = result.lrs.index(result.suggestion)
    decade_before = result.lrs.index(min(result.lrs, key=lambda lr: abs(math.log10(lr / result.suggestion) + 1)))
    assert result.smoothed[decade_before] > result.smoothed[at] > result.smoothed[result.lrs.index(result.minimum_lr)]
    assert "the loss diverged" in result.summary() and f"suggestion lr={result.suggestion:.3g}" in result.summary()
    ax = result.plot()
    assert ax.get_xscale() == "log" and len(ax.lines) == 4


def test_lr_find_for_a_config_sweeps_the_cached_features_of_a_frozen_backbone(tiny_data_session):
    result = lr_find(data_dir=str(tiny_data_session), arch="resnet18", weights=None, image_size=64, batch_size=4,
                     augment=False, steps=60, progress="none")
    assert result.route.startswith("cached pooled features") and result.steps >= 2
    assert result.start_lr <= result.suggestion <= result.minimum_lr
    assert result.diverged_at is None or result.minimum_lr < result.diverged_at


def test_bad_arguments():
    model = build_model("resnet18", 2, weights=None)
    with pytest.raises(TLCourseError, match="0 < start_lr < end_lr"):
        lr_range_test(model, [], start_lr=1.0, end_lr=0.1)
    with pytest.raises(TLCourseError, match="steps=1 must be a whole number >= 2"):
        lr_range_test(model, [], steps=1)
    with pytest.raises(TLCourseError, match="training loader yielded no images"):
        lr_range_test(model, [], steps=3)


def test_cli_prints_the_suggestion_and_writes_the_plot(tmp_path, capsys):
    data = make_image_folder(tmp_path / "leaves", classes=("healthy", "rust", "scab"), per_class=4)
    plot = tmp_path / "plots" / "lr.png"
    assert main(["lr-find", "--data-dir", str(data), "--weights", "none", "--image-size", "64", "--batch-size", "4",
                 "--no-augment", "--steps", "30", "--plot", str(plot), "--progress", "none"]) == 0
    out = capsys.readouterr().out
    assert "route: cached pooled features" in out and "suggested lr: " in out and f"plot: {plot}" in out
    assert plot.stat().st_size > 0
    assert main(["lr-find", "--data-dir", str(data), "--start-lr", "1", "--end-lr", "0.5"]) == 2
    assert "--start-lr 1.0 must be smaller than --end-lr 0.5" in capsys.readouterr().err

"""The learning-rate range test (Smith, 2015; fastai's ``lr_find``): which learning rate to train with.

Train for a few hundred mini-batches while the learning rate grows exponentially from tiny
(``1e-7``: nothing changes) to huge (``10``: the loss explodes). Plot the loss against the
learning rate: it stays flat, then falls, then shoots up. A good learning rate sits where the
loss falls fastest, well before it turns up.

* **smoothed loss**: one mini-batch's loss is noisy, so the curve is a centred moving average
  over about 1/10 of the sweep (the 21 nearest batches of 200). fastai plots an exponential
  moving average instead; an average of the *past* trails the raw losses by ``1 / (1 - beta)``
  = 50 steps, which on a 200-step sweep moves its curve, and the suggestion, about two decades
  of learning rate to the right (measured on ants/bees: 2.6e-3 instead of 6.6e-4).
* **stop**: while sweeping only the past is known, so there an exponential moving average
  (``beta = 0.98``, bias-corrected as in Adam) decides: stop once it exceeds ``diverge`` (4)
  times its minimum, or the loss is not finite;
* **suggestion** (``method``): ``"steepest"``, the learning rate where the smoothed loss falls
  fastest (most negative slope against log(lr)), searched only *before* the minimum, so it lies
  inside the sweep and below the point where the loss turns up; ``minimum_lr / 10`` (fastai's
  "minimum") is reported beside it. Too short a curve falls back to ``minimum / 10`` and says so.

The test trains the real model, so everything is put back afterwards: parameters, BatchNorm
running statistics (the whole ``state_dict``), the optimizer's ``state_dict``, gradients, train /
eval modes and the random state (``tests/test_lr_find.py`` checks bit-identity). ``lr_find(config)``
builds the run's model and data as ``train`` would and, when the frozen part allows it, sweeps on
the fast path's cached features (``tlcourse.fast.prepare``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from . import TLCourseError
from .config import TrainConfig
from .device import select_device
from .heads import compute_loss, loss_for_model

#: The sweep's bounds: below, weights do not move in float32; above, every loss diverges.
LOWEST_LR, HIGHEST_LR = 1e-12, 1e4

__all__ = ["LRFind", "centred_average", "lr_find", "lr_range_test", "suggest"]


@dataclass
class LRFind:
    """The sweep (learning rates, raw and smoothed losses) and what it suggests."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    method: str                 # "steepest" or "minimum/10"
    minimum_lr: float           # where the smoothed loss is lowest
    steepest_lr: float | None   # where it falls fastest (None: curve too short)
    start_lr: float
    end_lr: float
    diverged_at: float | None = None    # the learning rate at which the sweep stopped early
    route: str = ""                     # which training route the sweep ran on
    extra: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return len(self.lrs)

    def summary(self) -> str:
        stop = (f"stopped at lr={self.diverged_at:.3g} (the loss diverged)" if self.diverged_at is not None
                else f"ran to lr={self.lrs[-1]:.3g}")
        how = ("steepest descent of the smoothed loss" if self.method == "steepest"
               else "minimum / 10 (too few points for a slope)")
        return (f"lr_find: {self.steps} steps from {self.start_lr:.3g}, {stop}; suggestion lr={self.suggestion:.3g} "
                f"({how}); minimum of the smoothed loss at {self.minimum_lr:.3g}, minimum/10 = "
                f"{self.minimum_lr / 10:.3g}")

    def __str__(self) -> str:
        return self.summary()

    def plot(self, ax=None):
        """Smoothed loss (and the raw losses, faint) against the learning rate, suggestion marked."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.6))
        skip, low = _skip(self.steps), self.lrs.index(self.minimum_lr)
        ax.plot(self.lrs[skip:], self.losses[skip:], color="tab:blue", alpha=0.25, label="loss per batch")
        ax.plot(self.lrs[skip:], self.smoothed[skip:], color="tab:blue", label="smoothed loss")
        at = self.lrs.index(self.suggestion) if self.suggestion in self.lrs else low
        ax.plot([self.suggestion], [self.smoothed[at]], "o", color="tab:red", markersize=8,
                label=f"suggestion {self.suggestion:.2g} ({self.method})")
        ax.plot([self.minimum_lr], [self.smoothed[low]], "v", color="tab:green", markersize=8,
                label=f"minimum {self.minimum_lr:.2g}")
        ax.set_xscale("log")
        bottom, top = self.smoothed[low], max(self.smoothed[skip:low + 1])
        span = max(top - bottom, 1e-3)
        ax.set_ylim(bottom - 0.15 * span, top + 0.5 * span)   # the descent fills the plot; the blow-up runs off
        ax.set(xlabel="learning rate (log scale)", ylabel="training loss", title="learning-rate range test")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.figure.tight_layout()
        return ax


def centred_average(values: list[float], half_width: int | None = None) -> list[float]:
    """Each value averaged with ``half_width`` neighbours on both sides (fewer at the ends): no lag."""
    k = max(1, len(values) // 20) if half_width is None else half_width
    out = []
    for i in range(len(values)):
        window = values[max(0, i - k): i + k + 1]
        out.append(sum(window) / len(window))
    return out


def _skip(n: int) -> int:
    """Points left out at the start, as fastai does (10 %): nothing happens there but noise."""
    return max(5, n // 10) if n >= 20 else 0


def _lowest(smoothed: list[float]) -> int:
    """Index of the smoothed minimum after the first points."""
    return min(range(_skip(len(smoothed)), len(smoothed)), key=smoothed.__getitem__)


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float, str, float | None]:
    """``(suggestion, method, steepest lr)`` from a smoothed curve (see the module docstring)."""
    low, skip_start = _lowest(smoothed), _skip(len(smoothed))
    # The slope is taken against log(lr); only points before the minimum count.
    candidates = range(max(1, skip_start), low + 1)
    if len(candidates) < 3:
        return max(lrs[low] / 10, lrs[0]), "minimum/10", None
    logs = [math.log10(lr) for lr in lrs]

    width = max(1, len(lrs) // 40)   # a slope over a few neighbours each side: one noisy batch cannot win

    def slope(i: int) -> float:
        j, k = max(i - width, 0), min(i + width, len(lrs) - 1)
        return (smoothed[k] - smoothed[j]) / (logs[k] - logs[j])

    steepest = min(candidates, key=slope)
    return lrs[steepest], "steepest", lrs[steepest]


def _batches(loader):
    """Mini-batches forever: a new pass over the loader whenever one ends."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise TLCourseError("the training loader yielded no images; check the dataset folder")


def lr_range_test(model: nn.Module, train_loader, *, optimizer: torch.optim.Optimizer | None = None,
                  loss_fn: nn.Module | None = None, forward_model: nn.Module | None = None,
                  device: str | torch.device = "cpu", start_lr: float = 1e-7, end_lr: float = 10.0,
                  steps: int = 200, beta: float = 0.98, diverge: float = 4.0) -> LRFind:
    """Sweep the learning rate exponentially over ``steps`` batches; leave model and optimizer as they were.

    ``optimizer`` defaults to Adam over the trainable parameters; with several parameter groups
    (per-block rates) each group keeps its ratio to the largest one, which follows the sweep.
    ``forward_model`` is what batches are fed to (the fast path's trainable suffix).
    """
    if not 0 < start_lr < end_lr:
        raise TLCourseError(f"start_lr={start_lr} and end_lr={end_lr}: need 0 < start_lr < end_lr")
    if start_lr < LOWEST_LR or end_lr > HIGHEST_LR:
        raise TLCourseError(f"start_lr={start_lr:g} .. end_lr={end_lr:g} reaches outside {LOWEST_LR:g} .. "
                            f"{HIGHEST_LR:g}, where no optimizer trains (a sweep there suggests an edge, not a rate); "
                            "sweep e.g. start_lr=1e-7 .. end_lr=10")
    if not isinstance(steps, int) or steps < 2:
        raise TLCourseError(f"steps={steps!r} must be a whole number >= 2")
    if not 0 <= beta < 1 or diverge <= 1:
        raise TLCourseError(f"beta={beta} must be in [0, 1) and diverge={diverge} > 1")
    device = torch.device(device)
    model.to(device)
    forward_model = forward_model or model
    if optimizer is None:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TLCourseError("no trainable parameters: every block is frozen; unfreeze at least the head")
        optimizer = torch.optim.Adam(params, lr=start_lr)
    loss_fn = loss_fn or loss_for_model(model)

    # Everything the sweep changes, to put back afterwards.
    saved_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_grads = {p: (None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()}
    modes = {m: m.training for m in [*model.modules(), *forward_model.modules()]}
    generator = getattr(train_loader, "generator", None)
    saved_generator = generator.get_state() if generator is not None else None

    top = max(g["lr"] for g in optimizer.param_groups)
    ratios = [g["lr"] / top if top > 0 else 1.0 for g in optimizer.param_groups]
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses = [], []
    average, best, diverged_at = 0.0, math.inf, None
    try:
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            forward_model.train()
            batches = _batches(train_loader)
            for step in range(steps):
                lr = start_lr * factor**step
                for group, ratio in zip(optimizer.param_groups, ratios):
                    group["lr"] = lr * ratio
                inputs, targets = next(batches)
                inputs, targets = inputs.to(device), targets.to(device)
                optimizer.zero_grad(set_to_none=True)
                loss = compute_loss(loss_fn, forward_model(inputs).float(), targets)
                value = loss.item()
                if not math.isfinite(value):
                    diverged_at = lr
                    break
                loss.backward()
                optimizer.step()
                average = beta * average + (1 - beta) * value
                smooth = average / (1 - beta ** (step + 1))
                lrs.append(lr)
                losses.append(value)
                best = min(best, smooth)
                if step > 0 and smooth > diverge * best:
                    diverged_at = lr
                    break
    finally:
        model.load_state_dict(saved_state)
        optimizer.load_state_dict(saved_optimizer)
        for p, grad in saved_grads.items():
            p.grad = grad
        for m, mode in modes.items():
            m.training = mode
        if generator is not None:
            generator.set_state(saved_generator)
    if len(lrs) < 2:
        raise TLCourseError(f"the loss was not finite from the first steps (lr={start_lr:.3g}); "
                            "check the data and the model, or lower start_lr")
    smoothed = centred_average(losses)
    suggestion, method, steepest = suggest(lrs, smoothed)
    minimum = lrs[_lowest(smoothed)]
    return LRFind(lrs, losses, smoothed, suggestion, method, minimum, steepest, start_lr, end_lr, diverged_at)


def lr_find(config: TrainConfig | None = None, *, loaders=None, model: nn.Module | None = None,
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200,
            log: Callable[[str], None] = print, **overrides) -> LRFind:
    """The range test for a training config: the model, data, freezing and optimizer ``train`` would use.

    The sweep runs on the route ``tlcourse.fast.prepare`` picks (cached pooled features for a
    frozen backbone without augmentation; cached last-stage inputs for ``last_stage``). Pass
    ``model`` to sweep an existing (already frozen) model instead of a new one; it is restored.
    """
    from .data import loaders_for
    from .device import seed_everything
    from .fast import prepare
    from .freeze import apply_freeze
    from .models import model_for
    from .optim import make_optimizer

    cfg = (config or TrainConfig()).replace(**overrides).validate()
    if cfg.recipe == "fine_tune":   # its lr is the head phase's peak: sweep the head-only model, as fastai does
        if cfg.progress != "none":
            log("lr_find: recipe fine_tune's lr is the peak of its head-only phase; sweeping the head-only model")
        cfg = cfg.replace(recipe="single", freeze="head")
    cfg = cfg.resolved()
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    loaders = loaders or loaders_for(cfg)
    if model is None:
        model = apply_freeze(model_for(cfg, len(loaders.class_names)), cfg.freeze, bn_eval=cfg.bn_eval)
    model.to(device)
    setup = prepare(model, loaders, cfg, device, log=(lambda line: None) if cfg.progress == "none" else log)
    optimizer = make_optimizer(model, cfg.optimizer, start_lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                               head_lr_mult=cfg.head_lr_mult)
    result = lr_range_test(model, setup.train_loader, optimizer=optimizer, forward_model=setup.forward_model,
                           device=device, start_lr=start_lr, end_lr=end_lr, steps=steps)
    result.route = setup.description
    result.extra = {"arch": cfg.arch, "freeze": cfg.freeze, "optimizer": cfg.optimizer}
    return result

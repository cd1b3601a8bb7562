"""Checks for notebook 05 (full fine-tuning): read a learning rate off a range test, and give every
block its own rate (discriminative learning rates)."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import NotYet, check, require, run_learner


def lr_curve(centre: float, blow_up: float, *, seed: int = 0, steps: int = 100) -> tuple[list[float], list[float]]:
    """A range test's (lrs, losses): flat, falling fastest around ``centre``, lowest before ``blow_up``,
    then diverging; with noise, like a real mini-batch curve."""
    gen = torch.Generator().manual_seed(seed)
    lrs = torch.logspace(-7, 1, steps)
    x = lrs.log10()
    falling = 1.0 / (1.0 + torch.exp(-(x - math.log10(centre)) / 0.35))
    exploding = torch.clamp(x - math.log10(blow_up), min=0) ** 2 * 3
    losses = 1.2 - 0.9 * falling + exploding + 0.03 * torch.randn(steps, generator=gen)
    return lrs.tolist(), losses.tolist()


@check
def pick_lr(fn):
    """The learner's ``pick_lr(lrs, losses) -> lr``, tried on three range-test curves."""
    require(pick_lr=fn)
    for seed, (centre, blow_up) in enumerate([(1e-4, 1e-2), (1e-3, 3e-2), (3e-3, 2e-1)]):
        lrs, losses = lr_curve(centre, blow_up, seed=seed)
        got = run_learner(fn, lrs, losses, what="pick_lr")
        if not isinstance(got, int | float) or isinstance(got, bool) or not got > 0:
            raise NotYet(f"pick_lr must return a learning rate (a positive number), got {got!r}")
        lowest = lrs[min(range(len(losses)), key=lambda i: sum(losses[max(0, i - 3):i + 4]))]
        if got >= lowest / 2:
            raise NotYet(f"on a curve whose loss is lowest near {lowest:.1g} you picked {got:.2g}: at the minimum the "
                         "loss is about to blow up; pick a lower rate, where the (smoothed) loss falls fastest")
        if got < centre / 10:
            raise NotYet(f"you picked {got:.2g}, where the loss is still flat: so low a rate learns slowly; "
                         "look where the smoothed loss falls fastest")
    return ("on three noisy curves your rate lies where the loss falls, below the minimum: fast learning "
            "with room before it diverges")


@check
def discriminative_groups(model, groups, lr_all: float, head_lr_mult: float):
    """Param groups for full fine-tuning: every parameter once; rates never falling from the first
    block (``lr_all``) to the head (``lr_all * head_lr_mult``)."""
    require(model=model, groups=groups)
    from ..archs import block_of
    from ..freeze import blocks

    if not isinstance(model, nn.Module):
        raise NotYet(f"model must be the network, got {type(model).__name__}")
    try:
        optimizer = torch.optim.SGD(groups, lr=1.0)
    except Exception as exc:
        raise NotYet(f"groups must be a list of {{'params': [...], 'lr': rate}} dicts: {exc}") from None
    rate, seen = {}, set()
    for g in optimizer.param_groups:
        for p in g["params"]:
            if id(p) in seen:
                raise NotYet("a parameter is in two groups: each one may appear once")
            seen.add(id(p))
            rate[id(p)] = g["lr"]
    names = dict(model.named_parameters())
    missing = [n for n, p in names.items() if id(p) not in rate]
    if missing:
        raise NotYet(f"{len(missing)} parameters are in no group (e.g. {missing[0]}): full fine-tuning trains them all")
    order = list(blocks(model))
    per_block = {}
    for n, p in names.items():
        per_block.setdefault(block_of(n), set()).add(rate[id(p)])
    for b, rates in per_block.items():
        if len(rates) > 1:
            raise NotYet(f"{b} has parameters at different rates: one rate per block")
    rates = [per_block[b].pop() for b in order]
    first, head = rates[0], rates[-1]
    if not math.isclose(first, lr_all, rel_tol=1e-6):
        raise NotYet(f"the first block ({order[0]}) trains at {first:g}: it holds the most general features, "
                     f"so it takes the lowest rate, lr_all={lr_all:g}")
    if not math.isclose(head, lr_all * head_lr_mult, rel_tol=1e-6):
        raise NotYet(f"the head ({order[-1]}) trains at {head:g}: a fresh head takes lr_all * head_lr_mult")
    drops = [(a, b) for a, b in zip(order, order[1:]) if rates[order.index(b)] < rates[order.index(a)] * (1 - 1e-9)]
    if drops:
        raise NotYet(f"the rate falls from {drops[0][0]} to {drops[0][1]}: deeper blocks should move at least as much")
    if len(set(rates)) < 3:
        raise NotYet("only two rates (body and head): let the body's blocks rise step by step towards the head")
    return (f"{len(set(rates))} rates from {first:g} ({order[0]}) up to {head:g} ({order[-1]}) over "
            f"{len(order)} blocks: general features move least, the new head most")

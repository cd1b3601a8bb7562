"""Optimizers and schedulers that only ever see trainable parameters.

Per-block learning rates follow d2l's fine-tuning chapter: the new head learns faster
(e.g. 10x) than the pretrained body.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from . import TLCourseError
from .archs import block_of
from .config import OPTIMIZERS, SCHEDULERS, check_field
from .freeze import head_block


def check_lr(lr: float) -> None:
    check_field("lr", lr)


def param_groups(
    model: nn.Module,
    lr: float,
    *,
    head_lr_mult: float = 1.0,
    block_lrs: Mapping[str, float] | None = None,
) -> list[dict]:
    """Trainable parameters grouped by learning rate.

    ``block_lrs`` maps block names (``layer4``, ``fc``…) to their own rate; otherwise the head
    gets ``lr * head_lr_mult`` and every other block ``lr``.
    """
    check_lr(lr)
    head = head_block(model)
    rates = dict(block_lrs or {})
    # A typo in a block name or a zero rate would otherwise silently train at the wrong rate.
    known = list(dict.fromkeys(block_of(name) for name, _ in model.named_parameters()))
    unknown = [b for b in rates if b not in known]
    if unknown:
        raise TLCourseError(f"block_lrs names unknown block(s) {', '.join(unknown)}; "
                            f"this model has {', '.join(known)}")
    bad = {b: r for b, r in rates.items() if r <= 0}
    if bad or head_lr_mult <= 0:
        raise TLCourseError(f"learning rates must be > 0 (head_lr_mult={head_lr_mult}, block_lrs={rates})")
    groups: dict[float, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        block = block_of(name)
        rate = rates.get(block, lr * head_lr_mult if block == head else lr)
        groups.setdefault(rate, []).append(p)
    if not groups:
        raise TLCourseError("no trainable parameters: every block is frozen; unfreeze at least the head")
    return [{"params": ps, "lr": rate} for rate, ps in groups.items()]


def make_optimizer(model: nn.Module, name: str = "adam", lr: float = 1e-3, *, weight_decay: float = 0.0,
                   momentum: float = 0.9, head_lr_mult: float = 1.0,
                   block_lrs: Mapping[str, float] | None = None) -> torch.optim.Optimizer:
    groups = param_groups(model, lr, head_lr_mult=head_lr_mult, block_lrs=block_lrs)
    if weight_decay < 0:
        raise TLCourseError(f"weight_decay={weight_decay} must be >= 0")
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise TLCourseError(f"optimizer={name!r} is not supported; choose one of {', '.join(OPTIMIZERS)}")


def make_scheduler(optimizer: torch.optim.Optimizer, name: str = "none", *, epochs: int = 10,
                   step_size: int = 7, gamma: float = 0.1):
    """``step`` is the PyTorch tutorial's StepLR(7, 0.1); ``cosine`` anneals to 0 over ``epochs``."""
    name = (name or "none").lower()
    if name == "none":
        return None
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    raise TLCourseError(f"scheduler={name!r} is not supported; choose one of {', '.join(SCHEDULERS)}")

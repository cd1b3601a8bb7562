"""Cutting a model in two: the frozen prefix computed once, and the trainable suffix ``fit`` runs.

Every fast route starts here: where a model can be cut (``tlcourse.archs`` names the points),
and whether the part in front of the cut is really a fixed function of its input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import TLCourseError
from ..archs import spec_of
from ..freeze import trunk

#: Cut points: before the head (pooled features) and before the last stage.
CUT_POINTS = ("features", "layer3")


class Pool(nn.Module):
    """Global average pooling + flatten, as at the end of ResNet and MobileNetV2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


@dataclass
class Split:
    """A model cut in two: ``prefix`` (frozen, computed once) and ``suffix`` (trained)."""

    prefix: nn.Module
    suffix: nn.Module
    point: str          # human name of what the prefix outputs, e.g. "layer3 activations"


def split_model(model: nn.Module, at: str) -> Split:
    """Cut a model before its head (``at="features"``) or before its last stage (``at="layer3"``).

    The cut points come from ``tlcourse.archs``: the trunk runs in order, then global average
    pooling, then the head. Both halves hold the model's own submodules (shared parameters).
    """
    if at not in CUT_POINTS:
        raise TLCourseError(f"cannot split at {at!r}; choose 'features' or 'layer3'")
    spec = spec_of(model)
    modules = trunk(model)
    head = model.get_submodule(spec.head)
    if at == "features":
        return Split(nn.Sequential(*(m for _, m in modules), Pool()), head, "pooled features")
    names = [n for n, _ in modules]
    cut = names.index(spec.last_stage[0])
    return Split(nn.Sequential(*(m for _, m in modules[:cut])),
                 nn.Sequential(*(m for _, m in modules[cut:]), Pool(), head),
                 f"{names[cut - 1]} activations")


def prefix_problem(prefix: nn.Module) -> str | None:
    """Why ``prefix`` is *not* a fixed function of its input during training, or None.

    It must have no trainable parameter, and nothing in it may change behaviour in training
    mode (BatchNorm updating running statistics, Dropout): both are checked after ``train()``.
    """
    trainable = [n for n, p in prefix.named_parameters() if p.requires_grad]
    if trainable:
        return f"the layers before the cut are not frozen ({trainable[0]} is trainable)"
    modes = {m: m.training for m in prefix.modules()}
    try:
        prefix.train()
        moving = [n for n, m in prefix.named_modules() if m.training and _is_random_layer(m)]
    finally:
        for m, mode in modes.items():
            m.training = mode
    if moving:
        return (f"frozen {moving[0]} would still run in training mode (bn_eval=False), so its "
                "output changes every step")
    return None


def _is_random_layer(module: nn.Module) -> bool:
    """Layers whose training-mode output is not a fixed function of the input."""
    from torchvision.ops import StochasticDepth

    return isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout, StochasticDepth))


class CachedForward(nn.Module):
    """What ``fit`` feeds cached tensors to: the trainable suffix of the real model."""

    def __init__(self, suffix: nn.Module):
        super().__init__()
        self.suffix = suffix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.suffix.parameters()).dtype
        return self.suffix(x.to(dtype))

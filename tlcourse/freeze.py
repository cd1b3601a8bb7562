"""Freeze and unfreeze a model block by block, in the spirit of timm's freeze helpers.

A *block* is a top-level child with parameters (``conv1``, ``bn1``, ``layer1``..``layer4``,
``fc`` on ResNets). MobileNetV2 keeps its body in one ``features`` Sequential, so its blocks
are ``features.0`` .. ``features.18`` and ``classifier``.

``requires_grad=False`` stops gradients but *not* BatchNorm's running statistics, which keep
moving whenever the layer runs in training mode. With ``bn_eval=True`` (the default) frozen
BatchNorm layers stay in eval mode even after ``model.train()``.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from . import TLCourseError

PRESETS = ("head", "last_stage", "all")

#: Blocks that make up the last stage (the stride-32 part of the network) per family.
_LAST_STAGE = {
    "resnet": ["layer4"],
    "mobilenet_v2": [f"features.{i}" for i in range(14, 19)],
}


def _expand(name: str, module: nn.Module) -> bool:
    return name == "features" and isinstance(module, nn.Sequential)


def blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Ordered ``{block name: module}`` for every block that owns parameters."""
    out: dict[str, nn.Module] = {}
    for name, child in model.named_children():
        if _expand(name, child):
            for sub, grandchild in child.named_children():
                if any(True for _ in grandchild.parameters()):
                    out[f"{name}.{sub}"] = grandchild
        elif any(True for _ in child.parameters()):
            out[name] = child
    return out


def block_of(param_name: str) -> str:
    """The block a parameter belongs to: ``layer4.1.conv2.weight`` → ``layer4``."""
    parts = param_name.split(".")
    return ".".join(parts[:2]) if parts[0] == "features" else parts[0]


def head_block(model: nn.Module) -> str:
    return "fc" if hasattr(model, "fc") else "classifier"


def preset_blocks(model: nn.Module, preset: str) -> list[str]:
    """Block names left trainable by ``preset`` (``head``, ``last_stage`` or ``all``)."""
    names = list(blocks(model))
    head = head_block(model)
    if preset == "head":
        return [head]
    if preset == "last_stage":
        family = "resnet" if hasattr(model, "layer4") else "mobilenet_v2"
        return [*_LAST_STAGE[family], head]
    if preset == "all":
        return names
    raise TLCourseError(f"freeze={preset!r} is not a preset; choose one of {', '.join(PRESETS)}")


class _KeepsEvalWhenFrozen:
    """BatchNorm that refuses training mode while all of its own parameters are frozen."""

    def train(self, mode: bool = True):
        frozen = not any(p.requires_grad for p in self.parameters(recurse=False))
        return super().train(mode and not frozen)


class FrozenStatsBatchNorm1d(_KeepsEvalWhenFrozen, nn.BatchNorm1d):
    pass


class FrozenStatsBatchNorm2d(_KeepsEvalWhenFrozen, nn.BatchNorm2d):
    pass


_SWAP = {nn.BatchNorm1d: FrozenStatsBatchNorm1d, nn.BatchNorm2d: FrozenStatsBatchNorm2d}
_UNSWAP = {v: k for k, v in _SWAP.items()}


def keep_frozen_bn_in_eval(model: nn.Module, enable: bool = True) -> nn.Module:
    """Make frozen BatchNorm layers ignore ``model.train()`` (or undo that with ``enable=False``).

    The layers keep their parameters and buffers (state_dicts are unchanged); only their class
    is switched to a subclass whose ``train()`` checks ``requires_grad`` each time it is called.
    """
    table = _SWAP if enable else _UNSWAP
    for module in model.modules():
        new_class = table.get(type(module))
        if new_class is not None:
            module.__class__ = new_class
    model.train(model.training)  # re-apply the current mode under the new rule
    return model


def freeze_all(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def set_trainable(model: nn.Module, names: Iterable[str], *, bn_eval: bool = True) -> nn.Module:
    """Freeze everything, then unfreeze exactly the blocks in ``names``."""
    names = list(names)
    available = blocks(model)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise TLCourseError(f"unknown block(s) {', '.join(unknown)}; this model has {', '.join(available)}")
    freeze_all(model)
    for name in names:
        for p in available[name].parameters():
            p.requires_grad_(True)
    keep_frozen_bn_in_eval(model, bn_eval)
    return model


def apply_freeze(model: nn.Module, preset: str = "head", *, bn_eval: bool = True) -> nn.Module:
    """Apply a preset: ``head`` (feature extraction), ``last_stage`` (layer4 + head), ``all``."""
    return set_trainable(model, preset_blocks(model, preset), bn_eval=bn_eval)


def trainable_blocks(model: nn.Module) -> list[str]:
    """Blocks with at least one trainable parameter."""
    return [n for n, m in blocks(model).items() if any(p.requires_grad for p in m.parameters())]

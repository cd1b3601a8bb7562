"""Freeze and unfreeze a model block by block, in the spirit of timm's freeze helpers.

A *block* is a module of the network's trunk that owns parameters (``conv1``, ``bn1``,
``layer1``..``layer4`` on ResNets; ``features.0`` .. ``features.18`` on MobileNetV2), or its head
(``fc``, ``classifier``).

``requires_grad=False`` stops gradients but *not* BatchNorm's running statistics, which keep
moving whenever the layer runs in training mode. With ``bn_eval=True`` (the default) frozen
BatchNorm layers stay in eval mode even after ``model.train()``, and so do the random layers
(Dropout, stochastic depth) inside frozen blocks: a frozen block is then a fixed function of its
input, which is what lets ``tlcourse.fast`` compute it once.

Which modules are blocks, the head and the last stage comes from ``tlcourse.archs``.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from . import TLCourseError
from .archs import block_of, spec_of
from .config import PRESETS

__all__ = ["PRESETS", "apply_freeze", "block_of", "blocks", "freeze_all", "head_block", "keep_frozen_bn_in_eval",
           "preset_blocks", "set_trainable", "trainable_blocks", "trunk"]


def trunk(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every module the forward pass runs before pooling, in order."""
    out = []
    for entry in spec_of(model).trunk:
        if entry.endswith(".*"):
            container = entry[:-2]
            out += [(f"{container}.{n}", m) for n, m in model.get_submodule(container).named_children()]
        else:
            out.append((entry, model.get_submodule(entry)))
    return out


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Ordered ``{block name: module}``: the trunk modules that own parameters, then the head."""
    head = head_block(model)
    out = {name: module for name, module in trunk(model) if _has_params(module)}
    out[head] = model.get_submodule(head)
    return out


def head_block(model: nn.Module) -> str:
    return spec_of(model).head


def preset_blocks(model: nn.Module, preset: str) -> list[str]:
    """Block names left trainable by ``preset`` (``head``, ``last_stage`` or ``all``)."""
    head = head_block(model)
    if preset == "head":
        return [head]
    if preset == "last_stage":
        return [*spec_of(model).last_stage, head]
    if preset == "all":
        return list(blocks(model))
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


class _KeepsEvalInFrozenBlock:
    """A parameter-free random layer that stays in eval mode while its whole block is frozen."""

    def train(self, mode: bool = True):
        return super().train(mode and not self.__dict__.get("_tlcourse_block_frozen", False))


class FrozenBlockDropout(_KeepsEvalInFrozenBlock, nn.Dropout):
    pass


_SWAP: dict[type, type] = {nn.BatchNorm1d: FrozenStatsBatchNorm1d, nn.BatchNorm2d: FrozenStatsBatchNorm2d,
                           nn.Dropout: FrozenBlockDropout}
try:  # stochastic depth (EfficientNet, ConvNeXt) drops whole residual branches at random
    from torchvision.ops import StochasticDepth

    class FrozenBlockStochasticDepth(_KeepsEvalInFrozenBlock, StochasticDepth):
        pass

    _SWAP[StochasticDepth] = FrozenBlockStochasticDepth
except ImportError:  # pragma: no cover - torchvision always has it
    pass
_UNSWAP = {v: k for k, v in _SWAP.items()}


def keep_frozen_bn_in_eval(model: nn.Module, enable: bool = True) -> nn.Module:
    """Make frozen BatchNorm layers, and random layers in frozen trunk blocks, ignore ``model.train()``.

    ``enable=False`` undoes it. The layers keep their parameters and buffers (state_dicts are
    unchanged); only their class is switched to a subclass whose ``train()`` checks
    ``requires_grad`` (BatchNorm: each time; random layers: their block's, as of this call).
    """
    table = _SWAP if enable else _UNSWAP
    owner = {}
    for _, block in trunk(model):
        for module in block.modules():
            owner[id(module)] = block
    for module in model.modules():
        new_class = table.get(type(module))
        if new_class is None:
            continue
        if enable and issubclass(new_class, _KeepsEvalInFrozenBlock):
            if id(module) not in owner:
                continue  # the head's dropout trains with the head
            block = owner[id(module)]
            module.__dict__["_tlcourse_block_frozen"] = not any(p.requires_grad for p in block.parameters())
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

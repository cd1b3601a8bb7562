"""Build a torchvision backbone with a new head, from torchvision's weights API or a local file.

``build_model("resnet18", num_classes=2, weights="DEFAULT")`` is what the notebooks call.
Weights are always loaded into the original 1000-class model first, and the head is replaced
afterwards, exactly as one would do by hand. Where named weights come from (local folder, hub
cache, download) is decided in ``tlcourse.weights``; its names are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from . import TLCourseError
from .archs import ARCHS, get_spec
from .heads import replace_head
from .weights import (
    check_arch,
    find_local_weights,
    is_random,
    is_weights_file,
    local_weights_file,
    locate,
    weights_cache_path,
    weights_enum,
)

__all__ = ["ARCHS", "build_model", "check_arch", "count_parameters", "find_local_weights", "load_backbone_weights",
           "local_weights_file", "replace_head", "weights_cache_path", "weights_enum"]


# --------------------------------------------------------------------------- weights

def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise TLCourseError(f"weights file {path} does not exist; check the path (or use weights=None)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, a full-model pickle, not a torch file at all
        raise TLCourseError(
            f"weights file {path} could not be read as a state_dict ({type(exc).__name__}); "
            "it must be a file saved with torch.save(model.state_dict(), ...)"
        ) from exc
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state"):  # checkpoint dicts nest the weights
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TLCourseError(f"weights file {path} holds no state_dict of tensors")
    return obj


def load_backbone_weights(model: nn.Module, path: str | Path, arch: str) -> list[str]:
    """Load a local state_dict into ``model`` (still carrying its ImageNet head).

    Head tensors may be missing or have another shape (a backbone-only file, or one saved
    after fine-tuning); every backbone tensor must match. Returns the keys left at init.
    """
    path = Path(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    head = get_spec(arch).head + "."
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    # BatchNorm's num_batches_tracked counter is absent from files saved before PyTorch 0.4.1
    # (torchvision's own ResNet weights among them); it carries no learned weights.
    backbone_missing = [k for k in missing if not k.startswith(head) and not k.endswith("num_batches_tracked")]
    # Extra backbone tensors mean a deeper sibling (resnet34 into resnet18 shares every name).
    unexpected = [k for k in state if k not in own and not k.startswith(head)]
    if backbone_missing or unexpected:
        first = (backbone_missing or unexpected)[0]
        raise TLCourseError(
            f"weights file {path} does not match arch={arch!r}: {len(backbone_missing)} of "
            f"{sum(not k.startswith(head) for k in own)} backbone tensors are missing or differ, "
            f"{len(unexpected)} are not in {arch} (first: {first}); use a file saved from {arch}"
        )
    model.load_state_dict(usable, strict=False)
    return missing


def _load_named_weights(arch: str, name: str) -> nn.Module:
    member = weights_enum(arch, name)
    found = locate(arch, name)  # the one lookup order (tlcourse.weights)
    if found.file is not None:
        model = tvm.get_model(arch, weights=None)
        load_backbone_weights(model, found.file, arch)
        return model
    try:
        return tvm.get_model(arch, weights=member)
    except OSError as exc:  # URLError / no network / proxy refusals
        filename = os.path.basename(member.url)
        cache = weights_cache_path(arch, name)
        raise TLCourseError(
            f"could not download {arch} weights {member} ({filename}): {exc}. Offline? put "
            f"{filename} in {cache.parent} (the torch hub cache), or in TLCOURSE_WEIGHTS_DIR, "
            f"or pass weights='path/to/file.pth' (or weights=None for random init)"
        ) from exc


# --------------------------------------------------------------------------- the model

def build_model(
    arch: str = "resnet18",
    num_classes: int = 2,
    weights: str | Path | None = "DEFAULT",
    head: str = "linear",
    **head_kwargs,
) -> nn.Module:
    """A torchvision ``arch`` with pretrained ``weights`` and a fresh ``head``.

    ``weights``: a torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``, ...), ``None``
    for random init, or a path to a local state_dict (offline classrooms). A name is looked up in
    ``TLCOURSE_WEIGHTS_DIR`` first (torchvision's file name, or for ``DEFAULT`` any backbone named
    after the arch), then the torch hub cache, then downloaded.
    """
    check_arch(arch)
    if is_random(weights):
        model = tvm.get_model(arch, weights=None)
        source = None
    elif is_weights_file(weights):
        model = tvm.get_model(arch, weights=None)
        load_backbone_weights(model, Path(weights).expanduser(), arch)
        source = str(weights)
    else:
        model = _load_named_weights(arch, str(weights))
        source = str(weights)
    # A plain dict (not a class) so that full-model pickles do not need extra classes.
    model.tlcourse_spec = {"arch": arch, "num_classes": num_classes, "head": head, "weights": source,
                           "head_kwargs": dict(head_kwargs)}
    return replace_head(model, num_classes, head, **head_kwargs)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def model_for(cfg, num_classes: int) -> nn.Module:
    """The new (unfrozen) model a ``TrainConfig`` describes: architecture, weights and head."""
    return build_model(cfg.arch, num_classes, weights=cfg.weights, head=cfg.head,
                       **({"dropout": cfg.dropout} if cfg.head == "mlp" else {}))

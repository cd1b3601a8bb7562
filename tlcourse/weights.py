"""Where a model's pretrained weights come from: the lookup order, written once.

``build_model`` (which loads weights) and ``choose_weights`` (which plans, for notebooks and the
course runner) both ask :func:`locate`, so they can never disagree about which file a name
means. The order for torchvision's ``arch`` weights ``name``:

1. torchvision's own file (``resnet18-f37072fd.pth``) in ``TLCOURSE_WEIGHTS_DIR``;
2. the torch hub cache (``$TORCH_HOME/hub/checkpoints/<file>``);
3. for ``DEFAULT`` only, any backbone named after the arch in ``TLCOURSE_WEIGHTS_DIR``
   (``mobilenet_v2_imagenet_backbone.pth``), so a classroom's folder works without renaming;
4. a download by torchvision.

torch and torchvision are imported inside the functions that need them: ``tlcourse.offline``
imports this module and must stay torch-free at import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import TLCourseError
from .archs import get_spec
from .settings import ENV_WEIGHTS_DIR, weights_dir

HUB_CACHE = "torch hub cache"
DOWNLOAD = "download"


def check_arch(arch: str) -> str:
    return get_spec(arch).name


def is_weights_file(weights) -> bool:
    """A local file rather than a torchvision weights name (the rule ``build_model`` uses)."""
    text = str(weights)
    return isinstance(weights, Path) or "/" in text or os.sep in text or text.endswith((".pth", ".pt"))


def is_random(weights) -> bool:
    return weights is None or str(weights).strip().lower() in ("none", "")


def weights_enum(arch: str, name: str):
    """torchvision's weights enum member for ``arch``, e.g. ``ResNet18_Weights.IMAGENET1K_V1``."""
    from torchvision import models as tvm

    enum = tvm.get_model_weights(check_arch(arch))
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        choices = ", ".join(["DEFAULT", *(m for m in enum.__members__ if m != "DEFAULT")])
        raise TLCourseError(f"weights={name!r} is not a {enum.__name__} name; choose one of {choices}") from None


def weights_cache_path(arch: str, name: str = "DEFAULT") -> Path:
    """Where torch hub keeps the downloaded file (``$TORCH_HOME/hub/checkpoints/<file>``)."""
    import torch

    url = weights_enum(arch, name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def find_local_weights(arch: str) -> Path | None:
    """A weights file for ``arch`` in ``TLCOURSE_WEIGHTS_DIR`` (e.g. ``mobilenet_v2_*.pth``), if any.

    Notebooks use this to pick up the offline classroom's backbone without hard-coding paths.
    """
    folder = weights_dir()
    if folder is None or not folder.is_dir():
        return None
    matches = sorted(p for p in folder.iterdir()
                     if p.is_file() and p.suffix in (".pth", ".pt")
                     and (p.stem == arch or (p.name.startswith(arch) and p.name[len(arch)] in "-_.")))
    return matches[0] if matches else None


def local_weights_file(arch: str, name: str = "DEFAULT") -> Path | None:
    """The file in ``TLCOURSE_WEIGHTS_DIR`` that stands for torchvision's ``arch`` weights ``name``.

    torchvision's own file name first (``resnet18-f37072fd.pth``); for ``DEFAULT`` also any
    backbone named after the arch (``mobilenet_v2_imagenet_backbone.pth``), so an offline
    classroom's folder works without renaming files.
    """
    folder = weights_dir()
    if folder is None or not folder.is_dir():
        return None
    exact = folder / os.path.basename(weights_enum(arch, name).url)
    if exact.is_file():
        return exact
    return find_local_weights(arch) if name == "DEFAULT" else None


@dataclass(frozen=True)
class Located:
    """Where :func:`locate` found ``arch``'s weights ``name``: a local ``file`` (from
    ``TLCOURSE_WEIGHTS_DIR``) to load by hand, or ``file=None`` for torchvision to load from the
    hub cache or download; ``source`` names which (``ENV_WEIGHTS_DIR``, ``HUB_CACHE``, ``DOWNLOAD``)."""

    file: Path | None
    source: str


def locate(arch: str, name: str = "DEFAULT") -> Located:
    """Where torchvision's ``arch`` weights ``name`` come from, in the order of the module doc.

    ``DOWNLOAD`` means "not here": whether the network answers is the caller's question.
    """
    local = local_weights_file(arch, name)
    cache = weights_cache_path(arch, name)
    if local is not None and (local.name == cache.name or not cache.is_file()):
        return Located(local, ENV_WEIGHTS_DIR)
    return Located(None, HUB_CACHE if cache.is_file() else DOWNLOAD)

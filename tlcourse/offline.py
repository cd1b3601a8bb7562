"""One offline policy for pretrained weights, shared by the notebooks and the course runner.

A notebook asks for weights with ``choose_weights(arch, weights, pretrained_needed=...)`` and
gets exactly those when they can be had: ``TLCOURSE_WEIGHTS_DIR``, the torch hub cache, or a
download. When they cannot (no network, nothing local), it falls back and prints one short notice:

* a notebook about *structure* (``pretrained_needed=False``) gets random weights: the structure
  and the parameter counts it teaches do not depend on them;
* a notebook that *trains or predicts* (``pretrained_needed=True``) gets another architecture's
  pretrained backbone that is here (MobileNetV2 first), because results from random weights
  teach nothing true. Only when no pretrained backbone is here at all does it get random weights,
  with ``pretrained=False`` so that its accuracy claims are skipped, and the notice says how to fix it.

Random weights asked for explicitly (``None``/``"none"``) and local files are used as given. The
course runner calls the same function to plan each notebook's parameters, so a headless run and
a learner in JupyterLab get the same weights. Where weights are looked for, and in which order,
is ``tlcourse.weights``. Nothing here imports torch at module level.
"""

from __future__ import annotations

import functools
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .archs import ARCHS
from .settings import ENV_WEIGHTS_DIR, weights_dir
from .weights import (
    DOWNLOAD,
    HUB_CACHE,
    check_arch,
    is_random,
    is_weights_file,
    locate,
    weights_cache_path,
    weights_enum,
)

#: Where a training notebook looks first when its own arch has no pretrained weights here: the
#: backbone an offline classroom is most likely to have (see README, "Offline classrooms").
FALLBACK_ARCHS = ("mobilenet_v2", *(a for a in ARCHS if a != "mobilenet_v2"))
PROBE_TIMEOUT = 3.0


@dataclass(frozen=True)
class WeightsChoice:
    """What a notebook runs with: ``arch``, ``weights`` (a name, a file path or None), whether
    they are ``pretrained``, where they come from (``source``) and the ``notice`` printed when the
    request could not be met."""

    arch: str
    weights: str | None
    pretrained: bool
    source: str
    notice: str | None = None

    @property
    def label(self) -> str:
        """e.g. ``"mobilenet_v2 mobilenet_v2_imagenet_backbone.pth"``, ``"resnet18 none (random init)"``."""
        return weights_label(self.arch, self.weights)


def weights_label(arch: str, weights) -> str:
    """How summaries name a model's weights: a file by its name, ``None`` as random init."""
    if is_random(weights):
        return f"{arch} none (random init)"
    return f"{arch} {Path(str(weights)).name if is_weights_file(weights) else weights}"


@functools.lru_cache(maxsize=32)
def reachable(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether a HEAD request for ``url`` succeeds (asked once per process)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def find_weights(arch: str, name: str = "DEFAULT", *, network: bool = True) -> tuple[str, str] | None:
    """``(weights to pass to build_model, source)`` for torchvision's ``arch`` weights ``name``, or None.

    The order is ``build_model``'s (``tlcourse.weights.locate``); a download counts only when
    ``network`` is allowed and the file's URL answers. A local file is returned as its path, so
    that plain torchvision code can load it too.
    """
    found = locate(arch, name)
    if found.file is not None:
        return str(found.file), found.source
    if found.source == HUB_CACHE:
        return name, HUB_CACHE
    if network and reachable(weights_enum(arch, name).url):
        return name, DOWNLOAD
    return None


def choose_weights(arch: str, weights: str | Path | None = "DEFAULT", *, pretrained_needed: bool,
                   echo=print) -> WeightsChoice:
    """The weights a notebook runs with; offline, the course's fallback plus one notice (see module doc).

    ``pretrained_needed``: True for notebooks that train or predict (pass ``not smoke``), False for
    notebooks whose lesson does not depend on the weights. ``echo`` prints the notice (None: silent).
    """
    arch = check_arch(arch)
    if is_random(weights):
        return WeightsChoice(arch, None, False, "random init")
    if is_weights_file(weights):
        return WeightsChoice(arch, str(weights), True, "file")
    name = str(weights)
    found = find_weights(arch, name)
    if found is not None:
        return WeightsChoice(arch, found[0], True, found[1])

    filename = weights_cache_path(arch, name).name
    where = f"the torch hub cache or {ENV_WEIGHTS_DIR}" if weights_dir() else "the torch hub cache"
    missing = f"{arch} {name} weights ({filename}) are not in {where} and cannot be downloaded"
    choice = None
    if pretrained_needed:
        for other in FALLBACK_ARCHS:
            found = find_weights(other, network=False) if other != arch else None
            if found is not None:
                shown = Path(found[0]).name if is_weights_file(found[0]) else f"{found[0]}, {found[1]}"
                choice = WeightsChoice(other, found[0], True, found[1], f"notice: {missing}; using {other} "
                                       f"with its pretrained backbone ({shown}) instead.")
                break
        else:
            choice = WeightsChoice(arch, None, False, "random init", (
                f"notice: {missing}, and no other pretrained backbone is here: training from random weights, "
                f"so the accuracy checks are skipped. Fix: run once online, or set {ENV_WEIGHTS_DIR} to a "
                f"folder holding {filename} or a mobilenet_v2*.pth backbone."))
    else:
        choice = WeightsChoice(arch, None, False, "random init", f"notice: {missing}; using random weights "
                               "(weights=None): the structure and parameter counts are the same.")
    if echo is not None:
        echo(choice.notice)
    return choice

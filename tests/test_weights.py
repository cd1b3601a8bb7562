"""The one lookup order for pretrained weights (tlcourse.weights), and build_model and choose_weights
agreeing on it: the file the plan names is the file the model is built from.

No network: the torch hub cache and TLCOURSE_WEIGHTS_DIR point into tmp folders, and the weight
files are random MobileNetV2 state_dicts, told apart by their first tensor.
"""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from tlcourse import offline
from tlcourse.models import build_model
from tlcourse.settings import ENV_WEIGHTS_DIR
from tlcourse.weights import DOWNLOAD, HUB_CACHE, locate, weights_cache_path

ARCH = "mobilenet_v2"
FIRST = "features.0.0.weight"


@pytest.fixture
def places(tmp_path, monkeypatch):
    """An empty hub cache and weights folder, and no network for the offline policy."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(folder))
    monkeypatch.setattr(offline, "reachable", lambda url: False)
    return weights_cache_path(ARCH), folder


def _save(path, value: float):
    """A full MobileNetV2 state_dict whose first conv is filled with ``value`` (to tell files apart)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = tvm.mobilenet_v2(weights=None).state_dict()
    state[FIRST].fill_(value)
    torch.save(state, path)
    return path


def _built_from(value: float) -> bool:
    return bool(torch.all(build_model(ARCH, 3, weights="DEFAULT").state_dict()[FIRST] == value))


def test_nothing_here_means_download(places):
    assert locate(ARCH) == locate(ARCH, "DEFAULT")
    assert locate(ARCH).file is None and locate(ARCH).source == DOWNLOAD
    assert offline.find_weights(ARCH, network=False) is None


def test_hub_cache_beats_a_backbone_named_after_the_arch(places):
    cache, folder = places
    _save(cache, 1.0)
    _save(folder / f"{ARCH}_imagenet_backbone.pth", 2.0)
    assert locate(ARCH).source == HUB_CACHE
    assert offline.find_weights(ARCH, network=False) == ("DEFAULT", HUB_CACHE)
    assert _built_from(1.0)


def test_torchvisions_own_file_in_the_folder_beats_the_hub_cache(places):
    cache, folder = places
    _save(cache, 1.0)
    exact = _save(folder / cache.name, 3.0)
    assert locate(ARCH).file == exact
    assert offline.find_weights(ARCH, network=False) == (str(exact), ENV_WEIGHTS_DIR)
    assert _built_from(3.0)


def test_a_backbone_in_the_folder_is_used_when_nothing_else_is_here(places):
    _, folder = places
    backbone = _save(folder / f"{ARCH}_imagenet_backbone.pth", 2.0)
    assert locate(ARCH).file == backbone and locate(ARCH).source == ENV_WEIGHTS_DIR
    choice = offline.choose_weights(ARCH, pretrained_needed=True, echo=None)
    assert (choice.weights, choice.source, choice.notice) == (str(backbone), ENV_WEIGHTS_DIR, None)
    assert _built_from(2.0)
    # only DEFAULT stands for "any backbone of the arch": another weights name is not this file
    other = next(name for name in tvm.get_model_weights(ARCH).__members__ if name != "DEFAULT")
    assert locate(ARCH, other).file is None

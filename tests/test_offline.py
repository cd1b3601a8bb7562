"""The one offline weights policy (tlcourse.offline): what a notebook gets, with and without a network.

No test touches the network: ``reachable`` is replaced, the torch hub cache and
TLCOURSE_WEIGHTS_DIR point into tmp folders, and backbone files are generated.
"""

from __future__ import annotations

import pytest
import torch
from torchvision import models as tvm

from tlcourse import TLCourseError, offline
from tlcourse.models import build_model, weights_cache_path
from tlcourse.offline import choose_weights
from tlcourse.settings import ENV_WEIGHTS_DIR

RESNET18_FILE = "resnet18-f37072fd.pth"


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """An empty torch hub cache, no TLCOURSE_WEIGHTS_DIR, and every download probe fails."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.delenv(ENV_WEIGHTS_DIR, raising=False)
    probes = []
    monkeypatch.setattr(offline, "reachable", lambda url: probes.append(url) or False)
    return probes


@pytest.fixture
def weights_folder(tmp_path, monkeypatch):
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(folder))
    return folder


def _mobilenet_backbone(path):
    """A backbone-only MobileNetV2 file like the classroom's (``features.*``, no classifier)."""
    torch.manual_seed(1)
    state = {k: v for k, v in tvm.mobilenet_v2(weights=None).state_dict().items() if k.startswith("features.")}
    torch.save(state, path)
    return state


def test_structure_notebook_falls_back_to_random_weights_with_one_notice(no_network, capsys):
    choice = choose_weights("resnet18", "DEFAULT", pretrained_needed=False)
    assert (choice.arch, choice.weights, choice.pretrained) == ("resnet18", None, False)
    printed = capsys.readouterr().out
    assert printed.count("notice:") == 1 and printed.strip() == choice.notice
    assert RESNET18_FILE in choice.notice and "random weights" in choice.notice and "\n" not in choice.notice
    assert no_network and no_network[0].endswith(RESNET18_FILE)  # the requested weights were tried first
    assert choice.label == "resnet18 none (random init)"


def test_training_notebook_falls_back_to_a_local_pretrained_backbone(no_network, weights_folder, capsys):
    state = _mobilenet_backbone(weights_folder / "mobilenet_v2_imagenet_backbone.pth")
    choice = choose_weights("resnet18", "DEFAULT", pretrained_needed=True)
    assert choice.arch == "mobilenet_v2" and choice.pretrained and choice.source == ENV_WEIGHTS_DIR
    assert choice.weights == str(weights_folder / "mobilenet_v2_imagenet_backbone.pth")
    assert choice.label == "mobilenet_v2 mobilenet_v2_imagenet_backbone.pth"
    assert "mobilenet_v2" in choice.notice and capsys.readouterr().out.count("notice:") == 1
    # what the notebook then builds carries the backbone; so does plain weights="DEFAULT" for that arch
    for weights in (choice.weights, "DEFAULT"):
        model = build_model(choice.arch, 3, weights=weights)
        assert torch.equal(model.state_dict()["features.0.0.weight"], state["features.0.0.weight"])
        assert model.classifier[-1].out_features == 3


def test_training_notebook_without_any_backbone_trains_from_random_weights(no_network, weights_folder):
    choice = choose_weights("resnet18", "DEFAULT", pretrained_needed=True, echo=None)
    assert (choice.arch, choice.weights, choice.pretrained) == ("resnet18", None, False)
    assert "accuracy checks are skipped" in choice.notice and ENV_WEIGHTS_DIR in choice.notice


def test_weights_that_are_here_are_used_as_asked(no_network, weights_folder, capsys):
    # torch hub cache: the name is kept (torchvision loads it from there), nothing is probed or printed
    cache = weights_cache_path("resnet18")
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"")
    choice = choose_weights("resnet18", "DEFAULT", pretrained_needed=True)
    assert (choice.arch, choice.weights, choice.notice) == ("resnet18", "DEFAULT", None)
    assert choice.source == "torch hub cache"
    # torchvision's own file in TLCOURSE_WEIGHTS_DIR wins, as a path (plain torchvision code can load it)
    (weights_folder / RESNET18_FILE).write_bytes(b"")
    choice = choose_weights("resnet18", "IMAGENET1K_V1", pretrained_needed=False)
    assert choice.weights == str(weights_folder / RESNET18_FILE) and choice.pretrained
    assert no_network == [] and capsys.readouterr().out == ""


def test_random_init_and_files_are_taken_as_given(no_network):
    for value in (None, "none", "None", ""):
        choice = choose_weights("resnet18", value, pretrained_needed=True)
        assert choice.weights is None and choice.notice is None and not choice.pretrained
    choice = choose_weights("mobilenet_v2", "some/dir/backbone.pth", pretrained_needed=True)
    assert (choice.weights, choice.pretrained) == ("some/dir/backbone.pth", True)
    assert choice.label == "mobilenet_v2 backbone.pth"
    assert no_network == []


def test_online_keeps_the_name_for_torchvision_to_download(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.delenv(ENV_WEIGHTS_DIR, raising=False)
    monkeypatch.setattr(offline, "reachable", lambda url: True)
    choice = choose_weights("resnet50", "IMAGENET1K_V2", pretrained_needed=True)
    assert (choice.arch, choice.weights, choice.notice) == ("resnet50", "IMAGENET1K_V2", None)
    assert choice.source == "download"


def test_bad_names_are_one_line_errors(no_network):
    with pytest.raises(TLCourseError, match="not a ResNet18_Weights name"):
        choose_weights("resnet18", "IMAGENET_BEST", pretrained_needed=True)
    with pytest.raises(TLCourseError):
        choose_weights("resnet19", "DEFAULT", pretrained_needed=False)


def test_backbone_files_are_matched_by_arch_name(weights_folder):
    from tlcourse.models import find_local_weights

    for name in ("resnet18_ants.pth", "resnet181.pth", "mobilenet_v2-x.pt", "notes.txt"):
        (weights_folder / name).write_bytes(b"")
    assert find_local_weights("resnet18").name == "resnet18_ants.pth"
    assert find_local_weights("mobilenet_v2").name == "mobilenet_v2-x.pt"
    assert find_local_weights("resnet50") is None

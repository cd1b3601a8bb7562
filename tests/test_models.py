"""tlcourse.models: architectures, heads, local weight files, offline failure of named weights."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from tlcourse import TLCourseError
from tlcourse.models import build_model, count_parameters, load_backbone_weights
from tlcourse.settings import ENV_WEIGHTS_DIR

RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1


def _forward(model: nn.Module, n: int = 2, size: int = 64) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(n, 3, size, size))


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "mobilenet_v2"])
def test_heads_output_shapes(arch):
    torch.manual_seed(0)
    for head, width in (("linear", 2), ("binary", 1), ("mlp", 2)):
        model = build_model(arch, 2, weights=None, head=head)
        assert _forward(model).shape == (2, width), (arch, head)
        assert model.tlcourse_spec == {"arch": arch, "num_classes": 2, "head": head, "weights": None,
                                       "head_kwargs": {}}


def test_head_structure():
    assert build_model("resnet18", 5, weights=None).fc.in_features == 512
    assert build_model("resnet18", 5, weights=None).fc.out_features == 5
    assert build_model("resnet50", 2, weights=None).fc.in_features == 2048
    mlp = build_model("resnet18", 3, weights=None, head="mlp").fc
    assert isinstance(mlp, nn.Sequential) and any(isinstance(m, nn.Dropout) for m in mlp)
    assert mlp[0].in_features == 512 and mlp[-1].out_features == 3
    binary = build_model("resnet18", 2, weights=None, head="binary").fc
    assert isinstance(binary, nn.Linear) and binary.out_features == 1
    mobile = build_model("mobilenet_v2", 2, weights=None).classifier
    assert isinstance(mobile[0], nn.Dropout) and mobile[-1].in_features == 1280


def test_bad_settings_name_the_setting():
    with pytest.raises(TLCourseError, match="head='binary'.*3"):
        build_model("resnet18", 3, weights=None, head="binary")
    with pytest.raises(TLCourseError, match="arch='vgg16'.*resnet18"):
        build_model("vgg16", 2, weights=None)
    with pytest.raises(TLCourseError, match="head='svm'.*linear"):
        build_model("resnet18", 2, weights=None, head="svm")
    with pytest.raises(TLCourseError, match="num_classes=1"):
        build_model("resnet18", 1, weights=None)
    with pytest.raises(TLCourseError, match="weights='IMAGENET9K'.*IMAGENET1K_V1"):
        build_model("resnet18", 2, weights="IMAGENET9K")


# --------------------------------------------------------------------------- local files

@pytest.fixture(scope="module")
def random_resnet18() -> nn.Module:
    torch.manual_seed(123)
    return tvm.resnet18()


def _assert_backbone_equal(model: nn.Module, source: nn.Module, head: str = "fc."):
    mine = model.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith(head):
            assert torch.equal(mine[key], value), key


def test_local_state_dict_loads_backbone_and_keeps_new_head(tmp_path, random_resnet18):
    path = tmp_path / "backbone.pth"
    torch.save(random_resnet18.state_dict(), path)
    model = build_model("resnet18", 2, weights=str(path))
    _assert_backbone_equal(model, random_resnet18)
    assert model.fc.weight.shape == (2, 512)  # the new head, not the 1000-class one
    assert model.tlcourse_spec["weights"] == str(path)
    assert build_model("resnet18", 2, weights=path).fc.out_features == 2  # a Path works too


def test_checkpoint_dict_with_model_key(tmp_path, random_resnet18):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "model": random_resnet18.state_dict(), "best_acc": 0.9}, path)
    _assert_backbone_equal(build_model("resnet18", 2, weights=path), random_resnet18)


def test_state_dict_without_num_batches_tracked(tmp_path, random_resnet18):
    """Files saved before PyTorch 0.4.1 (torchvision's own ResNet weights among them) lack it."""
    state = {k: v for k, v in random_resnet18.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    _assert_backbone_equal(build_model("resnet18", 2, weights=path), random_resnet18)


def test_finetuned_file_with_other_head_loads_backbone(tmp_path, random_resnet18):
    finetuned = build_model("resnet18", 2, weights=None, head="mlp")
    backbone = {k: v for k, v in random_resnet18.state_dict().items() if not k.startswith("fc.")}
    finetuned.load_state_dict(backbone, strict=False)
    path = tmp_path / "finetuned.pth"
    torch.save(finetuned.state_dict(), path)
    _assert_backbone_equal(build_model("resnet18", 5, weights=path), random_resnet18)


@pytest.mark.parametrize("other", ["resnet34", "resnet50", "mobilenet_v2"])
def test_state_dict_of_another_arch_errors(tmp_path, other):
    path = tmp_path / f"{other}.pth"
    torch.save(tvm.get_model(other, weights=None).state_dict(), path)
    with pytest.raises(TLCourseError) as info:
        build_model("resnet18", 2, weights=path)
    assert str(path) in str(info.value) and "resnet18" in str(info.value)


@pytest.mark.parametrize("content", [b"this is not a torch file", b""], ids=["text", "empty"])
def test_non_torch_file_errors_cleanly(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(TLCourseError, match="could not be read as a state_dict") as info:
        build_model("resnet18", 2, weights=path)
    assert str(path) in str(info.value)


def test_missing_file_errors(tmp_path):
    with pytest.raises(TLCourseError, match="does not exist"):
        build_model("resnet18", 2, weights=tmp_path / "nope.pth")


def test_tensor_dict_of_wrong_kind_errors(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(TLCourseError, match="no state_dict"):
        build_model("resnet18", 2, weights=path)


# --------------------------------------------------------------------------- named weights offline

@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """torch hub cache in tmp, and every download attempt fails as it does without a network."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    monkeypatch.delenv(ENV_WEIGHTS_DIR, raising=False)
    attempts = []

    def no_network(url, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    return hub, attempts


def test_named_weights_offline_error(offline_hub):
    hub, attempts = offline_hub
    with pytest.raises(TLCourseError) as info:
        build_model("resnet18", 2, weights="IMAGENET1K_V1")
    message = str(info.value)
    assert RESNET18_FILE in message
    assert str(hub / "checkpoints") in message
    assert "TLCOURSE_WEIGHTS_DIR" in message and "weights='path/to/file.pth'" in message
    assert "\n" not in message
    assert attempts and attempts[0].endswith(RESNET18_FILE)


def test_default_weights_offline_error(offline_hub):
    with pytest.raises(TLCourseError, match=RESNET18_FILE):
        build_model("resnet18", 2, weights="DEFAULT")


def test_named_weights_from_weights_dir(tmp_path, offline_hub, monkeypatch, random_resnet18):
    _, attempts = offline_hub
    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save(random_resnet18.state_dict(), folder / RESNET18_FILE)
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(folder))
    model = build_model("resnet18", 2, weights="DEFAULT")
    assert attempts == []
    _assert_backbone_equal(model, random_resnet18)
    assert model.fc.out_features == 2


# --------------------------------------------------------------------------- the real MobileNetV2

def test_real_mobilenet_backbone(mobilenet_weights: Path):
    state = torch.load(mobilenet_weights, map_location="cpu", weights_only=True)
    model = tvm.mobilenet_v2(weights=None)
    missing = load_backbone_weights(model, mobilenet_weights, "mobilenet_v2")
    assert missing and all(k.startswith("classifier.") for k in missing)
    torch.manual_seed(0)
    random_init = tvm.mobilenet_v2(weights=None).state_dict()
    loaded = model.state_dict()
    first_conv = "features.0.0.weight"
    assert torch.equal(loaded[first_conv], state[first_conv])
    assert not torch.equal(loaded[first_conv], random_init[first_conv])
    assert not torch.equal(loaded["features.18.1.running_mean"], random_init["features.18.1.running_mean"])

    built = build_model("mobilenet_v2", 2, weights=mobilenet_weights)
    assert torch.equal(built.state_dict()[first_conv], state[first_conv])
    assert _forward(built).shape == (2, 2)
    total, trainable = count_parameters(built)
    assert total == trainable == 2_226_434

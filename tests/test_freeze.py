"""tlcourse.freeze: block presets, exact trainable counts, BatchNorm kept in eval when frozen."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlcourse import TLCourseError
from tlcourse.freeze import apply_freeze, blocks, preset_blocks, set_trainable, trainable_blocks
from tlcourse.models import build_model, count_parameters

RESNET_BLOCKS = ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]


@pytest.fixture
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet18", 2, weights=None)


@pytest.mark.parametrize("preset, trainable", [("head", 1_026), ("last_stage", 8_394_754), ("all", 11_177_538)])
def test_resnet18_exact_counts(resnet18, preset, trainable):
    apply_freeze(resnet18, preset)
    assert count_parameters(resnet18) == (11_177_538, trainable)


def test_resnet_blocks_and_presets(resnet18):
    assert list(blocks(resnet18)) == RESNET_BLOCKS
    assert preset_blocks(resnet18, "head") == ["fc"]
    assert preset_blocks(resnet18, "last_stage") == ["layer4", "fc"]
    assert preset_blocks(resnet18, "all") == RESNET_BLOCKS
    apply_freeze(resnet18, "last_stage")
    assert trainable_blocks(resnet18) == ["layer4", "fc"]


def test_mobilenet_presets():
    model = build_model("mobilenet_v2", 2, weights=None)
    names = list(blocks(model))
    assert names == [f"features.{i}" for i in range(19)] + ["classifier"]
    total, _ = count_parameters(model)
    apply_freeze(model, "head")
    assert trainable_blocks(model) == ["classifier"]
    assert count_parameters(model) == (total, 1280 * 2 + 2)
    apply_freeze(model, "last_stage")
    assert trainable_blocks(model) == [f"features.{i}" for i in range(14, 19)] + ["classifier"]
    head_only = 1280 * 2 + 2
    assert head_only < count_parameters(model)[1] < total
    apply_freeze(model, "all")
    assert count_parameters(model) == (total, total)


def _frozen_bns(model: nn.Module, trainable: list[str]) -> list[nn.BatchNorm2d]:
    return [m for name, block in blocks(model).items() if name not in trainable
            for m in block.modules() if isinstance(m, nn.BatchNorm2d)]


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


def test_frozen_batchnorm_stays_in_eval(resnet18):
    apply_freeze(resnet18, "last_stage")
    resnet18.train()
    frozen = _frozen_bns(resnet18, ["layer4", "fc"])
    assert len(frozen) == 1 + 4 + 5 + 5  # bn1, layer1 (2 blocks x 2), layer2-3 (+ downsample)
    assert all(not bn.training for bn in frozen)
    assert all(bn.training for bn in resnet18.layer4.modules() if isinstance(bn, nn.BatchNorm2d))
    assert resnet18.training and resnet18.layer1.training  # only BatchNorm layers refuse train mode


def test_frozen_running_stats_do_not_drift(resnet18):
    apply_freeze(resnet18, "head")
    resnet18.train()
    before = _bn_stats(resnet18)
    with torch.no_grad():
        resnet18(torch.randn(4, 3, 32, 32) * 3 + 1)
    after = _bn_stats(resnet18)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_without_bn_eval_running_stats_drift(resnet18):
    apply_freeze(resnet18, "head", bn_eval=False)
    resnet18.train()
    assert all(bn.training for bn in resnet18.modules() if isinstance(bn, nn.BatchNorm2d))
    before = _bn_stats(resnet18)
    with torch.no_grad():
        resnet18(torch.randn(4, 3, 32, 32) * 3 + 1)
    after = _bn_stats(resnet18)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # every running mean and var moved, frozen or not


def test_unfreezing_restores_training_mode(resnet18):
    apply_freeze(resnet18, "head")
    resnet18.train()
    apply_freeze(resnet18, "all")
    resnet18.train()
    assert all(bn.training for bn in resnet18.modules() if isinstance(bn, nn.BatchNorm2d))
    resnet18.eval()
    assert not any(m.training for m in resnet18.modules())


def test_state_dict_keys_unchanged(resnet18):
    keys = list(resnet18.state_dict())
    values = {k: v.clone() for k, v in resnet18.state_dict().items()}
    apply_freeze(resnet18, "head")
    assert list(resnet18.state_dict()) == keys
    assert all(torch.equal(values[k], v) for k, v in resnet18.state_dict().items())
    fresh = build_model("resnet18", 2, weights=None)
    fresh.load_state_dict(resnet18.state_dict(), strict=True)


def test_set_trainable_named_blocks(resnet18):
    set_trainable(resnet18, ["layer3", "fc"])
    assert trainable_blocks(resnet18) == ["layer3", "fc"]
    assert count_parameters(resnet18)[1] == 2_099_712 + 1_026


def test_unknown_block_and_preset_error(resnet18):
    with pytest.raises(TLCourseError, match="layer5.*layer4"):
        set_trainable(resnet18, ["layer5"])
    with pytest.raises(TLCourseError, match="freeze='everything'"):
        apply_freeze(resnet18, "everything")

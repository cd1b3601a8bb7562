"""tlcourse.optim: optimizers see only trainable parameters, per-block rates, schedulers."""

from __future__ import annotations

import pytest
import torch

from tlcourse import TLCourseError
from tlcourse.freeze import apply_freeze, set_trainable
from tlcourse.models import build_model
from tlcourse.optim import make_optimizer, make_scheduler, param_groups
from tlcourse.report import trainable_report


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = build_model("resnet18", 2, weights=None)
    apply_freeze(m, "last_stage")
    return m


def _numel(optimizer) -> int:
    return sum(p.numel() for g in optimizer.param_groups for p in g["params"])


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_only_trainable_parameters(model, name):
    opt = make_optimizer(model, name, lr=1e-3)
    assert _numel(opt) == trainable_report(model).trainable == 8_394_754
    assert all(p.requires_grad for g in opt.param_groups for p in g["params"])


def test_head_lr_mult(model):
    groups = param_groups(model, 1e-4, head_lr_mult=10)
    by_lr = sorted((g["lr"], sum(p.numel() for p in g["params"])) for g in groups)
    assert [n for _, n in by_lr] == [8_393_728, 1_026]
    assert [lr for lr, _ in by_lr] == pytest.approx([1e-4, 1e-3])
    opt = make_optimizer(model, "sgd", lr=1e-4, head_lr_mult=10)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([1e-4, 1e-3])


def test_block_lrs(model):
    set_trainable(model, ["layer3", "layer4", "fc"])
    groups = param_groups(model, 1e-3, block_lrs={"layer3": 1e-5, "layer4": 1e-4})
    by_lr = {g["lr"]: sum(p.numel() for p in g["params"]) for g in groups}
    assert by_lr == {1e-5: 2_099_712, 1e-4: 8_393_728, 1e-3: 1_026}


def test_bad_settings(model):
    with pytest.raises(TLCourseError, match="lr=0"):
        make_optimizer(model, lr=0)
    with pytest.raises(TLCourseError, match="lr=-0.1"):
        param_groups(model, -0.1)
    with pytest.raises(TLCourseError, match="optimizer='rmsprop'"):
        make_optimizer(model, "rmsprop")
    with pytest.raises(TLCourseError, match="weight_decay"):
        make_optimizer(model, weight_decay=-1)
    with pytest.raises(TLCourseError, match="scheduler='onecycle'"):
        make_scheduler(make_optimizer(model), "onecycle")
    with pytest.raises(TLCourseError, match="layer5"):
        param_groups(model, 1e-3, block_lrs={"layer5": 1e-4})
    with pytest.raises(TLCourseError, match="head_lr_mult"):
        param_groups(model, 1e-3, head_lr_mult=0)


def test_everything_frozen_errors(model):
    set_trainable(model, [])
    with pytest.raises(TLCourseError, match="no trainable parameters"):
        make_optimizer(model)


def _lrs(optimizer, scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        out.append(optimizer.param_groups[0]["lr"])
    return out


def test_schedulers(model):
    assert make_scheduler(make_optimizer(model), "none") is None
    opt = make_optimizer(model, "sgd", lr=0.1)
    lrs = _lrs(opt, make_scheduler(opt, "step", step_size=7, gamma=0.1), 14)
    assert lrs[5] == pytest.approx(0.1) and lrs[6] == pytest.approx(0.01) and lrs[13] == pytest.approx(0.001)
    opt = make_optimizer(model, "sgd", lr=0.1)
    lrs = _lrs(opt, make_scheduler(opt, "cosine", epochs=4), 4)
    assert lrs[1] == pytest.approx(0.05) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert lrs == sorted(lrs, reverse=True)

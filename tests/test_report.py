"""tlcourse.report: the trainable-layer report as a value (text and HTML)."""

from __future__ import annotations

import pytest
import torch

from tlcourse.freeze import apply_freeze
from tlcourse.models import build_model
from tlcourse.report import trainable_report


@pytest.fixture(scope="module")
def report():
    torch.manual_seed(0)
    model = build_model("resnet18", 2, weights=None)
    apply_freeze(model, "last_stage")
    return trainable_report(model), model


def test_grouped_rows(report):
    rep, _ = report
    assert [b.name for b in rep.blocks] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert [b.status for b in rep.blocks] == ["Frozen"] * 5 + ["Trainable"] * 2
    assert rep.block("conv1").params == 9_408 and rep.block("conv1").trainable == 0
    assert rep.block("layer4").params == rep.block("layer4").trainable == 8_393_728
    assert rep.block("fc").params == 1_026


def test_totals_and_percent(report):
    rep, _ = report
    assert rep.total == 11_177_538 and rep.trainable == 8_394_754
    assert rep.percent == pytest.approx(75.1039, abs=1e-3)
    assert rep.summary_line() == "trainable 8,394,754 / 11,177,538 parameters (75.10%)"


def test_detailed_rows(report):
    rep, model = report
    names = [n for n, _ in model.named_parameters()]
    assert [p.name for p in rep.params] == names and len(names) == 62
    fc_weight = next(p for p in rep.params if p.name == "fc.weight")
    assert fc_weight.shape == (2, 512) and fc_weight.numel == 1_024 and fc_weight.status == "Trainable"
    assert next(p for p in rep.params if p.name == "conv1.weight").status == "Frozen"
    assert sum(p.numel for p in rep.params) == rep.total


def test_partial_status():
    model = build_model("resnet18", 2, weights=None)
    apply_freeze(model, "head")
    model.layer4[1].conv2.weight.requires_grad_(True)
    rep = trainable_report(model)
    assert rep.block("layer4").status == "Partial"
    assert rep.block("layer4").trainable == 512 * 512 * 9


def test_text_and_html(report):
    rep, _ = report
    text = str(rep)
    assert "8,394,754" in text and "11,177,538" in text and "75.10%" in text
    assert "layer4" in text and "Frozen" in text and "conv1.weight" not in text
    detailed = rep.to_text(detailed=True)
    assert "layer4.1.bn2.bias" in detailed and "(2, 512)" in detailed
    page = rep._repr_html_()
    assert page.startswith("<table>") and "8,394,754" in page and "11,177,538" in page
    assert page.count("<tr") == 1 + 7


def test_detailed_html():
    model = build_model("resnet18", 2, weights=None)
    apply_freeze(model, "head")
    rep = trainable_report(model, detailed=True)
    assert "conv1.weight" in str(rep)
    assert rep._repr_html_().count("<tr") == 1 + 62
    assert "1,026" in rep._repr_html_()

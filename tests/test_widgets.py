"""The freeze panel drives the model: tick/untick blocks or pick a preset, check requires_grad and the report."""

from __future__ import annotations

import pytest

from tlcourse.models import build_model
from tlcourse.widgets import COUNT_CLASS, HINT, PANEL_CLASS, STATIC_NOTE, FreezePanel


@pytest.fixture(scope="module")
def model():
    return build_model("resnet18", 2, weights=None)


def _trainable(model, block):
    return [p.requires_grad for p in getattr(model, block).parameters()]


def test_panel_has_one_checkbox_per_resnet_block(model):
    panel = FreezePanel(model, preset="head")
    assert list(panel.checkboxes) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert panel.selected() == ["fc"]
    assert panel.preset.value == "head"
    assert panel.report.trainable == 1026
    assert "1,026" in panel.count.value and "<table>" in panel.table.value


def test_preset_updates_checkboxes_model_and_report(model):
    panel = FreezePanel(model, preset="head")
    panel.preset.value = "last_stage"
    assert panel.selected() == ["layer4", "fc"]
    assert all(_trainable(model, "layer4")) and not any(_trainable(model, "layer3"))
    assert panel.report.trainable == 8_394_754
    assert "8,394,754" in panel.count.value
    panel.preset.value = "all"
    assert all(box.value for box in panel.checkboxes.values())
    assert all(p.requires_grad for p in model.parameters())
    assert panel.report.trainable == 11_177_538 and "11,177,538" in panel.count.value


def test_checkbox_changes_freezing_and_clears_or_finds_preset(model):
    panel = FreezePanel(model, preset="head")
    panel.checkboxes["layer3"].value = True
    assert all(_trainable(model, "layer3")) and all(_trainable(model, "fc"))
    assert not any(_trainable(model, "layer4"))
    assert panel.preset.value is None  # layer3 + fc is no preset
    expected = 1026 + sum(p.numel() for p in model.layer3.parameters())
    assert panel.report.trainable == expected and f"{expected:,}" in panel.count.value
    assert "layer3" in panel.table.value
    # ticking layer4 and unticking layer3 lands exactly on the last_stage preset again
    panel.checkboxes["layer4"].value = True
    panel.checkboxes["layer3"].value = False
    assert panel.preset.value == "last_stage"
    assert panel.report.trainable == 8_394_754


def test_frozen_batchnorm_stays_in_eval_after_train(model):
    panel = FreezePanel(model, preset="head")
    model.train()
    assert not model.bn1.training and not model.layer4[1].bn2.training
    panel.checkboxes["bn1"].value = True
    model.train()
    assert model.bn1.training and not model.layer1[0].bn1.training


def test_panel_renders_headless(model):
    panel = FreezePanel(model, preset="head")
    text = repr(panel)
    assert "preset='head'" in text and "trainable 1,026" in text
    bundle = panel._repr_mimebundle_()  # the live widget for Jupyter plus a text fallback
    assert "application/vnd.jupyter.widget-view+json" in bundle
    # the fallback is what JupyterLab shows without the widgets extension: it says why it is static
    assert bundle["text/plain"] == f"{text}\n{STATIC_NOTE}" and "doctor" in STATIC_NOTE


def test_panel_says_what_to_click_and_shows_the_count_once(model):
    panel = FreezePanel(model, preset="head")
    summary = panel.report.summary_line()
    assert summary in panel.count.value and summary not in panel.table.value
    assert any(HINT in getattr(child, "value", "") for child in panel.widget.children)
    assert PANEL_CLASS in panel.widget._dom_classes and COUNT_CLASS in panel.count._dom_classes


def test_a_second_panel_on_another_model_leaves_the_first_alone(model):
    shown = FreezePanel(model, preset="head")
    demo = FreezePanel(build_model("resnet18", 2, weights=None), preset="head")
    demo.preset.value = "all"
    assert shown.selected() == ["fc"] and shown.preset.value == "head" and shown.report.trainable == 1026

"""The fine_tune recipe: two phases in one run folder, per-block learning rates, resume across the boundary."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import interrupt_after, make_image_folder

from tlcourse import TLCourseError
from tlcourse.checkpoints import load_checkpoint
from tlcourse.cli import main
from tlcourse.config import TrainConfig
from tlcourse.engine import train
from tlcourse.recipes import Phase, cosine, one_cycle, phases, spread_lrs

FAST = dict(weights=None, batch_size=4, image_size=32, progress="none", augment=False, arch="resnet18")
FULL = dict(recipe="fine_tune", epochs=3, freeze_epochs=1, lr=1e-3, lr_mult=100.0, seed=5, **FAST)


@pytest.fixture(scope="module")
def leaves(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("leaves"), classes=("healthy", "rust", "scab"),
                             per_class={"train": 4, "val": 2}, size=(36, 44))


@pytest.fixture(scope="module")
def full_run(leaves, tmp_path_factory):
    """An uninterrupted fine_tune run: 1 head-only epoch, then 2 with the last stage unfrozen."""
    return train(data_dir=str(leaves), output_dir=str(tmp_path_factory.mktemp("full")), **FULL)


def _curve(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_spread_is_geometric_from_the_first_block_to_the_head():
    rates = spread_lrs(["layer3", "layer4", "fc"], 1e-3, 100)
    assert rates == pytest.approx({"layer3": 1e-5, "layer4": 1e-4, "fc": 1e-3})
    assert spread_lrs(["fc"], 1e-3, 100) == {"fc": 1e-3}
    mobilenet = spread_lrs([f"features.{i}" for i in range(14, 19)] + ["classifier"], 5e-4, 100)
    assert list(mobilenet.values()) == sorted(mobilenet.values()) and len(set(mobilenet.values())) == 6


def test_phases_and_their_bad_settings():
    assert phases(TrainConfig(recipe="fine_tune", epochs=4, freeze_epochs=1, lr=1e-3)) == [
        Phase("head", 1, 1, 1e-3), Phase("last_stage", 2, 4, 5e-4)]
    assert phases(TrainConfig(recipe="fine_tune", epochs=2, freeze_epochs=0, unfreeze="all")) == [
        Phase("all", 1, 2, 5e-4)]
    with pytest.raises(TLCourseError, match="freeze_epochs=3 must be smaller than epochs=3"):
        phases(TrainConfig(recipe="fine_tune", epochs=3, freeze_epochs=3))
    with pytest.raises(TLCourseError, match="fast='features' cannot hold for both phases"):
        phases(TrainConfig(recipe="fine_tune", epochs=3, freeze_epochs=1, fast="features"))
    with pytest.raises(TLCourseError, match="freeze='all' belongs to recipe='single'.*set unfreeze instead"):
        phases(TrainConfig(recipe="fine_tune", epochs=3, freeze_epochs=1, freeze="all"))
    with pytest.raises(TLCourseError, match="scheduler='cosine' belongs to recipe='single'.*set phase_schedule"):
        phases(TrainConfig(recipe="fine_tune", epochs=3, freeze_epochs=1, scheduler="cosine"))
    with pytest.raises(TLCourseError, match="recipe='fast' is not supported; choose one of single, fine_tune"):
        TrainConfig(recipe="fast").validate()


def test_schedules_warm_up_then_anneal():
    cycle = one_cycle(100, pct_start=0.3, div=5)
    assert cycle(0) == pytest.approx(0.2) and cycle(30) == pytest.approx(1.0) and cycle(100) == pytest.approx(1e-5)
    assert all(cycle(t) <= cycle(t + 1) for t in range(30)) and all(cycle(t) >= cycle(t + 1) for t in range(30, 100))
    assert cosine(10)(0) == 1.0 and cosine(10)(5) == pytest.approx(0.5) and cosine(10)(10) == pytest.approx(0.0)


def test_one_run_folder_spans_both_phases(full_run):
    result = full_run
    assert result.run_dir.name.startswith("resnet18_fine_tune_")
    assert [(r["epoch"], r["phase"], r["route"]) for r in result.history] == [
        (1, "head", "features"), (2, "last_stage", "layer3"), (3, "last_stage", "layer3")]
    assert result.route == "features+layer3" and "head: cached pooled features" in result.route_description
    # the lr column is the head's rate at the start of each epoch: phase 1 starts at lr/25, phase 2 at (lr/2)/5
    assert result.history[0]["lr"] == pytest.approx(1e-3 / 25) and result.history[1]["lr"] == pytest.approx(1e-4)
    latest = load_checkpoint(result.latest_path)
    assert latest["epoch"] == 3 and latest["freeze"] == "last_stage" and latest["config"]["recipe"] == "fine_tune"
    assert [r["epoch"] for r in latest["history"]] == [1, 2, 3] and latest["scheduler"]["last_epoch"] == 2 * 3
    peaks = sorted(g["initial_lr"] for g in latest["optimizer"]["param_groups"])
    assert peaks == pytest.approx([5e-4 / 100, 5e-4])                    # layer4 and fc: slice(lr/2/100, lr/2)
    args = json.loads((result.run_dir / "args.json").read_text())
    assert args["class_names"] == ["healthy", "rust", "scab"] and [p["preset"] for p in args["phases"]] == \
        ["head", "last_stage"]
    trainable = {n.split(".")[0] for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}


@pytest.mark.parametrize("stop_after", [1, 2], ids=["at_the_phase_boundary", "inside_phase_2"])
def test_resume_across_phases_equals_the_uninterrupted_run(leaves, full_run, tmp_path, monkeypatch, stop_after):
    common = dict(data_dir=str(leaves), output_dir=str(tmp_path), **FULL)
    full = full_run
    interrupt_after(monkeypatch, stop_after, **common)
    (interrupted,) = list(tmp_path.iterdir())
    assert load_checkpoint(interrupted / "latest.pt")["epoch"] == stop_after
    resumed = train(resume=interrupted / "latest.pt")
    assert resumed.run_dir == interrupted
    assert _curve(resumed.history) == _curve(full.history)
    final, expected = load_checkpoint(resumed.latest_path), load_checkpoint(full.latest_path)
    assert all(torch.equal(final["model"][k], expected["model"][k]) for k in expected["model"])


def test_resume_refuses_what_would_change_the_phases(leaves, full_run, tmp_path):
    result = full_run
    with pytest.raises(TLCourseError, match="belongs to the 'head' phase; resume with the run's freeze_epochs=1"):
        train(resume=result.latest_path, freeze_epochs=3, epochs=4)
    single = train(data_dir=str(leaves), epochs=1, output_dir=str(tmp_path), **FAST)
    with pytest.raises(TLCourseError, match="was trained with recipe='single'; resume it without --recipe fine_tune"):
        train(resume=single.latest_path, recipe="fine_tune", epochs=3)


def test_cli_spelling(leaves, tmp_path, capsys):
    assert main(["train", "--recipe", "fine_tune", "--freeze-epochs", "1", "--epochs", "2", "--data-dir", str(leaves),
                 "--weights", "none", "--image-size", "32", "--batch-size", "4", "--no-augment", "--progress", "epoch",
                 "--output-dir", str(tmp_path), "--phase-schedule", "cosine", "--lr-mult", "10"]) == 0
    out = capsys.readouterr().out
    assert "phase 1/2: head, epochs 1-1 of 2" in out and "phase 2/2: last_stage, epochs 2-2 of 2" in out
    assert "EPOCH 1/2" in out and "EPOCH 2/2" in out and "best_acc: " in out
    assert main(["train", "--recipe", "fine_tune", "--epochs", "1", "--data-dir", str(leaves)]) == 2
    assert "freeze_epochs=10 must be smaller than epochs=1" in capsys.readouterr().err

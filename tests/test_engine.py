"""The training engine: one run writes every file, is deterministic, and resumes exactly."""

from __future__ import annotations

import json

import pytest
import torch

from tlcourse import TLCourseError
from tlcourse.checkpoints import CHECKPOINT_FILES, load_checkpoint, save_checkpoint
from tlcourse.engine import (
    TrainConfig,
    best_from_history,
    compute_loss,
    format_epoch,
    loss_for_head,
    predictions,
    train,
)
from tlcourse.history import route_of

FAST = dict(weights=None, batch_size=4, image_size=64, progress="none")


def _curve(history):
    """The history without wall-clock seconds (which differ from run to run)."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def test_one_epoch_run_writes_all_files(tiny_data, tmp_path):
    result = train(data_dir=str(tiny_data), epochs=1, output_dir=str(tmp_path / "ck"), **FAST)
    names = {p.name for p in result.run_dir.iterdir()}
    assert set(CHECKPOINT_FILES) | {"args.json", "history.json", "history.csv"} <= names
    assert result.run_dir.name.startswith("resnet18_head_")
    history = json.loads((result.run_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1]
    assert set(history[0]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    csv_lines = (result.run_dir / "history.csv").read_text().strip().splitlines()
    assert csv_lines[0].startswith("epoch,train_loss") and len(csv_lines) == 2
    args = json.loads((result.run_dir / "args.json").read_text())
    assert args["arch"] == "resnet18" and args["class_names"] == ["ants", "bees"]


def test_checkpoint_holds_everything_to_rebuild_and_resume(tiny_data, tmp_path):
    result = train(data_dir=str(tiny_data), epochs=1, output_dir=str(tmp_path), freeze="last_stage",
                   head="mlp", dropout=0.3, **FAST)
    ckpt = load_checkpoint(result.best_acc_path)
    assert ckpt["arch"] == "resnet18" and ckpt["head"] == "mlp" and ckpt["num_classes"] == 2
    assert ckpt["head_kwargs"] == {"dropout": 0.3}
    assert ckpt["freeze"] == "last_stage" and ckpt["class_names"] == ["ants", "bees"]
    assert ckpt["image_size"] == 64 and ckpt["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert ckpt["epoch"] == 1 and ckpt["optimizer"]["state"] and "torch" in ckpt["rng"]
    assert set(ckpt["metrics"]) == {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert ckpt["versions"]["torch"] == str(torch.__version__)


def test_same_seed_same_history(tiny_data, tmp_path):
    runs = [train(data_dir=str(tiny_data), epochs=2, output_dir=str(tmp_path), freeze="all", seed=3, **FAST)
            for _ in range(2)]
    assert _curve(runs[0].history) == _curve(runs[1].history)
    other = train(data_dir=str(tiny_data), epochs=2, output_dir=str(tmp_path), freeze="all", seed=4, **FAST)
    assert _curve(other.history) != _curve(runs[0].history)


@pytest.mark.parametrize("scheduler", ["none", "step"])
def test_resume_reaches_the_uninterrupted_history(tiny_data, tmp_path, scheduler):
    common = dict(data_dir=str(tiny_data), output_dir=str(tmp_path), freeze="all", seed=1, scheduler=scheduler,
                  step_size=1, **FAST)
    full = train(epochs=3, **common)
    first = train(epochs=1, **common)
    resumed = train(resume=first.latest_path, epochs=3)
    assert resumed.run_dir == first.run_dir
    assert _curve(resumed.history) == _curve(full.history)
    assert resumed.best == full.best
    assert load_checkpoint(resumed.latest_path)["epoch"] == 3


def test_binary_head_uses_bce_and_learns(tiny_data, tmp_path):
    result = train(data_dir=str(tiny_data), epochs=3, output_dir=str(tmp_path), head="binary", freeze="all",
                   augment=False, **FAST)
    assert result.model.fc.out_features == 1
    assert isinstance(loss_for_head("binary"), torch.nn.BCEWithLogitsLoss)
    assert max(r["train_acc"] for r in result.history) > 0.5


def test_accuracy_and_loss_for_both_head_kinds():
    targets = torch.tensor([0, 1, 1])
    two = torch.tensor([[2.0, -1.0], [0.0, 3.0], [1.0, 0.5]])
    one = torch.tensor([[-2.0], [3.0], [-0.5]])
    assert predictions(two).tolist() == [0, 1, 0]
    assert predictions(one).tolist() == [0, 1, 0]
    ce = compute_loss(torch.nn.CrossEntropyLoss(), two, targets)
    bce = compute_loss(torch.nn.BCEWithLogitsLoss(), one, targets)
    assert ce.item() > 0 and bce.item() > 0


def test_best_from_history_prefers_first_epoch_on_ties():
    history = [{"epoch": 1, "val_acc": 0.9, "val_loss": 0.5}, {"epoch": 2, "val_acc": 0.9, "val_loss": 0.3},
               {"epoch": 3, "val_acc": 0.8, "val_loss": 0.4}]
    assert best_from_history(history) == {"acc": 0.9, "acc_epoch": 1, "loss": 0.3, "loss_epoch": 2}


def test_epoch_line_format():
    row = {"epoch": 6, "train_loss": 0.1858, "train_acc": 1.0, "val_loss": 0.2504, "val_acc": 1.0,
           "lr": 0.001, "seconds": 4.2}
    assert format_epoch(row, 10).startswith(
        "EPOCH 6/10  train_loss=0.1858 train_acc=1.0000  val_loss=0.2504 val_acc=1.0000  lr=0.001")


def test_epoch_lines_are_printed(tiny_data, tmp_path, capsys):
    train(data_dir=str(tiny_data), epochs=2, output_dir=str(tmp_path), **{**FAST, "progress": "epoch"})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("EPOCH")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]


@pytest.mark.parametrize("field,value", [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("lr", -1e-3),
                                         ("freeze", "layer9"), ("arch", "vgg16"), ("max_batches", 0)])
def test_bad_config_values_name_the_setting(field, value):
    with pytest.raises(TLCourseError, match=field.split("_")[0]):
        TrainConfig(**{field: value}).validate()


def test_max_batches_limits_work(tiny_data, tmp_path):
    result = train(data_dir=str(tiny_data), epochs=1, output_dir=str(tmp_path), max_batches=1, **FAST)
    assert result.history[0]["epoch"] == 1


def test_the_route_has_one_name_and_older_runs_still_resume(tiny_data, tmp_path):
    """``route`` in the result, the history, args.json and checkpoints; ``path``/``fast_path`` of older runs read."""
    run = train(data_dir=str(tiny_data), epochs=1, output_dir=str(tmp_path), freeze="head", augment=False, **FAST)
    assert run.route == run.fast_path == run.history[0]["route"] == "features"
    assert run.route_description.startswith("cached pooled features") and "path" not in run.history[0]
    args = json.loads((run.run_dir / "args.json").read_text())
    assert args["route"] == "features" and args["route_description"] == run.route_description
    # Rewrite the run as an older version saved it: the route under its old names.
    latest = load_checkpoint(run.latest_path)
    latest["config"]["fast_path"] = latest["config"].pop("route")
    latest["history"] = [{("path" if k == "route" else k): v for k, v in row.items()} for row in latest["history"]]
    save_checkpoint(latest, run.latest_path)
    assert route_of(latest["config"]) == route_of(latest["history"][0]) == "features"
    resumed = train(resume=run.latest_path, epochs=2)
    assert [row["route"] for row in resumed.history] == ["features", "features"]
    assert not any("path" in row for row in resumed.history)
    finished = train(resume=resumed.latest_path, epochs=2)   # nothing left: the run as saved
    assert finished.route == "features" and _curve(finished.history) == _curve(resumed.history)

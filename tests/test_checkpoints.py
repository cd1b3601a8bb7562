"""Checkpoints: atomic saves, safe loading, clear errors, and nothing saved is ever lost."""

from __future__ import annotations

import os
import pickle
from datetime import datetime

import pytest
import torch

from tlcourse import TLCourseError
from tlcourse import checkpoints as ck
from tlcourse.engine import train
from tlcourse.models import build_model

FAST = dict(weights=None, batch_size=4, image_size=64, progress="none")


@pytest.fixture(scope="module")
def finished_run(tiny_data_session, tmp_path_factory):
    return train(data_dir=str(tiny_data_session), epochs=2, output_dir=str(tmp_path_factory.mktemp("ck")),
                 freeze="all", **FAST)


def test_model_from_checkpoint_needs_nothing_else(finished_run):
    model = ck.model_from_checkpoint(finished_run.best_acc_path)
    assert not model.training
    original = finished_run.model.cpu().eval()
    x = torch.randn(2, 3, 64, 64)
    ckpt = ck.load_checkpoint(finished_run.best_acc_path)
    if ckpt["epoch"] == finished_run.history[-1]["epoch"]:
        assert torch.allclose(model(x), original(x), atol=1e-5)
    assert model.tlcourse_spec["arch"] == "resnet18"


def test_run_folders_are_never_reused(tmp_path):
    moment = datetime(2026, 1, 2, 3, 4, 5)
    first = ck.new_run_dir("demo", tmp_path, now=moment)
    (first / "latest.pt").write_bytes(b"precious")
    second = ck.new_run_dir("demo", tmp_path, now=moment)
    assert first != second and second.name == "demo_20260102-030405-2"
    assert (first / "latest.pt").read_bytes() == b"precious"


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden"])
def test_bad_run_names(tmp_path, name):
    with pytest.raises(TLCourseError, match="run_name"):
        ck.new_run_dir(name, tmp_path)


def test_failed_save_keeps_previous_checkpoints(finished_run, monkeypatch):
    before = {n: (finished_run.run_dir / n).read_bytes() for n in ("best_acc.pt", "latest.pt")}
    real_save = torch.save

    def broken_save(obj, fh, *args, **kwargs):
        real_save({"half": torch.zeros(1000)}, fh)  # some bytes reach the temporary file...
        raise OSError("disk full")                   # ...then the write fails

    monkeypatch.setattr(torch, "save", broken_save)
    model = finished_run.model
    checkpoint = ck.make_checkpoint(model, epoch=9, class_names=["ants", "bees"], spec=model.tlcourse_spec,
                                    freeze="all", image_size=64, mean=(0, 0, 0), std=(1, 1, 1), metrics={})
    for name in before:
        with pytest.raises(OSError, match="disk full"):
            ck.save_checkpoint(checkpoint, finished_run.run_dir / name)
    monkeypatch.undo()
    for name, data in before.items():
        assert (finished_run.run_dir / name).read_bytes() == data
        assert ck.load_checkpoint(finished_run.run_dir / name)["epoch"] in (1, 2)
    assert not [p for p in os.listdir(finished_run.run_dir) if ".tmp-" in p]


def test_interrupt_mid_training_keeps_a_resumable_run(tiny_data, tmp_path, monkeypatch, capsys):
    from tlcourse import loops

    real = loops.train_one_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loops, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(data_dir=str(tiny_data), epochs=3, output_dir=str(tmp_path / "ck"), freeze="all", **FAST)
    out = capsys.readouterr().out
    assert "interrupted during epoch 2/3" in out and "--resume" in out
    (run_dir,) = (tmp_path / "ck").iterdir()
    latest = ck.load_checkpoint(run_dir / "latest.pt")
    assert latest["epoch"] == 1 and len(latest["history"]) == 1
    monkeypatch.undo()
    resumed = train(resume=run_dir / "latest.pt", epochs=3)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_truncated_and_empty_checkpoints(finished_run, tmp_path):
    data = (finished_run.run_dir / "latest.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(TLCourseError, match="truncated or corrupt"):
        ck.load_checkpoint(truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(TLCourseError, match="empty"):
        ck.load_checkpoint(empty)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(TLCourseError, match=str(garbage.name)):
        ck.load_checkpoint(garbage)
    with pytest.raises(TLCourseError, match="does not exist"):
        ck.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(TLCourseError, match="folder"):
        ck.load_checkpoint(tmp_path)


class _Exploit:
    """Unpickling this calls os.system: what a malicious 'checkpoint' could do."""

    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_safe_loader_refuses_code_execution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": ck.FORMAT, "model": _Exploit()}, crafted)
    with pytest.raises(TLCourseError, match="safe loader refused"):
        ck.load_checkpoint(crafted)
    assert not (tmp_path / "pwned-by-pickle").exists()
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(TLCourseError):
        ck.load_checkpoint(raw)
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_full_model_pickle_needs_opt_in(finished_run, tmp_path):
    path = ck.save_full_model(finished_run.model.cpu(), tmp_path / "full.pt")
    with pytest.raises(TLCourseError, match="safe loader refused"):
        ck.load_checkpoint(path)
    with pytest.raises(TLCourseError, match="trust=True"):
        ck.load_full_model(path)
    model = ck.load_full_model(path, trust=True)
    assert type(model).__name__ == "ResNet"


def test_state_dict_file_is_explained(finished_run, tmp_path):
    path = ck.save_state_dict(finished_run.model.cpu(), tmp_path / "weights.pt")
    with pytest.raises(TLCourseError, match="bare state_dict"):
        ck.load_checkpoint(path)
    model = build_model("resnet18", 2, weights=None)
    model.load_state_dict(torch.load(path, weights_only=True))


@pytest.mark.parametrize("arch,num_classes", [("resnet34", 2), ("resnet18", 5), ("mobilenet_v2", 2)])
def test_checkpoint_into_another_model_is_a_clear_error(finished_run, arch, num_classes):
    ckpt = ck.load_checkpoint(finished_run.best_acc_path)
    other = build_model(arch, num_classes, weights=None)
    with pytest.raises(TLCourseError, match="does not fit this model"):
        ck.load_model_state(other, ckpt["model"], "best_acc.pt")


def test_resume_on_other_classes_is_refused(finished_run, tmp_path):
    from conftest import make_image_folder

    other = make_image_folder(tmp_path / "other", classes=("cats", "dogs", "fish"), per_class=2)
    with pytest.raises(TLCourseError, match="classes"):
        train(resume=finished_run.latest_path, data_dir=str(other), epochs=3)


def test_one_checkpoint_many_names_each_replaced_independently(tmp_path, monkeypatch):
    calls = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, fh, *a, **k: (calls.append(1), real_save(obj, fh, *a, **k)))
    first = {"format": ck.FORMAT, "epoch": 1, "weight": torch.ones(3)}
    ck.save_checkpoint_as(first, [tmp_path / "best_acc.pt", tmp_path / "latest.pt"])
    assert len(calls) == 1  # serialised once, however many names it gets
    assert (tmp_path / "best_acc.pt").read_bytes() == (tmp_path / "latest.pt").read_bytes()
    ck.save_checkpoint({"format": ck.FORMAT, "epoch": 2, "weight": torch.zeros(3)}, tmp_path / "latest.pt")
    assert torch.load(tmp_path / "best_acc.pt", weights_only=True)["epoch"] == 1  # the best is not dragged along
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["epoch"] == 2
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]

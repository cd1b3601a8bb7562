"""Runs that meet a full disk, a read-only folder, a killed process, a crafted checkpoint or a
resume with changed flags (issue 11): one line, and nothing already saved is lost or rewritten.

The full disk is a file-size limit (``RLIMIT_FSIZE``) set in a subprocess from epoch 2 on. A
read-only folder is a read-only bind mount in a private mount namespace (``unshare -m``) when
running as root, where ``chmod`` does not stop writes, and ``chmod`` otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tlcourse import TLCourseError
from tlcourse import checkpoints as ck
from tlcourse.cli import main
from tlcourse.engine import train
from tlcourse.history import HISTORY_JSON

REPO = Path(__file__).resolve().parent.parent
FAST = dict(arch="mobilenet_v2", weights=None, batch_size=8, image_size=32, progress="none")
CLI_FAST = ["--arch", "mobilenet_v2", "--weights", "none", "--batch-size", "8", "--image-size", "32",
            "--progress", "none"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _epochs(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in json.loads((run_dir / HISTORY_JSON).read_text())]


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.fixture(scope="module")
def one_epoch(tiny_data_session, tmp_path_factory):
    """A finished 1-epoch run; tests copy its folder before changing anything."""
    return train(data_dir=str(tiny_data_session), epochs=1, lr=1e-3, scheduler="none",
                 output_dir=str(tmp_path_factory.mktemp("runs")), run_name="base", **FAST)


@pytest.fixture
def run_copy(one_epoch, tmp_path) -> Path:
    target = tmp_path / "runs" / one_epoch.run_dir.name
    shutil.copytree(one_epoch.run_dir, target)
    return target


# --------------------------------------------------------------------------- disk full

DISK_FULL_DRIVER = r"""
import resource, sys
from tlcourse import checkpoints
real = checkpoints.CheckpointSaver.save
def save(self, *args, **kwargs):
    if self.saved_epoch:  # epoch 1 is on disk; from epoch 2 on no file may grow past 4 KB
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    return real(self, *args, **kwargs)
checkpoints.CheckpointSaver.save = save
from tlcourse.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_disk_full_during_a_save_loses_nothing_and_says_how_to_resume(tiny_data_session, tmp_path):
    out = tmp_path / "ck"
    result = subprocess.run([sys.executable, "-c", DISK_FULL_DRIVER, "train", "--data-dir", str(tiny_data_session),
                             "--epochs", "2", "--output-dir", str(out), "--run-name", "full", *CLI_FAST],
                            env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    (run_dir,) = out.iterdir()
    latest = run_dir / ck.LATEST
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"error: disk full while saving epoch 2 in {run_dir}; nothing saved is lost: {latest} "
                             f"holds epoch 1; free some space and resume with: python -m tlcourse train --resume "
                             f"{latest} --epochs 2\n")
    assert ck.load_checkpoint(latest)["epoch"] == 1
    assert _epochs(run_dir) == [1]  # the history never lists the epoch whose checkpoint failed
    assert _temps(run_dir) == []
    resumed = train(resume=latest, epochs=2)  # space is back: the run goes on from where it was
    assert [r["epoch"] for r in resumed.history] == [1, 2] and _epochs(run_dir) == [1, 2]


# --------------------------------------------------------------------------- read-only folders

RUN_CLI_DRIVER = r"""
import contextlib, io, json, sys
from tlcourse.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_with_read_only(folders: list[Path], argvs: list[list[str]], cwd: Path) -> list[tuple[int, str, str]]:
    """Run CLI commands in one subprocess that sees ``folders`` read-only, as root or not."""
    command = [sys.executable, "-c", RUN_CLI_DRIVER, json.dumps(argvs)]
    if os.geteuid() == 0:
        if not shutil.which("unshare") or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
            pytest.skip("running as root without mount namespaces (unshare -m): chmod does not stop root, and "
                        "there is no other way to make a folder read-only here")
        mounts = " && ".join(f'mount --bind -o ro "{f}" "{f}"' for f in folders)
        command = ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh", *command]
        result = subprocess.run(command, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=300)
    else:
        modes = {f: f.stat().st_mode for f in folders}
        for f in folders:
            f.chmod(0o555)
        try:
            result = subprocess.run(command, env=_env(), cwd=cwd, capture_output=True, text=True, timeout=300)
        finally:
            for f, mode in modes.items():
                f.chmod(mode)
    assert result.returncode == 0, result.stderr
    return [tuple(r) for r in json.loads(result.stdout.splitlines()[-1])]


def test_read_only_folders_fail_in_one_line_before_training(run_copy, tiny_data_session, tmp_path):
    locked_output = tmp_path / "locked"
    locked_output.mkdir()
    before = (run_copy / ck.LATEST).read_bytes()
    started = time.perf_counter()
    (resume_code, resume_out, resume_err), (new_code, new_out, new_err) = run_with_read_only(
        [run_copy, locked_output],
        [["train", "--resume", str(run_copy / ck.LATEST), "--epochs", "2"],
         ["train", "--data-dir", str(tiny_data_session), "--epochs", "1", "--output-dir", str(locked_output),
          *CLI_FAST]], cwd=tmp_path)
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert resume_code == 2 and resume_err == (
        f"error: {run_copy} is not writable ({reason}); the resumed epochs could not be saved there; make it "
        f"writable, or copy the run folder somewhere writable and resume from the copy's latest.pt\n"), resume_err
    assert new_code == 2 and new_err.startswith(f"error: {locked_output} is not writable (") and new_err.endswith(
        "choose a folder you can write to for the run folders (--output-dir, output_dir=...)\n"), new_err
    assert "EPOCH" not in resume_out + new_out  # refused before any epoch was trained
    assert (run_copy / ck.LATEST).read_bytes() == before and _epochs(run_copy) == [1]
    assert not any(locked_output.iterdir())
    assert time.perf_counter() - started < 120


def test_output_dir_that_is_a_file_or_under_a_file(tiny_data_session, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(TLCourseError, match=r"^output_dir='.*notes\.txt' is a file; give a folder"):
        train(data_dir=str(tiny_data_session), output_dir=str(a_file), **FAST)
    with pytest.raises(TLCourseError, match=r"notes\.txt/runs cannot be created: a part of the path is a file"):
        train(data_dir=str(tiny_data_session), output_dir=str(a_file / "runs"), **FAST)
    assert main(["train", "--data-dir", str(tiny_data_session), "--output-dir", str(a_file / "runs"),
                 *CLI_FAST]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a part of the path is a file" in err


# --------------------------------------------------------------------------- killed mid-save

def test_temp_file_of_a_killed_save_is_removed_by_the_next_run(run_copy):
    code = ("import sys, time\nfrom tlcourse.files import atomic_write\n"
            "atomic_write(sys.argv[1], lambda fh: (fh.write(b'x' * 4096), fh.flush(), time.sleep(600)))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_copy / ck.BEST_ACC)], env=_env())
    try:
        deadline = time.monotonic() + 60
        while not _temps(run_copy) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()  # SIGKILL: no cleanup handler runs
        proc.wait()
    (killed,) = _temps(run_copy)
    assert killed.startswith(f".best_acc.pt.tmp-{proc.pid}-")           # pid, then mkstemp's random part
    alive = run_copy / f".latest.pt.tmp-{os.getpid()}"  # a save in progress (this process): kept
    alive.write_bytes(b"")
    ck.CheckpointSaver(run_copy, class_names=["ants", "bees"], freeze="head", image_size=32)
    assert _temps(run_copy) == [alive.name]
    assert ck.load_checkpoint(run_copy / ck.BEST_ACC)["epoch"] == 1  # the old best is untouched


# --------------------------------------------------------------------------- resume

def test_resume_from_an_older_checkpoint_starts_a_new_run_folder(run_copy, capsys):
    epoch1 = (run_copy / ck.LATEST).read_bytes()
    train(resume=run_copy / ck.LATEST, epochs=3)
    (run_copy / ck.BEST_ACC).write_bytes(epoch1)  # best_acc.pt: epoch 1, latest.pt: epoch 3
    old = {name: (run_copy / name).read_bytes() for name in (ck.LATEST, HISTORY_JSON)}
    capsys.readouterr()
    branch = train(resume=run_copy / ck.BEST_ACC, epochs=2)
    assert branch.run_dir != run_copy and branch.run_dir.parent == run_copy.parent
    assert f"holds epoch 1, not the newest of {run_copy}: continuing in a new run folder" in capsys.readouterr().out
    assert {name: (run_copy / name).read_bytes() for name in old} == old  # never rewound
    assert _epochs(run_copy) == [1, 2, 3] and _epochs(branch.run_dir) == [1, 2]
    args = json.loads((branch.run_dir / ck.ARGS_JSON).read_text())
    assert args["resumed"] == [{"from": str(run_copy / ck.BEST_ACC), "epoch": 1, "changed": {"epochs": 2}}]
    with pytest.raises(TLCourseError, match="holds epoch 1 and epochs=1: nothing to train"):
        train(resume=run_copy / ck.BEST_ACC, epochs=1)


def test_resume_refuses_flags_that_define_the_model(run_copy, capsys):
    with pytest.raises(TLCourseError) as info:
        train(resume=run_copy / ck.LATEST, epochs=2, arch="resnet18", freeze="all")
    assert str(info.value) == ("cannot change on resume: arch='resnet18' (the run has 'mobilenet_v2'), freeze='all' "
                               "(the run has 'head'); they define the saved model and its run, so leave them out "
                               "to continue it, or start a new run without --resume")
    assert main(["train", "--resume", str(run_copy / ck.LATEST), "--head", "mlp", "--seed", "7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "head='mlp' (the run has 'linear'), seed=7 (the run has 0)" in err
    assert _epochs(run_copy) == [1] and ck.load_checkpoint(run_copy / ck.LATEST)["config"]["arch"] == "mobilenet_v2"


def test_resume_with_a_new_learning_rate_trains_with_it_and_records_it(run_copy):
    result = train(resume=run_copy / ck.LATEST, epochs=2, lr=0.5, weight_decay=0.01)
    row = result.history[-1]
    assert row["epoch"] == 2 and row["lr"] == 0.5  # the optimizer really ran at 0.5
    latest = ck.load_checkpoint(run_copy / ck.LATEST)
    assert latest["config"]["lr"] == 0.5 and latest["config"]["weight_decay"] == 0.01
    groups = latest["optimizer"]["param_groups"]
    assert {g["lr"] for g in groups} == {0.5} and {g["weight_decay"] for g in groups} == {0.01}
    args = json.loads((run_copy / ck.ARGS_JSON).read_text())
    assert args["lr"] == 1e-3  # how the run started...
    assert args["resumed"][-1]["changed"] == {"epochs": 2, "lr": 0.5, "weight_decay": 0.01}  # ...and what changed


def test_resume_with_a_new_lr_follows_the_schedule(tiny_data_session, tmp_path):
    first = train(data_dir=str(tiny_data_session), epochs=2, lr=1e-3, output_dir=str(tmp_path), scheduler="step",
                  step_size=1, gamma=0.5, **FAST)
    resumed = train(resume=first.latest_path, epochs=3, lr=0.1)
    assert [r["lr"] for r in resumed.history] == pytest.approx([1e-3, 5e-4, 0.1 * 0.5**2])


def test_resume_with_a_moved_dataset_names_the_fix(run_copy, tmp_path):
    args = json.loads((run_copy / ck.ARGS_JSON).read_text())
    moved = tmp_path / "moved"
    shutil.copytree(args["data_dir"], moved)
    ckpt = torch.load(run_copy / ck.LATEST, weights_only=True)
    ckpt["config"]["data_dir"] = str(tmp_path / "gone")  # the folder the run was trained on has moved
    torch.save(ckpt, run_copy / ck.LATEST)
    with pytest.raises(TLCourseError, match=r"gone: the run's data folder does not exist any more; .* pass "
                                            r"--data-dir NEW_FOLDER"):
        train(resume=run_copy / ck.LATEST, epochs=2)
    assert train(resume=run_copy / ck.LATEST, epochs=2, data_dir=str(moved)).history[-1]["epoch"] == 2


# --------------------------------------------------------------------------- crafted checkpoints

def _crafted(run_copy: Path, change) -> Path:
    ckpt = torch.load(run_copy / ck.LATEST, weights_only=True)
    change(ckpt)
    path = run_copy / "crafted.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("change, expected", [
    (lambda c: c.pop("arch"), r"lacks 'arch': it was not written by tlcourse's CheckpointSaver"),
    (lambda c: [c.pop(k) for k in ("arch", "head", "num_classes")], r"lacks 'arch', 'head', 'num_classes'"),
    (lambda c: c.update(class_names=["ants"]), r"lists 1 class names for a head of 2 classes"),
    (lambda c: c.update(class_names=["a", "b", "c"], num_classes=3), r"linear head has 2 outputs, but the "
                                                                     r"checkpoint says 3 classes"),
    (lambda c: c.update(arch="vgg16"), r"arch 'vgg16' is not one tlcourse builds"),
    (lambda c: c.update(image_size=50_000), r"image_size=50000 is outside 32..1024"),
    (lambda c: c.update(epoch="3"), r"'epoch' is a str, expected int"),
    (lambda c: c.update(format_version=99), r"format version 99, newer than this tlcourse"),
    (lambda c: c.update(head_kwargs={"hidden": 10**9}), r"head_kwargs .* are not options"),
    (lambda c: c["model"].clear(), r"'model' is not a state_dict of tensors"),
])
def test_crafted_checkpoint_is_one_line_everywhere(run_copy, tiny_data_session, change, expected, capsys):
    path = _crafted(run_copy, change)
    with pytest.raises(TLCourseError, match=expected):
        ck.load_checkpoint(path)
    assert main(["predict", "--image", str(tiny_data_session / "val"), "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "crafted.pt" in err


def test_checkpoint_without_training_state_cannot_be_resumed(run_copy, tiny_data_session):
    path = _crafted(run_copy, lambda c: [c.pop("optimizer"), c.pop("rng")])
    assert ck.model_from_checkpoint(path) is not None  # still fine for predict
    with pytest.raises(TLCourseError, match=r"cannot be resumed: it lacks 'optimizer', 'rng' \(saved for inference"):
        train(resume=path, epochs=2)
    path = _crafted(run_copy, lambda c: c.update(history=[{"epoch": 5}]))
    with pytest.raises(TLCourseError, match=r"its history does not list epochs 1..1"):
        train(resume=path, epochs=2)


# --------------------------------------------------------------------------- the flag the advice names

def test_bad_images_skip_is_a_real_train_flag(tiny_data, tmp_path, capsys):
    cut = tiny_data / "train/ants/cut.png"
    raw = (tiny_data / "train/ants/img_0.png").read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    argv = ["train", "--data-dir", str(tiny_data), "--epochs", "1", "--output-dir", str(tmp_path / "ck"), *CLI_FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "or pass bad_images='skip' (train --bad-images skip)" in err
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        assert main([*argv, "--bad-images", "skip"]) == 0
    (run_dir,) = (tmp_path / "ck").iterdir()
    assert json.loads((run_dir / ck.ARGS_JSON).read_text())["bad_images"] == "skip"
    assert ck.load_checkpoint(run_dir / ck.LATEST)["history"][0]["train_images"] == 12  # 13 files, 1 left out

"""The command line end to end, in a subprocess as a learner would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tlcourse.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tlcourse", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_train_then_predict_in_a_subprocess(tiny_data, tmp_path):
    out = _run("train", "--data-dir", str(tiny_data), "--weights", "none", "--epochs", "1", "--batch-size", "4",
               "--image-size", "64", "--freeze", "last_stage", "--seed", "1", "--run-name", "cli",
               "--output-dir", str(tmp_path / "ck"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "EPOCH 1/1" in out.stdout and "best_acc:" in out.stdout
    (run_dir,) = (tmp_path / "ck").iterdir()
    assert run_dir.name.startswith("cli_")
    pred = _run("predict", "--image", str(tiny_data / "val"), "--checkpoint", str(run_dir / "best_acc.pt"),
                "--topk", "2", "--random", "1", "--n", "3", "--seed", "0", cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr
    assert pred.stdout.count("IMAGE:") == 3 and "  1) " in pred.stdout


def test_user_errors_are_one_line(tiny_data, tmp_path, capsys):
    assert main(["predict", "--image", str(tiny_data), "--checkpoint", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: checkpoint") and "\n" not in err


def test_help_and_argparse_errors(tmp_path):
    for command in ("train", "predict", "report", "data"):
        out = _run(command, "--help", cwd=tmp_path)
        assert out.returncode == 0 and "usage:" in out.stdout
    bad = _run("train", "--batch-size", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "--batch-size" in bad.stderr

"""``python -m tlcourse report`` and ``data``: output, argparse errors, one-line user errors."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tlcourse.cli import main
from tlcourse.settings import ENV_DATA_MIRROR

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", "tlcourse", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=120)


def test_report_subprocess():
    result = _run("report", "--arch", "resnet18", "--freeze", "last_stage")
    assert result.returncode == 0, result.stderr
    assert "8,394,754" in result.stdout and "11,177,538" in result.stdout
    assert "layer4" in result.stdout and "Trainable" in result.stdout and "Frozen" in result.stdout


def test_bad_freeze_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["report", "--freeze", "everything"])
    assert info.value.code == 2
    assert "invalid choice: 'everything'" in capsys.readouterr().err


def test_report_detailed(capsys):
    assert main(["report", "--arch", "resnet18", "--freeze", "head", "--detailed"]) == 0
    out = capsys.readouterr().out
    assert "layer4.1.bn2.weight" in out and "fc.weight" in out
    assert "trainable 1,026 / 11,177,538 parameters (0.01%)" in out


def test_report_mobilenet_binary(capsys):
    assert main(["report", "--arch", "mobilenet_v2", "--head", "binary"]) == 0
    assert "trainable 1,281 /" in capsys.readouterr().out


def test_data_with_a_corrupt_mirror_prints_one_line(tmp_path, capsys):
    bad = tmp_path / "hymenoptera_data.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("hymenoptera_data/train/ants/a.png", b"not really")
    root = tmp_path / "data"
    assert main(["data", "--root", str(root), "--mirror", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "checksum mismatch" in err
    assert not any(root.iterdir())


@pytest.mark.slow
def test_data_command_with_real_mirror(tmp_path, capsys):
    mirror = os.environ.get(ENV_DATA_MIRROR)
    if not mirror or not Path(mirror).is_file():
        pytest.skip(f"{ENV_DATA_MIRROR} is not set to a local hymenoptera_data.zip (got {mirror!r})")
    root = tmp_path / "data"
    result = _run("data", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert f"dataset: {root / 'hymenoptera_data'}" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.split() == ["train", "(total)", "245"] for line in lines)
    assert any(line.split() == ["val", "(total)", "153"] for line in lines)
    assert "classes: ants, bees" in result.stdout
    assert main(["data", "--root", str(root)]) == 0  # idempotent: the complete copy is reused
    assert capsys.readouterr().out == result.stdout

"""The command line starts at once: ``--help`` and ``data --check`` never import torch.

(Importing torch takes seconds on a laptop; a learner checking a folder should not wait for it.)
Also: the ``train`` options are exactly the ``TrainConfig`` fields.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from tlcourse.cli import build_parser, main
from tlcourse.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent

PROBE = """
import sys
from tlcourse.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "torchvision", "matplotlib", "papermill") if m in sys.modules)
print("HEAVY:" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def _probe(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["data", "--help"], ["report", "--help"],
                                  ["doctor", "--help"]])
def test_help_does_not_import_torch(args):
    out = _probe(*args)
    assert out.returncode == 0 and "usage:" in out.stdout
    assert "HEAVY:\n" in out.stderr


def test_data_check_does_not_import_torch(tiny_data):
    out = _probe("data", "--check", str(tiny_data))
    assert out.returncode == 0, out.stderr
    assert "24 images" in out.stdout and "HEAVY:\n" in out.stderr


def test_every_config_field_is_a_train_option():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    options = {action.dest for action in train._actions}
    assert {f.name for f in fields(TrainConfig)} <= options


def test_bad_option_values_are_argparse_errors_naming_the_option(capsys):
    for args, expected in ((["--lr", "nan"], "lr=nan must be a finite number"),
                           (["--image-size", "50000"], "image_size=50000 is too large"),
                           (["--device", "meta"], "device='meta' is not a device name"),
                           (["--fast", "sometimes"], "fast='sometimes' is not supported")):
        with pytest.raises(SystemExit) as info:
            main(["train", *args])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert f"argument {args[0]}: {expected}" in err, err

"""Every ``TrainConfig`` field and every ``train`` option refuses bad values in one line naming it
(issue 11, items 0 and 1), and the other commands' options are bounded too.

The bad values are derived from each field's declaration (type, bounds, choices, check), so a
field added later is covered without touching this file; a new ``check=`` field must add its
own bad values to ``CHECKED`` (the test says so).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from tlcourse import TLCourseError
from tlcourse.cli import describe_unexpected, main
from tlcourse.config import MAX_CLASSES, TrainConfig

REPO = Path(__file__).resolve().parent.parent
FIELDS = list(fields(TrainConfig))


def checked_values(tmp: Path) -> dict[str, list]:
    """Bad values of the fields validated by a ``check`` function (no bounds to derive them from)."""
    a_file = tmp / "a_file.txt"
    a_file.write_text("x")
    return {
        "data_dir": ["", "   "],
        "cache_dir": ["", "   "],
        "image_size": [16, 0, 50_000, 1025],
        "weights": ["", str(tmp)],
        "device": ["meta", "cuda:x", "gpu", ""],
        "run_name": ["a/b", ".hidden", "", "x" * 300],
        "output_dir": [str(a_file), ""],
    }


def bad_values(field, tmp: Path) -> list:
    """Values of the wrong type and out of range for one field, from its declaration."""
    meta = field.metadata
    kind, low, high = meta["kind"], meta["low"], meta["high"]
    values: list = [] if meta["optional"] else [None]
    if kind is bool:
        return values + ["yes", 1, 0.0]
    if kind is int:
        values += ["3", 1.5, True]
        values += [low - 1] if low is not None else []
        values += [high + 1] if high is not None else []
    elif kind is float:
        values += ["0.1", math.nan, math.inf, -math.inf, True]
        values += [low if meta["low_open"] else low - 1] if low is not None else []
        values += [high if meta["high_open"] else high + 1] if high is not None else []
    elif kind is str:
        values += [3, b"bytes"]
    if meta["choices"] is not None:
        values += ["nonsense", list(meta["choices"])[0].upper() + "!"]
    if meta["check"] is not None:
        specific = checked_values(tmp)
        assert field.name in specific, f"add bad values for the checked field {field.name!r} to checked_values()"
        values += specific[field.name]
    return values


def test_every_field_has_bad_values(tmp_path):
    for field in FIELDS:
        assert len(bad_values(field, tmp_path)) >= 2, field.name


@pytest.mark.parametrize("field", FIELDS, ids=[f.name for f in FIELDS])
def test_every_field_refuses_bad_values_in_one_line(field, tmp_path):
    for value in bad_values(field, tmp_path):
        with pytest.raises(TLCourseError) as info:
            TrainConfig(**{field.name: value}).validate()
        message = str(info.value)
        assert message.startswith(f"{field.name}="), (value, message)
        assert "\n" not in message and len(message) < 400, message


def test_every_default_is_valid():
    TrainConfig().validate()


# --------------------------------------------------------------------------- the train command line

def cli_texts(field, tmp: Path) -> list[str]:
    """What a user could type after ``--option`` that must be refused."""
    kind = field.metadata["kind"]
    texts = []
    for value in bad_values(field, tmp):
        # Type confusion does not exist on a command line ("3" is a good text for an int field, 3 for a path).
        if value is None or isinstance(value, bytes | bool) or isinstance(value, str) != (kind is str):
            continue
        texts.append(str(value))
    if kind in (int, float):
        texts.append("twelve")
    return texts


@pytest.mark.parametrize("field", [f for f in FIELDS if f.metadata["cli"]], ids=lambda f: f.name)
def test_every_train_option_refuses_bad_text_in_one_line(field, tmp_path, capsys):
    flag = "--" + field.name.replace("_", "-")
    if field.metadata["kind"] is bool:
        attempts = [[f"{flag}=yes"], [f"--no-{flag[2:]}=0"]]
    else:
        attempts = [[f"{flag}={text}"] for text in cli_texts(field, tmp_path)]  # "=": "--lr=-inf" is no option
    assert attempts, field.name
    for argv in attempts:
        with pytest.raises(SystemExit) as info:
            main(["train", *argv])
        err = capsys.readouterr().err
        assert info.value.code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith("error: python -m tlcourse train: "), (argv, err)
        assert flag in err, (argv, err)
        if field.metadata["kind"] is not bool:
            assert f"{field.name}=" in err, (argv, err)


def test_bad_option_in_a_real_process_is_one_line(tmp_path):
    """As a learner runs it: exit status 2, one line on stderr, no torch imported to say so."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for argv in (["--seed", str(2**64)], ["--image-size", "50000"], ["--output-dir", str(Path(__file__))]):
        result = subprocess.run([sys.executable, "-m", "tlcourse", "train", *argv], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert argv[0] in result.stderr


# --------------------------------------------------------------------------- the other commands

def test_report_with_absurd_class_count_is_refused(capsys):
    with pytest.raises(SystemExit) as info:
        main(["report", "--num-classes", str(10**8)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert f"must be between 2 and {MAX_CLASSES:,}, got 100,000,000" in err


def test_head_with_absurd_class_count_is_refused():
    from tlcourse.heads import make_head

    with pytest.raises(TLCourseError, match=r"num_classes=100,000,000 is more than tlcourse supports .* 204\.8 GB"):
        make_head(512, 10**8)


@pytest.mark.parametrize("argv, expected", [
    (["predict", "--image", "x.jpg", "--checkpoint", "c.pt", "--device", "meta"], "device='meta' is not a device"),
    (["predict", "--image", "x.jpg", "--checkpoint", "c.pt", "--batch-size", "10000000"], "between 1 and 4,096"),
    (["predict", "--image", "x.jpg", "--checkpoint", "c.pt", "--topk", "0"], "must be >= 1"),
    (["course", "--timeout", "-5"], "must be >= 1"),
])
def test_other_command_options_are_bounded(argv, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and expected in err, err


# --------------------------------------------------------------------------- anything else: one line

def test_unexpected_error_is_one_line_naming_the_command(monkeypatch, capsys):
    from tlcourse.commands import report

    def broken(args):
        raise ValueError("something deep\nwith a second line")

    monkeypatch.setattr(report, "run", broken)
    assert main(["report"]) == 1
    err = capsys.readouterr().err
    assert err == "error: report failed: ValueError: something deep with a second line (run with --debug for " \
                  "the traceback)\n"
    with pytest.raises(ValueError):
        main(["report", "--debug"])


def test_disk_full_is_recognised_through_torch_s_wrapping():
    """torch's zip writer raises RuntimeError whose context is the OSError of the full disk."""
    import errno

    try:
        try:
            raise OSError(errno.EFBIG, "File too large")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    except RuntimeError as exc:
        assert describe_unexpected(exc).startswith("disk full; free some space")
    assert describe_unexpected(PermissionError(13, "Permission denied", "/ro/x")).startswith(
        "no permission to write (/ro/x)")

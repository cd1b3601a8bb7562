"""Bad dataset folders: ``check_dataset`` lists each problem, ``make_loaders`` fails in one line.

Every case builds a small folder in ``tmp_path`` with ``make_image_folder`` and then breaks it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image_folder

from tlcourse import TLCourseError
from tlcourse.checks import check_dataset
from tlcourse.data import make_loaders

REPO = Path(__file__).resolve().parents[1]


def problems_at(check, severity):
    return {p.path: p.message for p in check.problems if p.severity == severity}


def assert_loader_error(root, *fragments):
    """make_loaders raises a one-line TLCourseError containing every fragment."""
    with pytest.raises(TLCourseError) as info:
        make_loaders(root, image_size=32, batch_size=2)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_good_folder_has_no_problems(tiny_data):
    check = check_dataset(tiny_data)
    assert check.ok and not check.problems
    assert check.counts == {"train": {"ants": 6, "bees": 6}, "val": {"ants": 6, "bees": 6}}
    assert check.images_verified == 24
    assert "0 errors, 0 warnings, 0 info" in str(check)
    check.raise_if_errors()  # no error: returns quietly


def test_data_dir_does_not_exist(tmp_path):
    missing = tmp_path / "nope"
    check = check_dataset(missing)
    assert not check.ok
    assert problems_at(check, "error") == {".": problems_at(check, "error")["."]}
    assert "does not exist" in check.errors[0].message
    assert str(missing) in str(check)
    assert_loader_error(missing, str(missing), "does not exist")


def test_data_dir_is_a_file(tmp_path):
    archive = tmp_path / "hymenoptera_data.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    check = check_dataset(archive)
    assert "is a file" in check.errors[0].message and "extract" in check.errors[0].message
    assert_loader_error(archive, str(archive), "is a file")


@pytest.mark.parametrize("split", ["train", "val"])
def test_missing_split(tiny_data, split):
    shutil.rmtree(tiny_data / split)
    check = check_dataset(tiny_data)
    assert list(problems_at(check, "error")) == [split]
    assert f"missing {split}/ folder" in check.errors[0].message
    assert_loader_error(tiny_data, str(tiny_data / split), f"missing {split}/")


def test_dataset_one_level_down_is_suggested(tmp_path):
    make_image_folder(tmp_path / "outer" / "hymenoptera_data")
    check = check_dataset(tmp_path / "outer")
    assert len(check.errors) == 2
    assert f"use {tmp_path / 'outer' / 'hymenoptera_data'} as the data folder" in check.errors[0].message


@pytest.mark.parametrize("split", ["train", "val"])
def test_split_is_a_file(tiny_data, split):
    shutil.rmtree(tiny_data / split)
    (tiny_data / split).write_text("oops")
    check = check_dataset(tiny_data)
    assert problems_at(check, "error")[split].startswith(f"{split} is a file")
    assert_loader_error(tiny_data, str(tiny_data / split), "is a file")


def test_file_where_class_folder_expected(tiny_data):
    (tiny_data / "train" / "labels.csv").write_text("a,b\n")
    (tiny_data / "train" / "stray.png").write_bytes((tiny_data / "train/ants/img_0.png").read_bytes())
    check = check_dataset(tiny_data)
    warned = problems_at(check, "warning")
    assert "file where class folders are expected" in warned["train/labels.csv"]
    assert "not inside a class folder" in warned["train/stray.png"] and "train/<class>/" in warned["train/stray.png"]
    assert check.ok  # ignored files do not stop training
    loaders = make_loaders(tiny_data, image_size=32, batch_size=2)
    assert len(loaders.train.dataset) == 12


def test_class_folder_is_a_file_in_one_split(tiny_data):
    shutil.rmtree(tiny_data / "val" / "bees")
    (tiny_data / "val" / "bees").write_text("not a folder")
    check = check_dataset(tiny_data)
    assert "file where class folders are expected" in problems_at(check, "warning")["val/bees"]
    assert "only in train: bees" in problems_at(check, "error")["val"]


def test_empty_class_folder(tiny_data):
    for f in (tiny_data / "train" / "bees").iterdir():
        f.unlink()
    (tiny_data / "train" / "bees" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    check = check_dataset(tiny_data)
    assert "empty class folder" in problems_at(check, "error")["train/bees"]
    assert_loader_error(tiny_data, str(tiny_data / "train/bees"), "empty class folder")


def test_single_class(tmp_path):
    root = make_image_folder(tmp_path / "one", classes=("ants",))
    check = check_dataset(root)
    assert "only one class folder (ants)" in problems_at(check, "error")["train"]
    assert_loader_error(root, "only one class folder", "at least 2")


def test_no_class_folders(tiny_data):
    for cls in ("ants", "bees"):
        shutil.rmtree(tiny_data / "val" / cls)
    check = check_dataset(tiny_data)
    assert "val/ has no class folders" in problems_at(check, "error")["val"]


def test_class_sets_differ(tiny_data):
    os.rename(tiny_data / "val" / "bees", tiny_data / "val" / "wasps")
    check = check_dataset(tiny_data)
    message = problems_at(check, "error")["val"]
    assert "only in train: bees" in message and "only in val: wasps" in message
    assert_loader_error(tiny_data, "class folders differ", "only in val: wasps")


def test_hidden_and_system_files_are_ignored(tiny_data):
    ants = tiny_data / "train" / "ants"
    (ants / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (ants / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (ants / "._img_0.png").write_bytes(b"\0\5\26\7 macOS resource fork")  # AppleDouble, .png suffix
    (tiny_data / "train" / ".ipynb_checkpoints").mkdir()
    check = check_dataset(tiny_data)
    info = problems_at(check, "info")
    assert set(info) == {"train/ants/.DS_Store", "train/ants/Thumbs.db", "train/ants/._img_0.png",
                         "train/.ipynb_checkpoints"}
    assert check.ok and not check.warnings
    loaders = make_loaders(tiny_data, image_size=32, batch_size=4)
    assert loaders.class_names == ["ants", "bees"]  # the hidden folder is not a class
    assert len(loaders.train.dataset) == 12
    next(iter(loaders.train))  # the resource fork is never opened


def test_non_image_files_among_images(tiny_data):
    (tiny_data / "train" / "ants" / "notes.txt").write_text("ants are great")
    (tiny_data / "val" / "bees" / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42")
    check = check_dataset(tiny_data)
    warned = problems_at(check, "warning")
    assert "not an image file (suffix '.txt'), ignored" in warned["train/ants/notes.txt"]
    assert "suffix '.mp4'" in warned["val/bees/clip.mp4"]
    assert check.ok
    assert len(make_loaders(tiny_data, image_size=32, batch_size=2).train.dataset) == 12


def test_every_problem_is_listed_at_once(tiny_data):
    os.rename(tiny_data / "val" / "bees", tiny_data / "val" / "wasps")
    (tiny_data / "train" / "ants" / "notes.txt").write_text("x")
    (tiny_data / "train" / "ants" / "bad.jpg").write_bytes(b"")
    (tiny_data / "train" / "bees" / ".DS_Store").write_bytes(b"x")
    check = check_dataset(tiny_data)
    assert (len(check.errors), len(check.warnings), len(check.infos)) == (2, 1, 1)
    text = str(check)
    assert text.index("error") < text.index("warning") < text.index("info")
    assert "2 errors, 1 warnings, 1 info" in text.splitlines()[-1]
    with pytest.raises(TLCourseError, match=r"\(and 1 more; `python -m tlcourse data --check") as info:
        check.raise_if_errors()
    assert "\n" not in str(info.value)


def run_cli(*args, capsys):
    """In-process (importing torch again per subprocess costs seconds on these cores)."""
    from tlcourse.cli import main

    code = main(["data", *args])
    return code, capsys.readouterr().out


def test_cli_check_exit_codes(tiny_data, tmp_path, capsys):
    code, out = run_cli("--check", str(tiny_data), capsys=capsys)
    assert code == 0
    assert "24 images (train 12, val 12), 2 classes (ants, bees); 0 errors" in out

    (tiny_data / "val" / "ants" / "img_1.png").write_text("<html>404 Not Found</html>")
    (tiny_data / "train" / "ants" / "notes.txt").write_text("x")
    code, out = run_cli("--check", str(tiny_data), capsys=capsys)
    assert code == 1
    assert "error   val/ants/img_1.png: a text file" in out
    assert "warning train/ants/notes.txt" in out

    code, out = run_cli("--check", str(tiny_data), "--no-verify-images", capsys=capsys)
    assert code == 0  # the broken image is only found by opening it

    code, out = run_cli("--check", str(tmp_path / "nope"), capsys=capsys)
    assert code == 1 and "does not exist" in out


def test_cli_check_exit_status_of_the_process(tiny_data):
    """The real ``python -m tlcourse`` process exits with 1 on errors (one subprocess: torch import)."""
    shutil.rmtree(tiny_data / "val")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "tlcourse", "data", "--check", str(tiny_data)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "error   val: missing val/ folder" in result.stdout

"""Dataset folders and image files from issue 11: symbolic-link loops, nested and hidden folders,
look-alike class names, non-UTF-8 file names, val copied from train, float TIFFs, images whose
header alone says they would exhaust memory, and ``fetch`` that must never lose the data it has.

The checker (``data --check``), the training loader and ``predict`` must agree on every case.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import unicodedata
import zipfile
import zlib
from pathlib import Path

import pytest
from conftest import make_image_folder
from PIL import Image

from tlcourse import TLCourseError
from tlcourse.checkpoints import make_checkpoint, save_checkpoint
from tlcourse.checks import ImageLoadError, check_dataset
from tlcourse.cli import main
from tlcourse.data import IMAGENET_MEAN, IMAGENET_STD, MARKER, fetch, make_loaders
from tlcourse.images import open_rgb

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-m", "tlcourse", *args], env=environ, capture_output=True,
                          timeout=timeout)


def _counts(loaders) -> dict[str, int]:
    dataset = loaders.train.dataset
    return {name: dataset.targets.count(i) for i, name in enumerate(dataset.classes)}


def _problems(check, severity=None) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in check.problems if severity in (None, p.severity)]


# --------------------------------------------------------------------------- symbolic links

def test_folder_link_loops_inside_a_class_neither_hang_nor_mislabel(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=4)
    (data / "train/bees/loop").symlink_to("..")                    # one link back up: train/ants under 'bees'
    (data / "train/ants/a").symlink_to("..")                        # two links: the walk would branch
    (data / "train/ants/b").symlink_to("..")                        # exponentially (a/b/a/b/...)
    result = _cli("data", "--check", str(data))                     # a subprocess: a hang fails, not blocks
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    for link in ("train/ants/a", "train/ants/b", "train/bees/loop"):
        assert (f"warning {link}: link to a folder (-> ..) inside a class folder, not followed: it points back "
                "up, a loop; copy the images in, or make the class folder itself the link") in out
    assert "16 images (train 8, val 8)" in out
    loaders = make_loaders(data, image_size=32, batch_size=4)
    assert _counts(loaders) == {"ants": 4, "bees": 4}               # the loader follows the same policy


def test_class_folder_may_be_a_link_but_not_a_loop(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3)
    elsewhere = make_image_folder(tmp_path / "elsewhere", classes=("wasps",), per_class=3)
    for split in ("train", "val"):
        (data / split / "wasps").symlink_to(elsewhere / split / "wasps")  # classes kept elsewhere: fine
    check = check_dataset(data)
    assert check.ok and check.counts["train"] == {"ants": 3, "bees": 3, "wasps": 3}, str(check)
    assert _counts(make_loaders(data, image_size=32, batch_size=4)) == {"ants": 3, "bees": 3, "wasps": 3}
    (data / "train/zebras").symlink_to("..")                         # a class that is the dataset itself
    check = check_dataset(data, verify_images=False)
    assert ("train/zebras", "class folder is a link to .., which holds the dataset itself (a loop); link it to a "
                            "folder of images") in _problems(check, "error")
    with pytest.raises(TLCourseError, match=r"train/zebras: class folder is a link to \.\., which holds the dataset"):
        make_loaders(data, image_size=32, batch_size=4)


def test_two_classes_that_are_one_folder_are_an_error(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3)
    (data / "train/ants_again").symlink_to(data / "train/ants")
    check = check_dataset(data, verify_images=False)
    assert any(path.startswith("train/ants") and "would get two labels" in message
               for path, message in _problems(check, "error"))


# --------------------------------------------------------------------------- nested and hidden folders

def test_sub_folders_of_a_class_are_merged_with_a_warning(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3)
    make_image_folder(tmp_path / "more", classes=("bees", "extra"), per_class=2, splits=("train",))
    shutil.copytree(tmp_path / "more/train/bees", data / "train/ants/bees")    # named like another class
    shutil.copytree(tmp_path / "more/train/extra", data / "train/ants/extra/deeper")
    check = check_dataset(data)
    warnings = dict(_problems(check, "warning"))
    assert warnings["train/ants/bees"] == ("sub-folder of class 'ants': its 2 image(s) are trained as 'ants' "
                                           "(sub-folders are merged into their class), not as the class 'bees' it "
                                           "is named like; move them to ../bees/ if they are bees")
    assert warnings["train/ants/extra"].startswith("sub-folder of class 'ants': its 2 image(s) are trained as 'ants'")
    assert check.counts["train"] == {"ants": 7, "bees": 3}
    assert _counts(make_loaders(data, image_size=32, batch_size=4)) == {"ants": 7, "bees": 3}


def test_hidden_folder_inside_a_class_is_not_read(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3)
    hidden = data / "train/ants/.ipynb_checkpoints"
    hidden.mkdir()
    shutil.copy(data / "train/ants/img_0.png", hidden / "img_0-checkpoint.png")
    check = check_dataset(data)
    assert ("train/ants/.ipynb_checkpoints", "hidden folder, ignored") in _problems(check, "info")
    assert check.counts["train"]["ants"] == 3
    assert _counts(make_loaders(data, image_size=32, batch_size=4))["ants"] == 3


# --------------------------------------------------------------------------- names

def test_class_names_that_differ_only_in_unicode_form_are_explained(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    data = make_image_folder(tmp_path / "data", classes=("ants", nfc), per_class=2)
    (data / "val" / nfc).rename(data / "val" / nfd)
    if len(os.listdir(data / "val")) != 2 or nfd not in os.listdir(data / "val"):
        pytest.skip("this file system normalises names itself")
    check = check_dataset(data, verify_images=False)
    (error,) = check.errors
    assert error.message.endswith("'café' is spelled with different Unicode forms in train/ and val/ (NFC vs NFD, "
                                  "e.g. one copied from macOS): rename the folders so both use the same characters")


def test_file_name_that_is_not_utf8_is_printed_not_crashed_on(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=2)
    raw = os.path.join(os.fsencode(data / "train/ants"), b"caf\xe9.png")  # Latin-1 bytes from an old archive
    shutil.copy(data / "train/ants/img_0.png", raw)
    result = _cli("data", "--check", str(data), PYTHONIOENCODING="utf-8:strict", LC_ALL="C.UTF-8")
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0 and "Traceback" not in err, err
    assert r"warning train/ants/caf\xe9.png: file name is not valid UTF-8 (shown with \x escapes)" in out
    assert _counts(make_loaders(data, image_size=32, batch_size=4))["ants"] == 3   # it still trains


def test_val_that_copies_train_is_a_warning(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=3)
    shutil.copy(data / "train/bees/img_1.png", data / "val/bees/copy.png")
    check = check_dataset(data)
    assert ("val", "1 of 7 val images is a byte-identical copy of a train image (first: val/bees/copy.png = "
                   "train/bees/img_1.png): validation would measure memorisation, not generalisation; keep "
                   "different images in val/") in _problems(check, "warning")
    shutil.rmtree(data / "val")
    shutil.copytree(data / "train", data / "val")
    assert _problems(check_dataset(data), "warning")[0][1].startswith("every val image is a byte-identical copy")


# --------------------------------------------------------------------------- unusual and oversized images

def test_float_tiff_is_rescaled_not_black(tmp_path):
    ramp = Image.linear_gradient("L").resize((64, 48)).point(lambda v: v / 255.0, "F")  # 0..1 floats
    ramp.save(tmp_path / "float.tif")
    assert Image.open(tmp_path / "float.tif").mode == "F"
    rgb = open_rgb(tmp_path / "float.tif")
    low, high = rgb.getextrema()[0]
    assert rgb.mode == "RGB" and low < 10 and high > 245  # before: every pixel 0 or 1 of 255, i.e. black


def png_header(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (the pixel data is not needed)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from tlcourse.models import build_model

    model = build_model("mobilenet_v2", 2, weights=None)
    ckpt = make_checkpoint(model, epoch=1, class_names=["ants", "bees"], spec=model.tlcourse_spec, freeze="head",
                           image_size=32, mean=IMAGENET_MEAN, std=IMAGENET_STD, metrics={})
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ck") / "best_acc.pt")


def _predict_error(image: Path, checkpoint: Path, capsys) -> str:
    assert main(["predict", "--image", str(image), "--checkpoint", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_decompression_bomb_is_one_line_in_predict_check_and_training(tmp_path, checkpoint, capsys):
    bomb = png_header(tmp_path / "bomb.png", 30_000, 30_000)
    assert "bomb.png: image too large to open (Image size (900000000 pixels) exceeds limit" in \
        _predict_error(bomb, checkpoint, capsys)
    data = make_image_folder(tmp_path / "data", per_class=2)
    shutil.copy(bomb, data / "train/ants/bomb.png")
    assert check_dataset(data).bad_files == ["train/ants/bomb.png"]
    with pytest.raises(TLCourseError, match=r"bomb\.png: image too large to open .*--bad-images skip"):
        make_loaders(data, image_size=32, batch_size=4)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert _counts(make_loaders(data, image_size=32, batch_size=4, bad_images="skip"))["ants"] == 2


def test_one_pixel_wide_png_is_refused_from_its_header_everywhere(tmp_path, checkpoint, capsys):
    sliver = tmp_path / "sliver.png"
    Image.new("L", (1, 2_000_000)).save(sliver)  # 2 KB on disk; 256 x 512,000,000 px once resized
    assert sliver.stat().st_size < 10_000
    expected = ("image is 1x2000000 px, more than 50 times longer than wide: resizing its short side to 256 px "
                "would make a 256x512,000,000 px picture (~393.2 GB); crop it or delete it")
    assert expected in _predict_error(sliver, checkpoint, capsys)
    data = make_image_folder(tmp_path / "data", per_class=2)
    shutil.copy(sliver, data / "val/bees/sliver.png")
    check = check_dataset(data)
    assert _problems(check, "error") == [("val/bees/sliver.png", expected)]
    with pytest.raises(TLCourseError, match=r"sliver\.png: image is 1x2000000 px"):
        make_loaders(data, image_size=32, batch_size=4)
    unchecked = make_loaders(data, image_size=32, batch_size=8, verify_images=False)
    with pytest.raises(ImageLoadError, match=r"sliver\.png: image is 1x2000000 px"):  # not a MemoryError
        for _ in unchecked.val:
            pass


def test_subset_smaller_than_the_number_of_classes_is_refused(tmp_path):
    data = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=2)
    with pytest.raises(TLCourseError, match=r"subset=1 is fewer images than classes \(3\): some classes would have "
                                            r"no image; use at least 3"):
        make_loaders(data, image_size=32, subset=1)


# --------------------------------------------------------------------------- fetch never loses data

@pytest.fixture
def archive(tmp_path) -> Path:
    src = make_image_folder(tmp_path / "src" / "hymenoptera_data", per_class={"train": 2, "val": 1}, size=(24, 16))
    path = tmp_path / "hymenoptera_data.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for f in sorted(src.parent.rglob("*")):
            zf.write(f, f.relative_to(src.parent).as_posix())
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("marker", [True, False], ids=["complete-copy", "hand-made-copy"])
def test_forced_fetch_that_fails_keeps_the_dataset(tmp_path, archive, marker):
    root = tmp_path / "data"
    target = make_image_folder(root / "hymenoptera_data", per_class={"train": 4, "val": 3})  # 14 images
    if marker:
        (target / MARKER).write_text("source=earlier\n")
    before = _files(target)
    with pytest.raises(TLCourseError, match="dataset mirror .*nowhere.zip does not exist"):
        fetch(root, str(tmp_path / "nowhere.zip"), sha256=None, force=True, progress=False)
    archive.write_bytes(archive.read_bytes()[:200])  # and an archive that turns out corrupt
    with pytest.raises(TLCourseError):
        fetch(root, str(archive), sha256=None, force=True, progress=False)
    assert _files(target) == before
    assert sorted(os.listdir(root)) == ["hymenoptera_data"]


def test_forced_fetch_replaces_only_when_the_new_copy_is_complete(tmp_path, archive):
    root = tmp_path / "data"
    target = make_image_folder(root / "hymenoptera_data", per_class=4)
    fetch(root, str(archive), sha256=None, force=True, progress=False)
    assert (target / MARKER).is_file() and len(list(target.rglob("*.png"))) == 6
    assert sorted(os.listdir(root)) == ["hymenoptera_data"]


def test_leftover_of_a_killed_fetch_is_removed_by_the_next_one(tmp_path, archive):
    root = tmp_path / "data"
    fetch(root, str(archive), sha256=None, progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is gone, like a fetch killed with SIGKILL mid-extract
    leftover = root / f".fetch-{dead.pid}-k1ll3d" / "extract" / "hymenoptera_data" / "train"
    leftover.mkdir(parents=True)
    (leftover / "big.bin").write_bytes(b"\0" * 100_000)
    running = root / f".fetch-{os.getpid()}-busy"  # a fetch still running (this process): kept
    running.mkdir()
    fetch(root, str(archive), sha256=None, progress=False)  # even the "already complete" path cleans up
    assert sorted(os.listdir(root)) == sorted(["hymenoptera_data", running.name])

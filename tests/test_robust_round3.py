"""Round three: silent wrong results, hangs and crashes of the feature cache, interpret, lr-find, launcher, course."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from tlcourse import TLCourseError
from tlcourse.cli import main
from tlcourse.engine import train

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(weights=None, image_size=32, batch_size=4, seed=1, device="cpu", progress="epoch", arch="resnet18")
pytestmark = pytest.mark.usefixtures("one_thread")


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env.pop("PYTHONUNBUFFERED", None)
    return env


# --------------------------------------------------------------------------- case 4: EXIF orientation

def _exif_photo(path: Path, orientation: int) -> None:
    """A non-square JPEG whose EXIF orientation tag says how to turn it."""
    pixels = torch.zeros(24, 48, 3, dtype=torch.uint8)
    pixels[:, :24] = torch.tensor([220, 40, 40], dtype=torch.uint8)
    pixels[:, 24:] = torch.tensor([40, 60, 220], dtype=torch.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels.numpy()).save(path, exif=exif.tobytes(), quality=95)


def test_a_new_exif_orientation_with_the_same_size_and_mtime_is_not_a_stale_hit(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", per_class={"train": 3, "val": 2})
    photo = data / "train" / "ants" / "photo.jpg"
    _exif_photo(photo, 1)
    before = photo.stat()
    cfg = dict(data_dir=str(data), output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
               epochs=1, augment=False, probe=False, **FAST)
    train(**cfg)
    capsys.readouterr()
    blob = photo.read_bytes()
    original = Image.open(photo).getexif().tobytes()
    rotated = Image.Exif()
    rotated[0x0112] = 6                                          # "rotate 90": only the tag's value changes
    assert len(rotated.tobytes()) == len(original)
    photo.write_bytes(blob.replace(original, rotated.tobytes(), 1))
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = photo.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    result = train(**cfg)
    out = capsys.readouterr().out
    assert "1 pass(es) over 7 images" in out                      # train recomputed, val read from the cache
    uncached = train(**cfg | {"cache": False, "output_dir": str(tmp_path / "plain")})
    assert result.history[0]["val_loss"] == pytest.approx(uncached.history[0]["val_loss"], abs=1e-6)


# --------------------------------------------------------------------------- case 10: a non-UTF-8 file name

@pytest.mark.skipif(sys.platform != "linux", reason="Linux file names are bytes")
def test_a_training_image_whose_name_is_not_utf8_trains_with_the_cache(tmp_path, capsys):
    data = make_image_folder(tmp_path / "d", per_class={"train": 3, "val": 2})
    source = data / "train" / "bees" / "img_0.png"
    os.rename(source, os.path.join(os.fsencode(source.parent), b"caf\xe9.png"))
    cfg = dict(data_dir=str(data), output_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
               epochs=1, probe=False, **FAST)
    train(**cfg)
    train(**cfg)
    assert "entries read from the feature cache" in capsys.readouterr().out


# --------------------------------------------------------------------------- case 11 and lr-find ranges

def test_lr_find_with_the_fine_tune_recipe_sweeps_its_head_phase(tiny_data, tmp_path, capsys):
    plot = tmp_path / "lr.png"
    assert main(["lr-find", "--recipe", "fine_tune", "--data-dir", str(tiny_data), "--weights", "none",
                 "--image-size", "32", "--batch-size", "4", "--steps", "12", "--plot", str(plot),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "fine_tune's lr is the peak of its head-only phase" in out and "suggested lr:" in out and plot.exists()


@pytest.mark.parametrize("start, end", [("1e-300", "1"), ("1e-7", "1e300")])
def test_an_absurd_lr_find_range_is_refused_in_one_line(tiny_data, capsys, start, end):
    assert main(["lr-find", "--data-dir", str(tiny_data), "--weights", "none", "--start-lr", start,
                 "--end-lr", end]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "where no optimizer trains" in err and "start_lr=1e-7 .. end_lr=10" in err


# --------------------------------------------------------------------------- interpret and predict: names

@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """A run whose class names hold a mathtext dollar and a terminal escape sequence."""
    root = tmp_path_factory.mktemp("odd")
    classes = ("$5 \\q$ bills", "red\x1b[31mX\x1b[0m")       # mathtext would fail on \q between dollars
    data = make_image_folder(root / "d", classes=classes, per_class={"train": 3, "val": 2})
    result = train(data_dir=str(data), output_dir=str(root / "runs"), cache=False, epochs=1, probe=False,
                   **FAST | {"progress": "none"})
    return data, result


def test_interpret_plots_and_prints_odd_class_names(odd_run, tmp_path, capsys):
    data, result = odd_run
    assert main(["interpret", "--checkpoint", str(result.run_dir / "best_acc.pt"), "--data-dir", str(data), "--k", "4",
                 "--cams", "2", "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "red\\x1b[31mX\\x1b[0m" in out and "$5 \\q$ bills" in out
    assert (tmp_path / "rep" / "confusion.png").stat().st_size > 0 and (tmp_path / "rep" / "gradcam.png").exists()


def test_predict_prints_escape_sequences_as_text(odd_run, capsys):
    data, result = odd_run
    assert main(["predict", "--checkpoint", str(result.run_dir / "best_acc.pt"), "--image", str(data / "val")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31m" in out


def test_interpret_refuses_a_small_split_before_the_forward_pass(odd_run, monkeypatch, capsys):
    data, result = odd_run
    monkeypatch.setattr("tlcourse.interpret._forward", lambda *a, **k: pytest.fail("ran the forward pass"))
    checkpoint = str(result.run_dir / "best_acc.pt")
    assert main(["interpret", "--checkpoint", checkpoint, "--data-dir", str(data)]) == 2   # the default --k 9 > 4
    err = capsys.readouterr().err.strip()
    assert err == "error: --k 9 is larger than the val split (4 images); use --k 4 or less"


# --------------------------------------------------------------------------- case 8 and the launcher

def test_too_many_processes_are_refused_before_starting_any(tiny_data, capsys):
    assert main(["train", "--data-dir", str(tiny_data), "--nproc-per-node", "500"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --nproc-per-node 500: this machine has") and "\n" not in err


def test_a_second_machine_that_never_comes_is_waited_for_within_the_timeout(tiny_data, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tlcourse", "train", "--data-dir", str(tiny_data), "--weights",
                           "none", "--image-size", "32", "--epochs", "1", "--nnodes", "2", "--nproc-per-node", "1",
                           "--master-addr", "127.0.0.1", "--master-port", str(port), "--dist-timeout", "4",
                           "--output-dir", str(tmp_path / "ck")], capture_output=True, text=True, env=_env(),
                          cwd=tmp_path, timeout=240)
    took = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and took < 200, proc.stderr[-2000:]
    assert lines[0].startswith("waiting up to 4 s (--dist-timeout) for 2 machines to join at 127.0.0.1:")
    assert len(lines) == 2 and "did not all join within 4 s" in lines[1] and "1/2" in lines[1]


# --------------------------------------------------------------------------- the course runner, piped output

def test_a_half_written_notebook_is_named(tmp_path, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    (folder / "01_broken.ipynb").write_text('{"cells": [{"cell_type": "code", "sou')
    from tlcourse.course import run_course

    with pytest.raises(TLCourseError, match=r"01_broken.ipynb is not a readable notebook \(NotJSONError\); restore"):
        run_course(folder=folder, output=tmp_path / "out", check_weights=False)


def test_the_one_time_pass_prints_progress_lines_when_piped(tiny_data, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "tlcourse", "train", "--data-dir", str(tiny_data), "--weights",
                             "none", "--image-size", "32", "--epochs", "1", "--batch-size", "2", "--no-probe",
                             "--output-dir", str(tmp_path / "ck"), "--cache-dir", str(tmp_path / "cache")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    first = proc.stdout.readline()          # arrives while the run goes on: line-buffered, not at exit
    alive = proc.poll() is None
    rest, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert first.startswith("caching pass: 4/24 images") and alive
    assert sum(line.startswith("caching pass:") for line in rest.splitlines()) >= 5


def test_show_batch_shows_dollar_class_names_literally():
    """Class names are folder names: '$' must not switch matplotlib to mathtext (an odd count crashes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from tlcourse.plots import show_batch

    fig = show_batch(torch.zeros(2, 3, 8, 8), [0, 1], ["cost$", "a$b$c"], ncols=2)
    fig.canvas.draw()
    assert [ax.get_title() for ax in fig.axes[:2]] == [r"cost\$", r"a\$b\$c"]

"""Print the "round two" table of docs/robustness.md (issue 11): each case is built and run through
the shipped code, and the row shows the one line a learner gets.

    PYTHONPATH=. python benchmarks/robustness_round_two.py > /tmp/round_two.md

Runs tiny trainings (MobileNetV2, random init, 32 px) in a temporary folder; a full disk is a
file-size limit (``RLIMIT_FSIZE``) set in a subprocess from epoch 2 on, a read-only folder a
read-only bind mount in a private mount namespace (``unshare -m``, as root) or ``chmod`` (not
root). Temporary paths are shortened to ``…/``, run-folder time stamps to ``TIME`` and process ids
to ``PID``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
import zlib
from pathlib import Path

from PIL import Image
from robustness_table import cli, make_folder, print_cases, shorten

from tlcourse import TLCourseError
from tlcourse import checkpoints as ck
from tlcourse.checks import check_dataset
from tlcourse.config import TrainConfig
from tlcourse.course import run_course
from tlcourse.data import fetch, make_loaders
from tlcourse.engine import train
from tlcourse.history import HISTORY_JSON

REPO = Path(__file__).resolve().parent.parent

FAST = ["--arch", "mobilenet_v2", "--weights", "none", "--batch-size", "8", "--image-size", "32", "--progress", "none"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
TMP = Path(tempfile.mkdtemp(prefix="tlcourse-round-two-"))


def short(text: str) -> str:
    return shorten(text, TMP)



def error_of(call) -> str:
    try:
        call()
    except TLCourseError as exc:
        return f"TLCourseError: {exc}"
    return "accepted (!)"


def epochs_of(run_dir: Path) -> list[int]:
    return [row["epoch"] for row in json.loads((run_dir / HISTORY_JSON).read_text())]


def data(name: str, classes=("ants", "bees")) -> Path:
    return make_folder(TMP / name, classes)


def base_run(name: str, epochs: int) -> Path:
    result = train(data_dir=str(data(f"{name}-data")), epochs=epochs, output_dir=str(TMP / name), run_name=name,
                   arch="mobilenet_v2", weights=None, batch_size=8, image_size=32, progress="none")
    return result.run_dir


# --------------------------------------------------------------------------- data loss and lost work

def forced_fetch_missing_mirror():
    root = TMP / "fetch-data"
    target = make_folder(root / "hymenoptera_data")
    before = len(list(target.rglob("*.png")))
    line = error_of(lambda: fetch(root, str(TMP / "nope.zip"), force=True, progress=False))
    return line, f"dataset kept: {len(list(target.rglob('*.png')))} of {before} images"


DISK_FULL = r"""
import resource, sys
from tlcourse import checkpoints
real = checkpoints.CheckpointSaver.save
def save(self, *args, **kwargs):
    if self.saved_epoch:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    return real(self, *args, **kwargs)
checkpoints.CheckpointSaver.save = save
from tlcourse.cli import main
sys.exit(main(sys.argv[1:]))
"""


def disk_full():
    out = TMP / "full"
    result = subprocess.run([sys.executable, "-c", DISK_FULL, "train", "--data-dir", str(data("full-data")),
                             "--epochs", "2", "--output-dir", str(out), "--run-name", "full", *FAST],
                            env=ENV, capture_output=True, text=True)
    (run_dir,) = out.iterdir()
    return (f"exit {result.returncode}: {result.stderr.strip()}",
            f"history.json lists epochs {epochs_of(run_dir)}; latest.pt holds epoch "
            f"{ck.load_checkpoint(run_dir / ck.LATEST)['epoch']}")


READ_ONLY = r"""
import contextlib, io, json, sys
from tlcourse.cli import main
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = main(json.loads(sys.argv[1]))
print(json.dumps([code, out.getvalue(), err.getvalue()]))
"""


def read_only(folder: Path, argv: list[str]):
    command = [sys.executable, "-c", READ_ONLY, json.dumps(argv)]
    if os.geteuid() == 0:
        command = ["unshare", "-m", "sh", "-c", f'mount --bind -o ro "{folder}" "{folder}" && exec "$@"', "sh",
                   *command]
    else:
        folder.chmod(0o555)
    result = subprocess.run(command, env=ENV, capture_output=True, text=True)
    if os.geteuid() != 0:
        folder.chmod(0o755)
    if result.returncode:
        return f"could not make a folder read-only here: {result.stderr.strip()[:200]}", ""
    code, out, err = json.loads(result.stdout.splitlines()[-1])
    return f"exit {code}: {err.strip()}", f"epochs trained before the refusal: {out.count('EPOCH')}"


def resume_read_only():
    run_dir = base_run("ro", 1)
    return read_only(run_dir, ["train", "--resume", str(run_dir / ck.LATEST), "--epochs", "2"])


def killed_fetch():
    root = TMP / "killed-fetch"
    root.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / f".fetch-{dead.pid}-abc" / "extract").mkdir(parents=True)
    (root / f".fetch-{dead.pid}-abc" / "extract" / "part.bin").write_bytes(b"\0" * 1_000_000)
    archive = shutil.make_archive(str(TMP / "hymenoptera_data"), "zip", TMP / "fetch-data")
    fetch(root, archive, sha256=None, progress=False)
    left = sorted(p for p in os.listdir(root) if p != "hymenoptera_data")
    return "the next fetch removes it", f"left beside the dataset: {left}"


def course_output_sources():
    sources = TMP / "notebooks"
    sources.mkdir()
    shutil.copy(sorted((REPO / "notebooks").glob("01_*.ipynb"))[0], sources)
    return error_of(lambda: run_course(folder=sources, output=sources, smoke=True, echo=lambda line: None)), ""


def resume_older(run_dir: Path, epoch1: bytes):
    (run_dir / ck.BEST_ACC).write_bytes(epoch1)
    before = (run_dir / ck.LATEST).read_bytes(), epochs_of(run_dir)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        branch = train(resume=run_dir / ck.BEST_ACC, epochs=2)
    kept = (run_dir / ck.LATEST).read_bytes() == before[0] and epochs_of(run_dir) == before[1]
    printed = next(line for line in out.getvalue().splitlines() if "new run folder" in line)
    return printed, (f"old run untouched: {kept} (epochs {epochs_of(run_dir)}); new run {branch.run_dir.name}: "
                     f"epochs {epochs_of(branch.run_dir)}")


def killed_save():
    run_dir = base_run("killed", 1)
    code = ("import sys, time\nfrom tlcourse.files import atomic_write\n"
            "atomic_write(sys.argv[1], lambda fh: (fh.write(b'x' * 4096), fh.flush(), time.sleep(600)))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir / ck.BEST_ACC)], env=ENV)
    while not any(".tmp-" in p for p in os.listdir(run_dir)):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    left = [p for p in os.listdir(run_dir) if ".tmp-" in p]
    train(resume=run_dir / ck.LATEST, epochs=2)
    return f"left by the kill: {left}", f"after the next run: {[p for p in os.listdir(run_dir) if '.tmp-' in p]}"


# --------------------------------------------------------------------------- folders and names

def check_lines(root: Path, *, strict: bool = False) -> str:
    env = {**ENV, **({"PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8"} if strict else {})}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tlcourse", "data", "--check", str(root)], env=env,
                            capture_output=True, timeout=120)
    lines = [ln for ln in result.stdout.decode().splitlines() if ln.startswith(("error", "warning"))]
    return (f"exit {result.returncode}: " + " / ".join(lines) + (f" {result.stderr.decode()[-200:]}"
                                                                   if result.returncode > 1 else ""),
            f"{time.perf_counter() - started:.1f} s")


def link_loop():
    root = data("loop")
    (root / "train/bees/loop").symlink_to("..")
    line, seconds = check_lines(root)
    loaders = make_loaders(root, image_size=32, batch_size=4)
    counts = {c: loaders.train.dataset.targets.count(i) for i, c in enumerate(loaders.train.dataset.classes)}
    return line, f"{seconds}; training images per class {counts}"


def two_link_loop():
    root = data("loop2")
    (root / "train/ants/a").symlink_to("..")
    (root / "train/ants/b").symlink_to("..")
    return check_lines(root)


def class_link_loop():
    root = data("classloop")
    (root / "train/zebras").symlink_to("..")
    return error_of(lambda: make_loaders(root, image_size=32)), ""


def nested_like_class():
    root = data("nested")
    shutil.copytree(root / "train/bees", root / "train/ants/bees")
    return check_lines(root)[0], ""


def unicode_names():
    nfc = unicodedata.normalize("NFC", "café")
    root = data("unicode", classes=("ants", nfc))
    (root / "val" / nfc).rename(root / "val" / unicodedata.normalize("NFD", "café"))
    return check_lines(root)[0], ""


def non_utf8():
    root = data("latin1")
    shutil.copy(root / "train/ants/img_0.png", os.path.join(os.fsencode(root / "train/ants"), b"caf\xe9.png"))
    return check_lines(root, strict=True)[0], "stdout: strict UTF-8"


# --------------------------------------------------------------------------- images and checkpoints

def png_header(path: Path, width: int, height: int) -> Path:
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    raw = bytearray(buffer.getvalue())
    raw[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(raw))
    return path


def predict_bomb(checkpoint: Path):
    bomb = png_header(TMP / "bomb.png", 30_000, 30_000)
    return cli("predict", "--image", str(bomb), "--checkpoint", str(checkpoint)), ""


def crafted(checkpoint: Path, change, name: str):
    import torch

    ckpt = torch.load(checkpoint, weights_only=True)
    change(ckpt)
    path = TMP / name
    torch.save(ckpt, path)
    return cli("predict", "--image", str(TMP / "plain/val"), "--checkpoint", str(path)), ""


def sliver(checkpoint: Path):
    path = TMP / "sliver.png"
    Image.new("L", (1, 2_000_000)).save(path)
    root = data("sliver")
    shutil.copy(path, root / "val/bees/sliver.png")
    found = "; ".join(f"{p.severity} {p.path}" for p in check_dataset(root).problems)
    return (cli("predict", "--image", str(path), "--checkpoint", str(checkpoint)),
            f"{path.stat().st_size:,} bytes on disk; data --check: {found}")


def float_tiff():
    path = TMP / "float.tif"
    Image.linear_gradient("L").point(lambda v: v / 255.0, "F").save(path)
    from tlcourse.images import open_rgb

    return f"loads as RGB with values {open_rgb(path).getextrema()[0]} (was all 0-1 of 255: black)", ""


def identical_val():
    root = data("copies")
    shutil.rmtree(root / "val")
    shutil.copytree(root / "train", root / "val")
    return check_lines(root)[0], ""


def hidden_in_class():
    root = data("hidden")
    (root / "train/ants/.ipynb_checkpoints").mkdir()
    shutil.copy(root / "train/ants/img_0.png", root / "train/ants/.ipynb_checkpoints/img_0-checkpoint.png")
    check = check_dataset(root)
    info = next(p for p in check.infos if "ipynb" in p.path)
    return f"info {info.path}: {info.message}", f"train/ants counted: {check.counts['train']['ants']} images"


# --------------------------------------------------------------------------- resume

def resume_lr(run_dir: Path):
    result = train(resume=run_dir / ck.LATEST, epochs=4, lr=0.5)
    saved = ck.load_checkpoint(run_dir / ck.LATEST)
    return (f"epoch 4 trained at lr {result.history[-1]['lr']}; latest.pt: config lr {saved['config']['lr']}, "
            f"optimizer lr {saved['optimizer']['param_groups'][0]['lr']}"), ""


def resume_moved_data(run_dir: Path):
    import torch

    ckpt = torch.load(run_dir / ck.LATEST, weights_only=True)
    ckpt["config"]["data_dir"] = str(TMP / "moved-away")
    path = run_dir / "moved.pt"
    torch.save(ckpt, path)
    return cli("train", "--resume", str(path), "--epochs", "4"), ""


def rows() -> list[tuple[str, object]]:
    resumable = base_run("resumable", 1)
    epoch1 = (resumable / ck.LATEST).read_bytes()
    train(resume=resumable / ck.LATEST, epochs=3)
    checkpoint = resumable / ck.LATEST
    a_file = TMP / "notes.txt"
    a_file.write_text("x")
    locked = TMP / "locked"
    locked.mkdir()
    plain = data("plain")
    return [
        ("**Data loss and lost work**", None),
        ("`fetch(force=True)` over a hand-made dataset, mirror missing", forced_fetch_missing_mirror),
        ("disk full while saving epoch 2 (file-size limit)", disk_full),
        ("`train --resume` into a run folder that became read-only", resume_read_only),
        ("a `fetch` killed (SIGKILL) during extraction left `.fetch-PID-…/` (1 MB)", killed_fetch),
        ("`course --output` = the folder of the source notebooks", course_output_sources),
        ("`--resume best_acc.pt` (epoch 1) `--epochs 2` on a 3-epoch run", lambda: resume_older(resumable, epoch1)),
        ("a checkpoint save killed (SIGKILL) mid-write", killed_save),
        ("**Hangs and wrong labels**", None),
        ("`train/bees/loop -> ..` (one link back up)", link_loop),
        ("`train/ants/a -> ..` and `train/ants/b -> ..` (the walk would branch exponentially)", two_link_loop),
        ("a class folder that is a link to `..`", class_link_loop),
        ("sub-folder `train/ants/bees/` named like another class", nested_like_class),
        ("class `café` spelled NFC in train/, NFD in val/", unicode_names),
        ("a file name that is not UTF-8 (`caf\\xe9.png`), strict UTF-8 stdout", non_utf8),
        ("**Bad input**", None),
        ("`predict` on a PNG whose header says 30,000 × 30,000 px", lambda: predict_bomb(checkpoint)),
        ("checkpoint dict without `arch`", lambda: crafted(checkpoint, lambda c: c.pop("arch"), "no_arch.pt")),
        ("checkpoint whose class list is shorter than its head",
         lambda: crafted(checkpoint, lambda c: c.update(class_names=["ants"]), "short.pt")),
        ("`train --resume latest.pt --arch resnet18 --freeze all`",
         lambda: (cli("train", "--resume", str(checkpoint), "--arch", "resnet18", "--freeze", "all"), "")),
        ("`--resume` when the run's data folder has moved", lambda: resume_moved_data(resumable)),
        ("**Parameters and resources without bounds**", None),
        ("`train --seed 18446744073709551616`", lambda: (cli("train", "--seed", str(2**64)), "")),
        ("`train --dropout 1.5`", lambda: (cli("train", "--dropout", "1.5"), "")),
        ("`TrainConfig(weight_decay=nan)`", lambda: (error_of(lambda: TrainConfig(weight_decay=math.nan).validate()),
                                                     "")),
        ("`train --device meta`", lambda: (cli("train", "--device", "meta"), "")),
        ("`train --run-name` of 300 characters", lambda: (cli("train", "--run-name", "x" * 300), "")),
        ("`train --output-dir` that is a file", lambda: (cli("train", "--output-dir", str(a_file)), "")),
        ("`train --output-dir` that is read-only",
         lambda: read_only(locked, ["train", "--data-dir", str(plain), "--output-dir", str(locked), *FAST])),
        ("`train --image-size 50000`", lambda: (cli("train", "--image-size", "50000"), "")),
        ("`report --num-classes 100000000`", lambda: (cli("report", "--num-classes", str(10**8)), "")),
        ("a 1 × 2,000,000 px PNG (`predict`; `data --check`)", lambda: sliver(checkpoint)),
        ("`train --resume latest.pt --epochs 4 --lr 0.5` (run trained at 0.001)", lambda: resume_lr(resumable)),
        ("**Questionable before**", None),
        ("hidden folder `.ipynb_checkpoints/` inside a class", hidden_in_class),
        ("val/ byte-identical to train/", identical_val),
        ("float (mode F) TIFF with values 0..1", float_tiff),
        ("`make_loaders(subset=1)` with 2 classes", lambda: (error_of(lambda: make_loaders(plain, subset=1)),
                                                             "")),
        ("**The command line itself**", None),
        ("`course -p wieghts None` (a typo)", lambda: (cli("course", "--only", "01", "-p", "wieghts", "None"), "")),
        ("an unreadable image: the advice names a real flag", lambda: (error_of(lambda: bad_image_advice()), "")),
    ]


def bad_image_advice():
    root = data("truncated")
    raw = (root / "train/ants/img_0.png").read_bytes()
    (root / "train/ants/img_0.png").write_bytes(raw[: len(raw) // 2])
    make_loaders(root, image_size=32)


def main_table(first: int = 57) -> int:
    return print_cases(rows, short, first, TMP)


if __name__ == "__main__":
    raise SystemExit(main_table())

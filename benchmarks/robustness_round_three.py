"""Print the "round three" table of docs/robustness.md (issue 23): each case is built and run through
the shipped code, and the row shows the one line a learner gets.

    PYTHONPATH=. python benchmarks/robustness_round_three.py > /tmp/round_three.md

Tiny runs (ResNet-18 or MobileNetV2, random init, 32 px) in a temporary folder. Temporary paths are
shortened to ``…/``, run-folder time stamps to ``TIME``, process ids to ``PID``, cache entry names
to ``KEY``, and random temporary-name parts to ``RND``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from PIL import Image
from robustness_table import cli, make_folder, print_cases, shorten

from tlcourse import TLCourseError
from tlcourse import checkpoints as ck
from tlcourse.cli import main
from tlcourse.course import check_parameter_values, parse_value, run_course
from tlcourse.engine import train
from tlcourse.feature_cache import FeatureCache
from tlcourse.files import write_json

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
TMP = Path(tempfile.mkdtemp(prefix="tlcourse-round-three-"))
FAST = dict(arch="resnet18", weights=None, image_size=32, batch_size=4, seed=1, progress="none")


def short(text: str) -> str:
    return shorten(text, TMP)



def warnings_of(call) -> tuple[object, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        value = call()
    return value, err.getvalue().strip()


def data(name: str, classes=("ants", "bees")) -> Path:
    return make_folder(TMP / name, classes)


def cache_with_entry(name: str, rows: int = 5, key: dict | None = None) -> tuple[FeatureCache, dict, Path]:
    key = key or {"kind": "table", "torch": torch.__version__}
    cache = FeatureCache(TMP / name)
    writer = cache.writer(key, "table entry")
    writer.write(torch.randn(rows, 3))
    return cache, key, writer.commit([i % 2 for i in range(rows)])


# --------------------------------------------------------------------------- data loss and security

def clear_with_user_files():
    home = TMP / "home"
    home.mkdir()
    user = {".tmp-notes": "mine", ".config.tmp-1": "mine", "a" * 40 + ".json": '{"my": 1}', "thesis.txt": "work"}
    for name, text in user.items():
        (home / name).write_text(text)
    cache, _, _ = cache_with_entry("home")
    line = cli("cache", "clear", "--cache-dir", str(home))
    kept = sum((home / n).exists() for n in user)
    return line, f"user files kept: {kept} of {len(user)}"


def planted_symlink():
    shared = TMP / "shared"
    shared.mkdir(mode=0o1777)
    victim = TMP / "victim.txt"
    victim.write_text("the other user's file")
    names = iter(["planted", "fresh"])
    original = tempfile._get_candidate_names
    tempfile._get_candidate_names = lambda: names
    try:
        (shared / f".args.json.tmp-{os.getpid()}").symlink_to(victim)            # the old predictable name
        (shared / f".args.json.tmp-{os.getpid()}-planted").symlink_to(victim)    # the next name mkstemp tries
        write_json({"lr": 0.1}, shared / "args.json")
    finally:
        tempfile._get_candidate_names = original
    return (f"args.json written ({(shared / 'args.json').stat().st_size} bytes) through a new exclusive file",
            f"victim unchanged: {victim.read_text() == 'the other user' + chr(39) + 's file'}")


def crafted_parameter():
    text = "('\"+str(__import__(\"os\").system(\"touch PWNED\"))+\"',)"
    try:
        check_parameter_values({"arch": parse_value(text)})
    except TLCourseError as exc:
        line = f"TLCourseError: {exc}"
    else:
        line = "accepted (!)"
    return line, f"value: `{text}`"


# --------------------------------------------------------------------------- silent wrong results

def exif_rotation():
    root = data("exif")
    photo = root / "train/ants/photo.jpg"
    pixels = torch.zeros(24, 48, 3, dtype=torch.uint8)
    pixels[:, 24:] = 200
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.fromarray(pixels.numpy()).save(photo, exif=exif.tobytes())
    before = photo.stat()
    cfg = dict(data_dir=str(root), output_dir=str(TMP / "exif-runs"), cache_dir=str(TMP / "exif-cache"), epochs=1,
               augment=False, probe=False, **FAST)
    train(**cfg)
    rotated = Image.Exif()
    rotated[0x0112] = 6
    photo.write_bytes(photo.read_bytes().replace(exif.tobytes(), rotated.tobytes(), 1))
    os.utime(photo, ns=(before.st_atime_ns, before.st_mtime_ns))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cached = train(**cfg | {"progress": "epoch"})
    plain = train(**cfg | {"cache": False})
    passes = re.search(r"\d+ pass\(es\) over \d+ images", out.getvalue())
    return (f"{passes.group(0) if passes else 'no pass (stale hit!)'} recomputed; val_loss "
            f"{cached.history[0]['val_loss']:.4f} cached vs {plain.history[0]['val_loss']:.4f} without the cache"), \
        "same size, inode and mtime"


def flipped_labels():
    cache, key, path = cache_with_entry("flip")
    raw = path.read_bytes()
    length, magic = struct.unpack("<Q8s", raw[-16:])
    header = json.loads(raw[-16 - length:-16])
    header["targets"] = [1 - t for t in header["targets"]]
    blob = json.dumps(header).encode()
    path.write_bytes(raw[:-16 - length] + blob + struct.pack("<Q8s", len(blob), magic))
    hit, err = warnings_of(lambda: cache.load(key))
    return err, f"entry used: {hit is not None}"


def resume_phase_two_lr():
    root = data("ft")
    common = dict(data_dir=str(root), recipe="fine_tune", epochs=3, freeze_epochs=1, **FAST)
    reference = train(output_dir=str(TMP / "ft-ref"), lr=4e-3, **common)
    save = ck.CheckpointSaver.save

    def stop(self, model, *, history, **kwargs):
        save(self, model, history=history, **kwargs)
        if history[-1]["epoch"] == 2:
            raise KeyboardInterrupt

    ck.CheckpointSaver.save = stop
    try:
        train(output_dir=str(TMP / "ft-run"), lr=1e-3, **common)
    except KeyboardInterrupt:
        pass
    finally:
        ck.CheckpointSaver.save = save
    (run_dir,) = (TMP / "ft-run").iterdir()
    resumed = train(resume=run_dir / ck.LATEST, lr=4e-3)
    latest = ck.load_checkpoint(resumed.latest_path)
    return (f"epoch 3 trained at head lr {resumed.history[-1]['lr']:.6g} (an uninterrupted run at lr 0.004: "
            f"{reference.history[-1]['lr']:.6g}); latest.pt config lr {latest['config']['lr']}"), \
        "run started at lr 0.001, resumed inside phase 2 with --lr 0.004"


# --------------------------------------------------------------------------- hangs and crashes

def second_machine_missing():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tlcourse", "train", "--data-dir", str(data("ddp")), "--weights",
                           "none", "--image-size", "32", "--epochs", "1", "--nnodes", "2", "--nproc-per-node", "1",
                           "--master-addr", "127.0.0.1", "--master-port", str(port), "--dist-timeout", "5",
                           "--output-dir", str(TMP / "ddp-ck")], capture_output=True, text=True, env=ENV, cwd=TMP,
                          timeout=300)
    lines = proc.stderr.strip().splitlines()
    return f"exit {proc.returncode}: {' / '.join(lines[-2:])}", f"{time.monotonic() - started:.0f} s in all"


def fifo_entry():
    cache, key, path = cache_with_entry("fifo")
    path.unlink()
    os.mkfifo(path)
    box = {}
    started = time.monotonic()
    thread = threading.Thread(target=lambda: box.update(r=warnings_of(lambda: cache.load(key))), daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():
        return "hung (!)", ""
    return box["r"][1], f"{time.monotonic() - started:.2f} s; entry used: {box['r'][0] is not None}"


def deep_header():
    cache, key, path = cache_with_entry("deep")
    blob = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(blob + struct.pack("<Q8s", len(blob), b"TLCFEAT1"))
    return cli("cache", "list", "--cache-dir", str(TMP / "deep")).splitlines()[0], \
        "training: " + warnings_of(lambda: cache.load(key))[1]


def non_utf8_training():
    root = data("latin1")
    os.rename(root / "train/ants/img_0.png", os.path.join(os.fsencode(root / "train/ants"), b"caf\xe9.png"))
    cfg = dict(data_dir=str(root), output_dir=str(TMP / "latin1-runs"), cache_dir=str(TMP / "latin1-cache"),
               epochs=1, probe=False, **FAST)
    train(**cfg)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(**cfg | {"progress": "epoch"})
    read = re.search(r"\d+ entr\w+ read from the feature cache", out.getvalue())
    return f"trained; second run: {read.group(0) if read else 'nothing read'}", ""


def lr_find_fine_tune():
    line = cli("lr-find", "--recipe", "fine_tune", "--data-dir", str(data("lrf")), "--weights", "none",
               "--image-size", "32", "--batch-size", "4", "--steps", "12", "--plot", str(TMP / "lr.png"),
               "--cache-dir", str(TMP / "lrf-cache"))
    code = line.split(":")[0]
    said = [part for part in line.split("suggested lr:")[1:]]
    return f"{code}: lr_find: recipe fine_tune's lr is the peak of its head-only phase; sweeping the head-only " \
           f"model … suggested lr:{said[0].split()[0] if said else '?'}", ""


# --------------------------------------------------------------------------- questionable before

def foreign_json():
    cache, _, _ = cache_with_entry("foreign")
    (TMP / "foreign" / ("b" * 40 + ".json")).write_text("[1, 2")
    return cli("cache", "list", "--cache-dir", str(TMP / "foreign")).splitlines()[0], ""


def clear_while_training():
    cache = FeatureCache(TMP / "busy")
    writer = cache.writer({"busy": 1}, "a training writing its cache")
    writer.write(torch.randn(4, 3))
    line = cli("cache", "clear", "--cache-dir", str(TMP / "busy"))
    kept = writer.tmp.exists()
    writer.commit([0, 1, 0, 1])
    return line, f"the training's file kept: {kept}, committed afterwards: {cache.load({'busy': 1}) is not None}"


def wrong_shape():
    cache, key, _ = cache_with_entry("shape", rows=5, key={"kind": "table", "count": 7, "torch": torch.__version__})
    return warnings_of(lambda: cache.load(key))[1], ""


def odd_class_names():
    root = make_folder(TMP / "odd", ("$5 \\q$ bills", "red\x1b[31mX\x1b[0m"))
    run = train(data_dir=str(root), output_dir=str(TMP / "odd-runs"), cache=False, epochs=1, probe=False, **FAST)
    return root, run.run_dir / ck.BEST_ACC


def interpret_dollars(odd):
    root, best = odd
    line = cli("interpret", "--checkpoint", str(best), "--data-dir", str(root), "--k", "4", "--cams", "2",
               "--out", str(TMP / "odd-report"))
    pngs = sorted(p.name for p in (TMP / "odd-report").glob("*.png"))
    return line.split(":")[0] + ": report written", f"figures: {', '.join(pngs)}"


def escapes(odd):
    root, best = odd
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["predict", "--checkpoint", str(best), "--image",
                     str(root / "val" / "red\x1b[31mX\x1b[0m" / "img_0.png")])
    shown = next((line.split(")", 1)[1].split("p=")[0].strip() for line in out.getvalue().splitlines()
                  if "red" in line and line.strip()[:2] in ("1)", "2)")), "?")
    return f"exit {code}: prints `{shown}`", f"raw ESC bytes in the output: {chr(27) in out.getvalue()}"


def interpret_small(odd):
    root, best = odd
    import tlcourse.interpret as interp

    forward, ran = interp._forward, []
    interp._forward = lambda *a, **k: ran.append(1) or forward(*a, **k)
    try:
        line = cli("interpret", "--checkpoint", str(best), "--data-dir", str(root))
    finally:
        interp._forward = forward
    return line, f"forward passes run: {len(ran)}"


def absurd_lr_range():
    return cli("lr-find", "--data-dir", str(data("absurd")), "--weights", "none", "--start-lr", "1e-300",
               "--end-lr", "1e300"), ""


def fine_tune_wrong_blame():
    root = data("blame")
    run = train(data_dir=str(root), output_dir=str(TMP / "blame"), recipe="fine_tune", epochs=2, freeze_epochs=1,
                **FAST)
    return cli("train", "--resume", str(run.latest_path), "--unfreeze", "all", "--epochs", "3"), ""


def too_many_processes():
    return cli("train", "--data-dir", str(data("procs")), "--nproc-per-node", "500"), ""


def half_written_notebook():
    folder = TMP / "nbs"
    folder.mkdir()
    (folder / "01_broken.ipynb").write_text('{"cells": [{"cell_type": "code", "sou')
    try:
        run_course(folder=folder, output=TMP / "nbs-out", check_weights=False)
    except TLCourseError as exc:
        return f"TLCourseError: {exc}", ""
    return "accepted (!)", ""


def piped_progress():
    proc = subprocess.Popen([sys.executable, "-m", "tlcourse", "train", "--data-dir", str(data("piped")), "--weights",
                             "none", "--image-size", "32", "--epochs", "1", "--batch-size", "2", "--no-probe",
                             "--output-dir", str(TMP / "piped-ck"), "--cache-dir", str(TMP / "piped-cache")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=TMP)
    first = proc.stdout.readline().strip()
    running = proc.poll() is None
    rest, _ = proc.communicate(timeout=300)
    count = 1 + sum(line.startswith("caching pass:") for line in rest.splitlines())
    return first, f"{count} such lines; the first arrived while the run went on: {running}"


def rows() -> list[tuple[str, object]]:
    odd = odd_class_names()
    return [
        ("**Data loss and security**", None),
        ("`cache clear --cache-dir ~` where ~ holds `.tmp-notes`, `.config.tmp-1`, a 40-character `.json`, "
         "`thesis.txt`", clear_with_user_files),
        ("a symlink to another user's file planted under the next temporary name of `args.json` in a shared "
         "folder", planted_symlink),
        ("`course -p arch` with a tuple literal that papermill would paste unescaped", crafted_parameter),
        ("**Silent wrong results**", None),
        ("a JPEG's EXIF orientation changed 1 → 6 in place (size, inode and mtime kept)", exif_rotation),
        ("a cache entry's labels flipped by hand in its JSON header", flipped_labels),
        ("fine_tune resumed inside phase 2 with another `--lr`", resume_phase_two_lr),
        ("**Hangs and crashes**", None),
        ("`train --nnodes 2 --dist-timeout 5` with no second machine", second_machine_missing),
        ("a FIFO where the cache expects an entry", fifo_entry),
        ("a 100,000-deep JSON header (`cache list`; training)", deep_header),
        ("a training image named `caf\\xe9.png` (not UTF-8), cached run", non_utf8_training),
        ("`lr-find --recipe fine_tune`", lr_find_fine_tune),
        ("**Questionable before**", None),
        ("a foreign, damaged `.json` with a 40-character name in the cache folder", foreign_json),
        ("`cache clear` while a training writes its cache", clear_while_training),
        ("a cache entry with 5 rows where the key says 7 images", wrong_shape),
        ("class names `$5 \\q$ bills` (mathtext) in interpret's figures", lambda: interpret_dollars(odd)),
        ("a class name with terminal escape sequences (`predict`)", lambda: escapes(odd)),
        ("`interpret` with the default `--k 9` on an 8-image split", lambda: interpret_small(odd)),
        ("`lr-find --start-lr 1e-300 --end-lr 1e300`", absurd_lr_range),
        ("fine_tune resumed with another `--unfreeze`", fine_tune_wrong_blame),
        ("`train --nproc-per-node 500` on 2 cores", too_many_processes),
        ("a half-written notebook in the course folder", half_written_notebook),
        ("`train ... | cat` (stdout piped) during the one-time caching pass", piped_progress),
    ]


def main_table(first: int = 1) -> int:
    return print_cases(rows, short, first, TMP)


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main_table())

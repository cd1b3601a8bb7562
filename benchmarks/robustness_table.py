"""Print the bad-input table of docs/robustness.md: every case is built and run through tlcourse.

    PYTHONPATH=. python benchmarks/robustness_table.py > /tmp/table.md

Each row builds a small 2-class folder in a temporary directory, breaks it one way and records
what ``check_dataset`` reports and what ``make_loaders`` does (the exact one-line error, or the
skip warning). Temporary paths are printed as ``DATA``.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from tlcourse import TLCourseError
from tlcourse.checks import check_dataset
from tlcourse.cli import main as tlcourse_main
from tlcourse.data import make_loaders
from tlcourse.freeze import apply_freeze
from tlcourse.heads import make_head
from tlcourse.models import build_model
from tlcourse.optim import make_optimizer


def noise(size=(40, 32), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def make_folder(root: Path, classes=("ants", "bees"), per_class=4) -> Path:
    for split in ("train", "val"):
        for ci, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):  # val images differ from train ones (copies are reported)
                noise(seed=ci * 100 + i + 50 * (split == "val")).save(root / split / cls / f"img_{i}.png")
    return root


def shorten(text: str, tmp: Path) -> str:
    """One table cell: temporary paths as ``…/``, time stamps, cache keys and process ids as words."""
    text = text.replace(str(tmp) + "/", "…/").replace(str(tmp), "…")
    text = re.sub(r"_\d{8}-\d{6}(-\d+)?", "_TIME", text)
    text = re.sub(r"[0-9a-f]{40}", "KEY", text)
    text = re.sub(r"(tmp-|fetch-)\d+", r"\1PID", text)
    text = re.sub(r"\(process \d+\)", "(process PID)", text)
    return " ".join(text.split()).replace("|", "\\|")


def cli(*argv: str) -> str:
    """``python -m tlcourse ...`` in this process: its stderr (or stdout when stderr is empty)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = tlcourse_main(list(argv))
        except SystemExit as exc:
            code = exc.code
    return f"exit {code}: {err.getvalue().strip() or out.getvalue().strip()}"


def print_cases(rows, short, first: int, tmp: Path) -> int:
    """Print the markdown table of ``rows()``: ``(input, case)`` pairs, a ``None`` case being a heading.

    Each case returns ``(what it gets, checked after)``; what it prints is not part of the table,
    and a case that raises shows the exception (marked "(!)") instead of stopping the table.
    """
    print("| # | input | what it gets | checked after |")
    print("|---|---|---|---|")
    n = first - 1
    with contextlib.redirect_stdout(io.StringIO()):
        cases = rows()
    for name, case in cases:
        if case is None:
            print(f"|  | {name} |  |  |")
            continue
        n += 1
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                got, after = case()
            except Exception as exc:   # the table must show a failure, not stop
                got, after = f"{type(exc).__name__}: {exc} (!)", ""
        print(f"| {n} | {name.replace('|', chr(92) + '|')} | {short(got)} | {short(after)} |", flush=True)
    print(f"\n{n - first + 1} inputs tried (cases {first}-{n}).", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def truncated(p):
    data = jpeg(noise((64, 48)))
    p.write_bytes(data[: len(data) // 2])
def gif(p): noise().convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(p, transparency=0)
def rgba(p): noise().convert("RGBA").save(p)
def cmyk(p): p.write_bytes(jpeg(noise().convert("CMYK")))
def deep(p): Image.fromarray((np.arange(40 * 32, dtype=np.uint16).reshape(32, 40) * 50).astype(np.uint16)).save(p)


def exif_rotated(p):
    exif = Image.Exif()
    exif[0x0112] = 6
    p.write_bytes(jpeg(noise(), exif=exif.tobytes()))


def replace_dir_with_file(d: Path):
    shutil.rmtree(d)
    d.write_text("x")


# (input, how to break the folder, extra make_loaders kwargs, MAX_IMAGE_PIXELS override)
FOLDER_CASES = [
    ("data dir does not exist", lambda r: shutil.rmtree(r), {}, None),
    ("data dir is a file (a .zip)", lambda r: (shutil.rmtree(r), r.write_bytes(b"PK")), {}, None),
    ("missing train/", lambda r: shutil.rmtree(r / "train"), {}, None),
    ("missing val/", lambda r: shutil.rmtree(r / "val"), {}, None),
    ("train/ is a file", lambda r: replace_dir_with_file(r / "train"), {}, None),
    ("val/bees is a file", lambda r: replace_dir_with_file(r / "val" / "bees"), {}, None),
    ("image directly in train/", lambda r: noise().save(r / "train" / "stray.png"), {}, None),
    ("empty class folder train/bees", lambda r: [f.unlink() for f in (r / "train" / "bees").iterdir()], {}, None),
    ("single class", lambda r: [shutil.rmtree(r / s / "bees") for s in ("train", "val")], {}, None),
    ("class sets differ (val/bees → val/wasps)", lambda r: (r / "val" / "bees").rename(r / "val" / "wasps"), {}, None),
    ("no class folders in val/", lambda r: [shutil.rmtree(r / "val" / c) for c in ("ants", "bees")], {}, None),
    (".DS_Store in a class folder", lambda r: (r / "train/ants/.DS_Store").write_bytes(b"Bud1"), {}, None),
    ("Thumbs.db in a class folder", lambda r: (r / "train/ants/Thumbs.db").write_bytes(b"\xd0\xcf"), {}, None),
    ("macOS ._img_0.png resource fork", lambda r: (r / "train/ants/._img_0.png").write_bytes(b"\0\5\26\7"), {}, None),
    (".ipynb_checkpoints/ in train/", lambda r: (r / "train/.ipynb_checkpoints").mkdir(), {}, None),
    ("notes.txt among images", lambda r: (r / "train/ants/notes.txt").write_text("x"), {}, None),
    ("truncated JPEG", lambda r: truncated(r / "train/ants/cut.jpg"), {}, None),
    ("truncated JPEG, bad_images='skip'", lambda r: truncated(r / "train/ants/cut.jpg"), {"bad_images": "skip"}, None),
    ("zero-byte .jpg", lambda r: (r / "train/ants/empty.jpg").write_bytes(b""), {}, None),
    ("HTML text saved as .jpg", lambda r: (r / "val/bees/page.jpg").write_text("<html>403</html>"), {}, None),
    ("random bytes as .jpg", lambda r: (r / "val/bees/junk.jpg").write_bytes(bytes(range(256)) * 4), {}, None),
    ("palette GIF with transparency", lambda r: gif(r / "train/ants/p.gif"), {}, None),
    ("greyscale PNG", lambda r: noise().convert("L").save(r / "train/ants/g.png"), {}, None),
    ("RGBA PNG", lambda r: rgba(r / "train/ants/a.png"), {}, None),
    ("CMYK JPEG", lambda r: cmyk(r / "train/ants/c.jpg"), {}, None),
    ("16-bit PNG (I;16)", lambda r: deep(r / "train/ants/d.png"), {}, None),
    ("EXIF orientation 6 JPEG", lambda r: exif_rotated(r / "train/ants/e.jpg"), {}, None),
    ("image over MAX_IMAGE_PIXELS (bomb warning)", lambda r: noise((64, 48)).save(r / "train/ants/big.png"), {}, 2000),
    ("image over 2×MAX_IMAGE_PIXELS (bomb error)", lambda r: noise((64, 64)).save(r / "train/ants/bomb.png"), {}, 1500),
]

PARAM_CASES = [
    ("batch_size=0", lambda d: make_loaders(d, batch_size=0)),
    ("image_size=16", lambda d: make_loaders(d, image_size=16)),
    ("num_workers=-1", lambda d: make_loaders(d, num_workers=-1)),
    ("subset=0", lambda d: make_loaders(d, subset=0)),
    ("bad_images='ignore'", lambda d: make_loaders(d, bad_images="ignore")),
    ("bad_images='skip', verify_images=False", lambda d: make_loaders(d, bad_images="skip", verify_images=False)),
    ("arch='resnet99'", lambda d: build_model("resnet99", 2, weights=None)),
    ("freeze preset 'middle'", lambda d: apply_freeze(build_model("resnet18", 2, weights=None), "middle")),
    ("head='conv'", lambda d: make_head(512, 2, head="conv")),
    ("lr=0", lambda d: make_optimizer(build_model("resnet18", 2, weights=None), lr=0)),
]


def cell(text: str, root: Path) -> str:
    return text.replace(str(root), "DATA").replace("|", "\\|")


def run_folder_case(tmp: Path, breaker, kwargs, max_pixels) -> tuple[str, str]:
    root = make_folder(tmp / "data")
    breaker(root)
    old = Image.MAX_IMAGE_PIXELS
    if max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        check = check_dataset(root)
        found = "; ".join(f"{p.severity} `{p.path}`: {p.message}" for p in check.problems) or "no problem"
        converted = [m for m in check.modes if m != "RGB"] + ["EXIF-rotated"] * bool(check.exif_rotated)
        if converted:
            found += f" (counted as converted on load: {', '.join(converted)})"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                loaders = make_loaders(root, image_size=32, batch_size=4, **kwargs)
                next(iter(loaders.train))
                notes = [str(w.message) for w in caught if "unreadable" in str(w.message)]
                loader = (f"loads ({len(loaders.train.dataset)} train images)"
                          + (f"; warning: {notes[0]}" if notes else ""))
            except TLCourseError as exc:
                loader = f"TLCourseError: {exc}"
    finally:
        Image.MAX_IMAGE_PIXELS = old
    return cell(found, root), cell(loader, root)


def main() -> int:
    print("| # | input | `check_dataset` / `data --check` reports | `make_loaders` |")
    print("|---|---|---|---|")
    n = 0
    for name, breaker, kwargs, max_pixels in FOLDER_CASES:
        with tempfile.TemporaryDirectory() as tmp:
            found, loader = run_folder_case(Path(tmp), breaker, kwargs, max_pixels)
        n += 1
        print(f"| {n} | {name} | {found} | {loader} |")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_folder(Path(tmp) / "data")
        for name, call in PARAM_CASES:
            try:
                call(root)
                outcome = "accepted (!)"
            except TLCourseError as exc:
                outcome = f"TLCourseError: {exc}"
            n += 1
            print(f"| {n} | {name} | (parameter) | {cell(outcome, root)} |")
    print(f"\n{n} inputs tried.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

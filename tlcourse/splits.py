"""Carve a held-out test/ split out of a dataset's val/, reproducibly, without touching the original.

The course dataset (ants/bees) has only train/ and val/. ``make_test_split`` builds a new folder
``<name>_test<share>_seed<seed>/`` beside it whose train/ is the original train/ and whose val/
and test/ divide the original val/ images of every class: an image goes to test/ when the hash
of ``seed`` and its class/file name ranks among the first ``share`` of its class. A hash, not a
random generator, so the same images land in test/ on every machine and with every library
version. Files are hard links (copies where links are not possible): no extra disk in the usual
case, and the original folder is never modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from . import TLCourseError
from .checks import SPLITS, list_class
from .files import remove_stale_temp

MARKER = ".tlcourse-split.json"


def _rank(seed: int, cls: str, name: str) -> str:
    return hashlib.sha256(f"{seed}\0{cls}\0{name}".encode()).hexdigest()


def plan_split(val_dir: Path, share: float, seed: int) -> dict[str, dict[str, list[Path]]]:
    """``{"val": {class: [files]}, "test": {class: [files]}}``: ``round(share * n)`` of each class to test."""
    plan: dict[str, dict[str, list[Path]]] = {"val": {}, "test": {}}
    for class_dir in sorted(p for p in val_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(list_class(class_dir).images, key=lambda p: _rank(seed, class_dir.name, p.name))
        k = round(share * len(files))
        if len(files) >= 2:
            k = min(max(k, 1), len(files) - 1)  # both halves keep every class
        plan["test"][class_dir.name] = sorted(files[:k])
        plan["val"][class_dir.name] = sorted(files[k:])
    return plan


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def make_test_split(source: str | Path, dest: str | Path | None = None, *, share: float = 0.5,
                    seed: int = 0) -> Path:
    """A copy of ``source`` (train/, val/) with ``share`` of each val/ class moved to test/; returns its path.

    A second call with the same arguments returns the existing folder at once.
    """
    source = Path(source).expanduser()
    if not 0 < share < 1:
        raise TLCourseError(f"share={share} must be between 0 and 1 (the part of val/ that becomes test/)")
    for split in SPLITS:
        if not (source / split).is_dir():
            raise TLCourseError(f"{source} has no {split}/ folder; pass a dataset with train/ and val/")
    if (source / "test").exists():
        raise TLCourseError(f"{source} already has a test/ split; use it as it is")
    dest = Path(dest).expanduser() if dest else source.parent / f"{source.name}_test{share:g}_seed{seed}"
    wanted = {"source": str(source.resolve()), "share": share, "seed": seed}
    marker = dest / MARKER
    if marker.is_file():
        if json.loads(marker.read_text(encoding="utf-8")) == wanted:
            return dest
        raise TLCourseError(f"{dest} holds another split ({marker.read_text(encoding='utf-8').strip()}); "
                            "delete it or choose another destination")
    if dest.exists():
        raise TLCourseError(f"{dest} exists and is not a split made by tlcourse; delete it or choose another dest")
    remove_stale_temp(dest.parent)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for class_dir in sorted(p for p in (source / "train").iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in list_class(class_dir).images:
                _place(path, tmp / "train" / class_dir.name / path.relative_to(class_dir))
        for split, classes in plan_split(source / "val", share, seed).items():
            for cls, files in classes.items():
                for path in files:
                    _place(path, tmp / split / cls / path.relative_to(source / "val" / cls))
        (tmp / MARKER).write_text(json.dumps(wanted), encoding="utf-8")
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest

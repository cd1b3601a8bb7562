"""Check a dataset folder before training: every problem listed at once, each with its fix.

Training on a learner's own folder fails late and opaquely when one file is bad: a truncated
JPEG surfaces as a traceback from inside a DataLoader worker, halfway through epoch 1. This
module walks ``data_dir/{train,val}/<class>/*`` the way ``ImageFolderRGB`` will, and (with
``verify_images=True``) opens every image with :func:`tlcourse.images.open_rgb`, exactly as
training will, so the full list of problems is known before the first batch.

Severities:

* ``error``: training would fail or be wrong (missing split, empty or single class, class sets
  that differ between splits, a class folder that links back into the dataset, an unreadable
  image, an image over PIL's hard pixel limit or too elongated to resize).
* ``warning``: training works but something is probably not what you meant (an image outside
  any class folder, a non-image file among the images, a sub-folder merged into its class, a
  link to a folder inside a class (not followed), a file name that is not UTF-8, val images
  that are copies of train images, an image over PIL's decompression-bomb *warning* limit,
  which loads but slowly and with a lot of memory).
* ``info``: ignored on purpose (``.DS_Store``, ``Thumbs.db``, dotfiles, hidden folders).

Which files belong to a class is decided by :func:`tlcourse.class_files.list_class`, which
``ImageFolderRGB`` also uses, so the checker and training never disagree. One image is judged by
``tlcourse.image_check``; the report is ``tlcourse.dataset_report.DatasetCheck``. Their public
names are re-exported here, the import path notebooks and tests use.

Palette/GIF, greyscale, RGBA, CMYK, 16-bit and EXIF-rotated images are not problems: they are
converted by ``open_rgb``; the report only counts them.
"""

from __future__ import annotations

import hashlib
import os
import time
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from . import TLCourseError
from .class_files import SYSTEM_FILES, ClassFiles, _is_ignored_file, list_class  # noqa: F401  (re-exported)
from .dataset_report import SEVERITIES, DatasetCheck, Problem, printable  # noqa: F401  (re-exported)
from .image_check import describe_load_error, forget_verified, inspect_image  # noqa: F401  (re-exported)
from .images import is_image_file

SPLITS = ("train", "val")
#: An optional split: held-out images scored once at the end (``tlcourse.evaluation``), checked when present.
OPTIONAL_SPLITS = ("test",)


# --------------------------------------------------------------------------- errors from workers

class ImageLoadError(TLCourseError):
    """An image that fails to load during training, reported as one line naming the file.

    DataLoader worker processes cannot raise into the main process directly: torch re-creates
    the exception there as ``ImageLoadError("Caught ImageLoadError in DataLoader worker ...
    Original Traceback ...")``. This constructor recognises that text and keeps only the original
    one-line message, so the user sees the same error with ``num_workers=0`` or ``> 0`` and the
    training loop needs no special handling: let ``TLCourseError`` propagate (the CLI prints it
    as one line).
    """

    def __init__(self, message: str):
        if "\n" in message and message.startswith("Caught "):
            marker = f"{type(self).__module__}.{type(self).__qualname__}: "
            lines = [ln for ln in message.splitlines() if ln.startswith(marker)]
            if lines:
                message = lines[-1][len(marker):]
        super().__init__(message)


# --------------------------------------------------------------------------- the folder

def _rel(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
    return rel or "."


def list_class_images(class_dir: Path, root: Path, check: DatasetCheck, class_names=()) -> list[Path]:
    """Image files under ``class_dir`` (see :func:`list_class`); notes the others in ``check``."""
    found = list_class(class_dir, class_names)
    for severity, path, message in found.notes:
        check.add(severity, _rel(path, root), message)
    return found.images


def _class_links(split_dir: Path, class_dirs: list[Path], root: Path, check: DatasetCheck) -> list[Path]:
    """Class folders that are links: refuse a loop (a link to a folder holding the dataset) or two
    classes sharing images; return the class folders that are safe to walk."""
    split_real = split_dir.resolve()
    reals = {}
    for d in class_dirs:
        real = d.resolve()
        if real == split_real or real in split_real.parents:
            check.add("error", _rel(d, root), f"class folder is a link to {os.readlink(d)}, which holds the dataset "
                                              "itself (a loop); link it to a folder of images")
        else:
            reals[d] = real
    safe = []
    for d, real in reals.items():
        other = next((o for o, r in reals.items() if o != d and (r == real or r in real.parents)), None)
        if other is not None:
            check.add("error", _rel(d, root), f"class folder is the same folder as, or inside, {_rel(other, root)} "
                                              "(through a link): its images would get two labels")
            continue
        safe.append(d)
    return safe


def _find_nested_dataset(root: Path) -> Path | None:
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if all((child / s).is_dir() for s in SPLITS):
            return child
    return None


def check_split(root: Path, split: str, check: DatasetCheck) -> dict[str, list[Path]]:
    split_dir = root / split
    if not split_dir.exists():
        nested = _find_nested_dataset(root)
        hint = (f"; found {nested.name}/train and {nested.name}/val inside, use {nested} as the data folder"
                if nested else f"; expected {split}/<class>/<image> (e.g. {split}/ants/1.jpg)")
        check.add("error", split, f"missing {split}/ folder{hint}")
        return {}
    if not split_dir.is_dir():
        check.add("error", split, f"{split} is a file, expected a folder holding one folder per class")
        return {}
    classes: dict[str, list[Path]] = {}
    class_dirs = []
    for entry in sorted(split_dir.iterdir()):
        rel = _rel(entry, root)
        if entry.is_dir():
            if entry.name.startswith("."):
                check.add("info", rel, "hidden folder, ignored (not a class)")
            else:
                class_dirs.append(entry)
        elif _is_ignored_file(entry.name):
            check.add("info", rel, "hidden/system file, ignored")
        elif is_image_file(entry):
            check.add("warning", rel, f"image is not inside a class folder and is ignored; "
                                      f"move it into {split}/<class>/")
        else:
            check.add("warning", rel, f"file where class folders are expected, ignored; "
                                      f"{split}/ should hold only one folder per class")
    names = [d.name for d in class_dirs]
    safe = _class_links(split_dir, class_dirs, root, check) if any(d.is_symlink() for d in class_dirs) else class_dirs
    for d in class_dirs:
        classes[d.name] = list_class_images(d, root, check, names) if d in safe else []
    if not classes:
        check.add("error", split, f"{split}/ has no class folders; put images in {split}/<class>/")
    for name, images in classes.items():
        if not images and split_dir / name in safe:
            check.add("error", f"{split}/{name}", "empty class folder (no image files); "
                                                  "add images or delete the folder")
    check.counts[split] = {name: len(images) for name, images in classes.items()}
    return classes


def check_dataset(data_dir: str | Path, *, verify_images: bool = True,
                  workers: int | None = None, use_cache: bool = True) -> DatasetCheck:
    """List every problem of ``data_dir/{train,val}/<class>/*`` (see the module docstring).

    ``verify_images=False`` checks only the folder structure (milliseconds); ``True`` also
    decodes every image, in ``workers`` threads (PIL releases the GIL while decoding). Files
    unchanged (same size, mtime and inode) since an earlier check in this process are not
    decoded again unless ``use_cache=False``.
    """
    start = time.perf_counter()
    root = Path(data_dir).expanduser()
    check = DatasetCheck(root)
    if not root.exists():
        check.add("error", ".", "data folder does not exist; check the path "
                                "(`python -m tlcourse data` downloads the course dataset)")
        return check
    if not root.is_dir():
        hint = "; extract the archive first" if root.suffix.lower() in (".zip", ".tar", ".gz", ".tgz") else ""
        check.add("error", ".", f"is a file, expected a folder holding train/ and val/{hint}")
        return check

    per_split = {split: check_split(root, split, check) for split in SPLITS}
    train, val = per_split["train"], per_split["val"]
    for split in OPTIONAL_SPLITS:
        if (root / split).exists():
            per_split[split] = found = check_split(root, split, check)
            if train and found and set(found) != set(train):
                check.add("error", split, f"class folders differ between train/ and {split}/ (only in train: "
                                          f"{', '.join(sorted(set(train) - set(found))) or '-'}; only in {split}: "
                                          f"{', '.join(sorted(set(found) - set(train))) or '-'}); give {split}/ "
                                          "the same class folders as train/")
    if train and val and set(train) != set(val):
        parts = []
        if set(train) - set(val):
            parts.append(f"only in train: {', '.join(sorted(set(train) - set(val)))}")
        if set(val) - set(train):
            parts.append(f"only in val: {', '.join(sorted(set(val) - set(train)))}")
        check.add("error", "val", f"class folders differ between train/ and val/ ({'; '.join(parts)}); "
                                  "labels come from the sorted folder names, so both need the same classes"
                                  + _normalisation_hint(set(train) ^ set(val)))
    elif len(train) == 1:
        check.add("error", "train", f"only one class folder ({next(iter(train))}); "
                                    "a classifier needs at least 2, add a folder per class")

    if verify_images:
        files = [p for classes in per_split.values() for images in classes.values() for p in images]
        workers = workers or min(8, os.cpu_count() or 1)
        with warnings.catch_warnings():
            # Reported as a problem instead; PIL would also print it once per process.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with ThreadPoolExecutor(max_workers=workers) as pool:
                reports = list(pool.map(lambda f: inspect_image(f, use_cache=use_cache), files))
        for path, report in zip(files, reports):
            if report.mode:
                check.modes[report.mode] += 1
            check.exif_rotated += report.rotated
            if report.severity:
                rel = _rel(path, root)
                check.add(report.severity, rel, report.message)
                if report.severity == "error":
                    check.bad_files.append(rel)
        check.images_verified = len(files)
        _note_copies(per_split, root, check)
    check.seconds = time.perf_counter() - start
    return check


def _normalisation_hint(names: set[str]) -> str:
    """Names that look the same but differ in Unicode form (macOS writes NFD: 'e' + accent)."""
    by_form: dict[str, list[str]] = {}
    for name in names:
        by_form.setdefault(unicodedata.normalize("NFC", name), []).append(name)
    twins = sorted(form for form, spellings in by_form.items() if len(spellings) > 1)
    if not twins:
        return ""
    return (f"; {', '.join(repr(t) for t in twins)} is spelled with different Unicode forms in train/ and val/ "
            "(NFC vs NFD, e.g. one copied from macOS): rename the folders so both use the same characters")


def _digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.blake2b(fh.read(), digest_size=16).hexdigest()


def _note_copies(per_split: dict[str, dict[str, list[Path]]], root: Path, check: DatasetCheck) -> None:
    """Warn when val/ images are byte-identical copies of train/ images (only same-size files are read)."""
    train = [p for images in per_split.get("train", {}).values() for p in images]
    val = [p for images in per_split.get("val", {}).values() for p in images]

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return -1

    by_size: dict[int, list[Path]] = {}
    for p in train:
        by_size.setdefault(size(p), []).append(p)
    train_digests: dict[Path, str] = {}
    copies = []
    for p in val:
        same_size = by_size.get(size(p), [])
        if not same_size:
            continue
        try:
            digest = _digest(p)
            for q in same_size:
                if q not in train_digests:
                    train_digests[q] = _digest(q)
            match = next((q for q in same_size if train_digests[q] == digest), None)
        except OSError:
            continue
        if match is not None:
            copies.append((p, match))
    if not copies:
        return
    first, twin = copies[0]
    whole = "every val image" if len(copies) == len(val) else f"{len(copies)} of {len(val)} val images"
    check.add("warning", "val", f"{whole} is a byte-identical copy of a train image (first: {_rel(first, root)} = "
                                f"{_rel(twin, root)}): validation would measure memorisation, not generalisation; "
                                "keep different images in val/")

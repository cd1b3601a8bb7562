"""Check a dataset folder before training: every problem listed at once, each with its fix.

Training on a learner's own folder fails late and opaquely when one file is bad: a truncated
JPEG surfaces as a traceback from inside a DataLoader worker, halfway through epoch 1. This
module walks ``data_dir/{train,val}/<class>/*`` the way ``ImageFolderRGB`` will, and (with
``verify_images=True``) opens every image with :func:`tlcourse.images.open_rgb`, exactly as
training will, so the full list of problems is known before the first batch.

Severities:

* ``error``: training would fail or be wrong (missing split, empty or single class, class sets
  that differ between splits, an unreadable image, an image over PIL's hard pixel limit).
* ``warning``: training works but something is probably not what you meant (an image outside
  any class folder, a non-image file among the images, an image over PIL's decompression-bomb
  *warning* limit, which loads but slowly and with a lot of memory).
* ``info``: ignored on purpose (``.DS_Store``, ``Thumbs.db``, dotfiles, hidden folders).

Palette/GIF, greyscale, RGBA, CMYK, 16-bit and EXIF-rotated images are not problems: they are
converted by ``open_rgb``; the report only counts them.
"""

from __future__ import annotations

import os
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from . import TLCourseError
from .images import is_image_file, open_rgb

SPLITS = ("train", "val")
SEVERITIES = ("error", "warning", "info")
#: Files operating systems drop into folders; ignored without a warning.
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
#: ``EXIF`` tag 0x0112: values other than 1 mean "display this rotated or mirrored".
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class Problem:
    """One finding: ``path`` is relative to the data folder (``.`` is the folder itself)."""

    severity: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity:<7} {self.path}: {self.message}"


@dataclass
class DatasetCheck:
    """The result of :func:`check_dataset`: problems, image counts and what was converted."""

    data_dir: Path
    problems: list[Problem] = field(default_factory=list)
    #: Image files per split and class folder, as ``ImageFolderRGB`` will list them.
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Relative paths of image files that cannot be loaded (what ``bad_images="skip"`` drops).
    bad_files: list[str] = field(default_factory=list)
    #: Source PIL modes of the images that were opened (``RGB``, ``L``, ``P``, ``CMYK``...).
    modes: Counter = field(default_factory=Counter)
    exif_rotated: int = 0
    images_verified: int = 0
    seconds: float = 0.0

    def add(self, severity: str, path: str, message: str) -> None:
        self.problems.append(Problem(severity, path, message))

    def _of(self, severity: str) -> list[Problem]:
        return [p for p in self.problems if p.severity == severity]

    @property
    def errors(self) -> list[Problem]:
        return self._of("error")

    @property
    def warnings(self) -> list[Problem]:
        return self._of("warning")

    @property
    def infos(self) -> list[Problem]:
        return self._of("info")

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def class_names(self) -> list[str]:
        return sorted({c for per in self.counts.values() for c in per})

    def summary(self) -> str:
        splits = ", ".join(f"{s} {sum(per.values())}" for s, per in self.counts.items())
        total = sum(sum(per.values()) for per in self.counts.values())
        line = (f"{self.data_dir}: {total} images ({splits or 'no splits'}), "
                f"{len(self.class_names)} classes ({', '.join(self.class_names) or '-'}); "
                f"{len(self.errors)} errors, {len(self.warnings)} warnings, {len(self.infos)} info")
        if self.images_verified:
            line += f"; opened {self.images_verified} images in {self.seconds:.2f} s"
        return line

    def __str__(self) -> str:
        ordered = sorted(self.problems, key=lambda p: SEVERITIES.index(p.severity))
        lines = [str(p) if p.path != "." else f"{p.severity:<7} {self.data_dir}: {p.message}" for p in ordered]
        converted = {m: n for m, n in self.modes.items() if m != "RGB"}
        if converted or self.exif_rotated:
            parts = [f"{m} {n}" for m, n in sorted(converted.items())]
            if self.exif_rotated:
                parts.append(f"EXIF-rotated {self.exif_rotated}")
            lines.append(f"converted to RGB on load (fine): {', '.join(parts)}")
        lines.append(self.summary())
        return "\n".join(lines)

    def raise_if_errors(self, hint: str = "", *, include_bad_images: bool = True) -> None:
        """Raise a one-line ``TLCourseError`` naming the first error and how many more there are.

        ``include_bad_images=False`` raises only for structural errors (used when bad images are
        to be skipped).
        """
        errors = [p for p in self.errors if include_bad_images or p.path not in self.bad_files]
        if not errors:
            return
        first = errors[0]
        more = f" (and {len(errors) - 1} more; `python -m tlcourse data --check {self.data_dir}` lists them)" \
            if len(errors) > 1 else ""
        raise TLCourseError(f"{self.data_dir / first.path if first.path != '.' else self.data_dir}: "
                            f"{first.message}{more}{hint}")


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


# --------------------------------------------------------------------------- one image

def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def describe_load_error(path: str | Path, exc: BaseException) -> str:
    """What is wrong with an image that ``open_rgb`` could not load, and what to do, in one line."""
    path = Path(path)
    detail = " ".join(str(exc).split())
    try:
        size = path.stat().st_size
    except OSError:
        return f"file disappeared or cannot be read ({detail}); check the folder hasn't changed"
    if size == 0:
        return "empty file (0 bytes); delete it or copy the image again"
    if isinstance(exc, Image.DecompressionBombError):
        return (f"image too large to open ({detail}); downscale it, or raise "
                "PIL.Image.MAX_IMAGE_PIXELS if you trust the file")
    if isinstance(exc, UnidentifiedImageError):
        if _looks_like_text(path):
            return "a text file (HTML page? error message?) with an image name, not an image; delete it"
        return f"not an image PIL can read ({size} bytes, unknown format); delete it or convert it to JPEG/PNG"
    if "truncated" in detail.lower() or isinstance(exc, (SyntaxError, EOFError)):
        return f"truncated or corrupt image ({detail}); the copy or download was cut short, copy it again or delete it"
    return f"cannot be loaded as an image ({type(exc).__name__}: {detail}); delete or replace it"


@dataclass
class _ImageReport:
    mode: str | None = None
    rotated: bool = False
    severity: str | None = None
    message: str | None = None


#: Reports of files already opened in this process, keyed by what would change if the file (or
#: PIL's pixel limit) changed: a notebook that builds its loaders several times pays once.
_VERIFIED: dict[tuple, _ImageReport] = {}
_VERIFIED_MAX = 200_000


def inspect_image(path: str | Path, *, use_cache: bool = True) -> _ImageReport:
    """Open ``path`` as training will; report its source mode and any problem."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, Image.MAX_IMAGE_PIXELS)
    except OSError:
        key = None
    if use_cache and key in _VERIFIED:
        return _VERIFIED[key]
    report = _inspect_image(path)
    if key is not None and len(_VERIFIED) < _VERIFIED_MAX:
        _VERIFIED[key] = report
    return report


def _inspect_image(path: Path) -> _ImageReport:
    report = _ImageReport()
    try:
        if path.stat().st_size == 0:
            raise UnidentifiedImageError("empty file")
        with Image.open(path) as img:  # header only: mode, size, EXIF
            report.mode = img.mode
            report.rotated = img.getexif().get(_ORIENTATION, 1) not in (1, None)
            width, height = img.size
        open_rgb(path)  # full decode and conversion, exactly as the DataLoader will do
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        report.severity, report.message = "error", describe_load_error(path, exc)
        return report
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        report.severity = "warning"
        report.message = (f"very large image ({width}x{height} = {width * height:,} px, over PIL's "
                          f"decompression-bomb warning limit of {limit:,} px); it loads, but slowly and with "
                          "much memory on every epoch; downscale it")
    return report


# --------------------------------------------------------------------------- the folder

def _rel(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
    return rel or "."


def _is_ignored_file(name: str) -> bool:
    return name.startswith(".") or name.lower() in SYSTEM_FILES


def list_class_images(class_dir: Path, root: Path, check: DatasetCheck) -> list[Path]:
    """Image files under ``class_dir`` (recursively, as ImageFolder walks); notes the others."""
    images: list[Path] = []
    for folder, _dirs, files in sorted(os.walk(class_dir, followlinks=True)):
        for name in sorted(files):
            path = Path(folder) / name
            if is_image_file(path):
                images.append(path)
            elif _is_ignored_file(name):
                check.add("info", _rel(path, root), "hidden/system file, ignored")
            else:
                check.add("warning", _rel(path, root),
                          f"not an image file (suffix {path.suffix or 'none'!r}), ignored; "
                          "move it out of the dataset or convert it to JPEG/PNG")
    return images


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
    for entry in sorted(split_dir.iterdir()):
        rel = _rel(entry, root)
        if entry.is_dir():
            if entry.name.startswith("."):
                check.add("info", rel, "hidden folder, ignored (not a class)")
            else:
                classes[entry.name] = list_class_images(entry, root, check)
        elif _is_ignored_file(entry.name):
            check.add("info", rel, "hidden/system file, ignored")
        elif is_image_file(entry):
            check.add("warning", rel, f"image is not inside a class folder and is ignored; "
                                      f"move it into {split}/<class>/")
        else:
            check.add("warning", rel, f"file where class folders are expected, ignored; "
                                      f"{split}/ should hold only one folder per class")
    if not classes:
        check.add("error", split, f"{split}/ has no class folders; put images in {split}/<class>/")
    for name, images in classes.items():
        if not images:
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
    if train and val and set(train) != set(val):
        parts = []
        if set(train) - set(val):
            parts.append(f"only in train: {', '.join(sorted(set(train) - set(val)))}")
        if set(val) - set(train):
            parts.append(f"only in val: {', '.join(sorted(set(val) - set(train)))}")
        check.add("error", "val", f"class folders differ between train/ and val/ ({'; '.join(parts)}); "
                                  "labels come from the sorted folder names, so both need the same classes")
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
    check.seconds = time.perf_counter() - start
    return check

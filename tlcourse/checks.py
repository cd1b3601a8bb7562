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

Which files belong to a class is decided by :func:`list_class`, which ``ImageFolderRGB`` also
uses, so the checker and training never disagree.

Palette/GIF, greyscale, RGBA, CMYK, 16-bit and EXIF-rotated images are not problems: they are
converted by ``open_rgb``; the report only counts them.
"""

from __future__ import annotations

import hashlib
import os
import time
import unicodedata
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from . import TLCourseError
from .images import ImageTooLargeError, is_image_file, open_rgb

SPLITS = ("train", "val")
#: An optional split: held-out images scored once at the end (``tlcourse.evaluation``), checked when present.
OPTIONAL_SPLITS = ("test",)
SEVERITIES = ("error", "warning", "info")
#: Files operating systems drop into folders; ignored without a warning.
SYSTEM_FILES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
#: ``EXIF`` tag 0x0112: values other than 1 mean "display this rotated or mirrored".
_ORIENTATION = 0x0112


def printable(text: str) -> str:
    """``text`` safe for any terminal: bytes of a file name that is not UTF-8 shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Problem:
    """One finding: ``path`` is relative to the data folder (``.`` is the folder itself)."""

    severity: str
    path: str
    message: str

    def __str__(self) -> str:
        return printable(f"{self.severity:<7} {self.path}: {self.message}")


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
        lines = [str(p) if p.path != "." else printable(f"{p.severity:<7} {self.data_dir}: {p.message}")
                 for p in ordered]
        converted = {m: n for m, n in self.modes.items() if m != "RGB"}
        if converted or self.exif_rotated:
            parts = [f"{m} {n}" for m, n in sorted(converted.items())]
            if self.exif_rotated:
                parts.append(f"EXIF-rotated {self.exif_rotated}")
            lines.append(f"converted to RGB on load (fine): {', '.join(parts)}")
        lines.append(printable(self.summary()))
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
    if isinstance(exc, ImageTooLargeError):
        return detail
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


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes of the file name, kept as surrogates by Python
        return False
    return True


@dataclass
class ClassFiles:
    """What one class folder holds, by the one policy the checker and the training loader share."""

    images: list[Path] = field(default_factory=list)
    #: ``(severity, path, message)`` for everything left out or worth a look.
    notes: list[tuple[str, Path, str]] = field(default_factory=list)


def list_class(class_dir: Path, class_names=()) -> ClassFiles:
    """The image files of ``class_dir``, recursively and sorted as torchvision's ``ImageFolder`` walks.

    The policy (``ImageFolderRGB`` lists its samples with this same function):

    * images in sub-folders belong to the class (as in ``ImageFolder``); each sub-folder gets a
      warning, a louder one when it is named like another class;
    * hidden files and folders (``.ipynb_checkpoints/``, ``._x.jpg``) are skipped;
    * a link to a folder *inside* a class folder is not followed: a link back up (``loop -> ..``)
      would never end, and one to a sibling class would train its images under the wrong label.
      Links to files are followed, and a class folder may itself be a link (see ``check_split``).
    """
    found = ClassFiles()
    walked: list[tuple[str, list[str]]] = []
    for folder, dirs, files in os.walk(class_dir):  # followlinks=False: links to folders are listed, not entered
        kept = []
        for name in sorted(dirs):
            path = Path(folder) / name
            if name.startswith("."):
                found.notes.append(("info", path, "hidden folder, ignored"))
            elif path.is_symlink():
                found.notes.append(("warning", path, _folder_link_note(path, class_dir)))
            else:
                kept.append(name)
        dirs[:] = kept
        walked.append((folder, files))
    for folder, files in sorted(walked):
        for name in sorted(files):
            path = Path(folder) / name
            if is_image_file(path):
                found.images.append(path)
                if not _is_utf8(name):
                    found.notes.append(("warning", path, "file name is not valid UTF-8 (shown with \\x escapes); "
                                                         "it loads, but rename it: zip, Windows and notebooks may not"))
            elif _is_ignored_file(name):
                found.notes.append(("info", path, "hidden/system file, ignored"))
            else:
                found.notes.append(("warning", path, f"not an image file (suffix {path.suffix or 'none'!r}), "
                                                     "ignored; move it out of the dataset or convert it to JPEG/PNG"))
    found.notes += _subfolder_notes(class_dir, found.images, class_names)
    return found


def _folder_link_note(link: Path, class_dir: Path) -> str:
    target = os.readlink(link)
    real, class_real = link.resolve(), class_dir.resolve()
    loop = real == class_real or real in class_real.parents
    return (f"link to a folder (-> {target}) inside a class folder, not followed"
            + (": it points back up, a loop" if loop else "")
            + "; copy the images in, or make the class folder itself the link")


def _subfolder_notes(class_dir: Path, images: list[Path], class_names) -> list[tuple[str, Path, str]]:
    counts: Counter = Counter(p.relative_to(class_dir).parts[0] for p in images if p.parent != class_dir)
    notes = []
    for sub, n in sorted(counts.items()):
        message = (f"sub-folder of class '{class_dir.name}': its {n} image(s) are trained as '{class_dir.name}' "
                   "(sub-folders are merged into their class)")
        if sub in class_names and sub != class_dir.name:
            message += f", not as the class '{sub}' it is named like; move them to ../{sub}/ if they are {sub}"
        notes.append(("warning", class_dir / sub, message))
    return notes


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

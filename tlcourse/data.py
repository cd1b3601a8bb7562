"""The dataset: download and verify it, build transforms and loaders, and count it.

``fetch`` never leaves a half dataset behind: it downloads to a temporary file, checks the
archive (checksum, zip integrity, expected folders), extracts into a temporary folder and only
then moves the result into place and writes a completion marker.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms

from . import TLCourseError
from .checks import (
    OPTIONAL_SPLITS,
    SPLITS,
    DatasetCheck,
    ImageLoadError,
    check_dataset,
    check_split,
    describe_load_error,
    list_class,
)
from .config import BAD_IMAGE_POLICIES, check_field
from .files import remove_stale_temp
from .images import is_image_file, open_rgb
from .settings import HYMENOPTERA_SHA256, HYMENOPTERA_URL, data_mirror, data_root

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MARKER = ".tlcourse-complete"
DATASET_NAME = "hymenoptera_data"


# --------------------------------------------------------------------------- download

def _is_url(source: str) -> bool:
    return source.split(":", 1)[0].lower() in ("http", "https", "ftp", "file")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, progress: bool) -> None:
    from tqdm.auto import tqdm

    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}",
                      disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    bar.update(len(chunk))
    except OSError as exc:  # URLError, timeouts and HTTP errors are all OSErrors
        raise TLCourseError(
            f"could not download {url} ({exc}); offline? set TLCOURSE_DATA_MIRROR to a local "
            f"copy of {Path(url).name} and run again"
        ) from exc


def _check_archive(archive: Path, source: str, sha256: str | None, name: str) -> None:
    if sha256 is not None:
        actual = _sha256(archive)
        if actual != sha256:
            raise TLCourseError(
                f"{source}: checksum mismatch (sha256 {actual[:12]}…, expected {sha256[:12]}…); "
                "the archive is corrupt or not the expected dataset, delete it and fetch again"
            )
    if not zipfile.is_zipfile(archive):
        raise TLCourseError(f"{source}: not a zip archive; point the mirror at {name}.zip")
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as exc:
        # testzip() only reports CRC errors; damaged deflate data or headers raise instead.
        raise TLCourseError(f"{source}: the archive is corrupt ({exc}); fetch it again") from None
    if bad is not None:
        raise TLCourseError(f"{source}: member {bad} is corrupt; fetch the archive again")
    for split in SPLITS:
        if not any(n.startswith(f"{name}/{split}/") for n in names):
            raise TLCourseError(f"{source}: archive has no {name}/{split}/ folder; is it the right dataset?")


def fetch(
    root: str | Path | None = None,
    mirror: str | None = None,
    *,
    url: str = HYMENOPTERA_URL,
    sha256: str | None = HYMENOPTERA_SHA256,
    name: str = DATASET_NAME,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """Make ``<root>/<name>`` hold the complete dataset and return that path.

    ``mirror`` (or ``TLCOURSE_DATA_MIRROR``) is a local path or URL used instead of ``url``.
    A second call returns at once. Any failure leaves ``root`` as it was: ``force=True`` builds the
    new copy aside and replaces the old one only once the new one is complete.
    """
    root = Path(root) if root is not None else data_root()
    target = root / name
    remove_stale_temp(root)  # ".fetch-<pid>-..." of a fetch that was killed
    if (target / MARKER).exists() and not force:
        return target
    if target.exists() and not (target / MARKER).exists() and not force and any(target.iterdir()):
        # A folder without the marker is an earlier interrupted or hand-made copy: never trust it.
        raise TLCourseError(
            f"{target} exists but was not completed by tlcourse (interrupted extract?); "
            "delete it or call fetch(force=True)"
        )

    source = mirror or data_mirror() or url
    root.mkdir(parents=True, exist_ok=True)
    # The new copy is built aside; whatever is at ``target`` is replaced only once it is complete.
    workdir = Path(tempfile.mkdtemp(prefix=f".fetch-{os.getpid()}-", dir=root))
    try:
        if _is_url(source):
            archive = workdir / f"{name}.zip.part"
            _download(source, archive, progress)
        else:
            archive = Path(source).expanduser()
            if not archive.is_file():
                raise TLCourseError(f"dataset mirror {archive} does not exist; fix TLCOURSE_DATA_MIRROR")
        _check_archive(archive, source, sha256, name)
        extracted = workdir / "extract"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(extracted)
        staged = extracted / name
        (staged / MARKER).write_text(f"source={source}\nsha256={_sha256(archive)}\n")
        if target.exists():  # force=True, or an empty leftover: swap, and put it back if the swap fails
            os.replace(target, workdir / "previous")
            try:
                os.replace(staged, target)
            except BaseException:
                os.replace(workdir / "previous", target)
                raise
        else:
            os.replace(staged, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


# --------------------------------------------------------------------------- transforms

def resize_size(image_size: int) -> int:
    """Short side before the centre crop: 256 for 224, the ImageNet convention."""
    return round(image_size * 256 / 224)


def augmentations(image_size: int = 224) -> list:
    """The random part of training: resized crop of 50-100 %, horizontal flip, mild rotation.

    The same transforms work on PIL images (the plain loop) and uint8 tensors (``tlcourse.fast``).
    """
    return [transforms.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.RandomRotation(10)]


def draft_size(image_size: int = 224, augment: bool = False) -> int:
    """Smallest side a JPEG may be decoded at (``open_rgb(draft=...)``) without losing detail.

    Evaluation resizes the short side to ``resize_size``; a random crop of half the area with
    a 3:4 aspect ratio spans 0.61 of the short side, so augmentation keeps twice the crop side.
    """
    return 2 * image_size if augment else resize_size(image_size)


def train_transforms(image_size: int = 224, augment: bool = True) -> Callable:
    """Augmentation for training (see :func:`augmentations`), then tensor and normalisation."""
    if not augment:
        return eval_transforms(image_size)
    return transforms.Compose([
        *augmentations(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transforms(image_size: int = 224) -> Callable:
    """Deterministic evaluation: resize the short side to 256/224 of the crop, centre-crop."""
    return transforms.Compose([
        transforms.Resize(resize_size(image_size)),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


# --------------------------------------------------------------------------- datasets

def load_image(path: str, draft: int | None = None) -> Image.Image:
    """``open_rgb`` for the DataLoader: a failure becomes a one-line error naming the file.

    Raised inside a worker process it still reaches the user as one line (see ``ImageLoadError``).
    """
    try:
        return open_rgb(path, draft)
    except Exception as exc:
        raise ImageLoadError(f"{path}: {describe_load_error(path, exc)}") from exc


class ImageFolderRGB(datasets.ImageFolder):
    """``ImageFolder`` that opens every file as RGB, counts GIFs as images and skips hidden files.

    Hidden files and folders are left out (torchvision would take ``.ipynb_checkpoints/`` for a
    class and macOS's ``._photo.jpg`` resource forks for images). The files of each class are
    listed by ``tlcourse.checks.list_class``, the function ``check_dataset`` uses, so the
    checker and training agree on every image, sub-folder and symbolic link.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, draft: int | None = None):
        self.draft = draft  # JPEG draft-mode size (see open_rgb); part of the feature cache's key
        super().__init__(str(root), transform=transform, loader=functools.partial(load_image, draft=draft),
                         is_valid_file=is_image_file)

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        samples = []
        for name, index in sorted(class_to_idx.items()):
            images = list_class(Path(directory) / name, tuple(class_to_idx)).images
            if not images and not allow_empty:
                raise TLCourseError(f"{Path(directory) / name}: empty class folder (no image files); "
                                    "add images or delete the folder")
            samples += [(str(p), index) for p in images]
        return samples

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise TLCourseError(f"{directory} has no class folders; put images in {directory}/<class>/")
        return classes, {name: i for i, name in enumerate(classes)}

    def drop(self, paths: set[Path]) -> list[Path]:
        """Remove ``paths`` from the samples (``bad_images="skip"``); returns those removed."""
        kept, removed = [], []
        for path, target in self.samples:
            if Path(path) in paths:
                removed.append(Path(path))
            else:
                kept.append((path, target))
        self.samples = self.imgs = kept
        self.targets = [t for _, t in kept]
        return removed


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``None`` means the course dataset under ``data/``; a path must hold ``train/`` and ``val/``."""
    if data_dir is None:
        return data_root() / DATASET_NAME
    return Path(data_dir).expanduser()


def _subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded subset of at most ``limit`` images, classes interleaved (for smoke runs).

    Interleaving matters: an unshuffled validation loader cut short by ``max_batches`` must
    still see every class, not just the first folder's images.
    """
    if limit is None or limit >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for index, target in enumerate(dataset.targets):
        by_class.setdefault(target, []).append(index)
    shuffled = [[indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
                for _, indices in sorted(by_class.items())]
    picked: list[int] = []
    for rank in range(max(len(c) for c in shuffled)):
        picked.extend(c[rank] for c in shuffled if rank < len(c))
    return Subset(dataset, picked[:limit])


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    class_names: list[str]
    data_dir: Path
    image_size: int
    #: Image files left out with ``bad_images="skip"`` (empty otherwise).
    skipped: list[Path] = field(default_factory=list)
    #: The dataset check run before the loaders were built.
    check: DatasetCheck | None = None


def check_loader_params(image_size: int, batch_size: int, num_workers: int, subset: int | None,
                        bad_images: str, verify_images: bool) -> None:
    """Clear errors naming the parameter, before any file is touched (the checks of ``TrainConfig``)."""
    for name, value in (("batch_size", batch_size), ("image_size", image_size), ("num_workers", num_workers),
                        ("subset", subset)):
        check_field(name, value)
    if bad_images not in BAD_IMAGE_POLICIES:
        raise TLCourseError(f"bad_images={bad_images!r} is not a policy; choose 'error' or 'skip'")
    if bad_images == "skip" and not verify_images:
        raise TLCourseError("bad_images='skip' needs verify_images=True: bad files are found by the check "
                            "before training")


def make_loaders(
    data_dir: str | Path | None = None,
    *,
    image_size: int = 224,
    batch_size: int = 32,
    num_workers: int = 0,
    seed: int = 0,
    augment: bool = True,
    subset: int | None = None,
    bad_images: str = "error",
    verify_images: bool = True,
) -> Loaders:
    """Train and validation loaders over ``data_dir/{train,val}/<class>/*``.

    ``subset`` keeps at most that many images per split (class-balanced) for quick runs.
    Training batches are shuffled by a generator seeded with ``seed``.

    The folder is checked first (``tlcourse.checks.check_dataset``): a structural problem raises
    a one-line ``TLCourseError``. With ``verify_images=True`` every image is also decoded once
    (about 1 s for the 398 ants/bees images on 2 CPU cores); an unreadable one raises
    (``bad_images="error"``) or is left out with one warning (``bad_images="skip"``, listed in
    ``Loaders.skipped``). A file that breaks later still fails as one line naming it.
    """
    check_loader_params(image_size, batch_size, num_workers, subset, bad_images, verify_images)
    root = resolve_data_dir(data_dir)
    check = check_dataset(root, verify_images=verify_images)
    if bad_images == "skip":
        check.raise_if_errors(include_bad_images=False)
    else:
        check.raise_if_errors("; or pass bad_images='skip' (train --bad-images skip) to leave unreadable images out"
                              if check.bad_files else "")
    train_set = ImageFolderRGB(root / "train", transform=train_transforms(image_size, augment),
                               draft=draft_size(image_size, augment))
    val_set = ImageFolderRGB(root / "val", transform=eval_transforms(image_size), draft=draft_size(image_size))
    skipped: list[Path] = []
    if check.bad_files:
        bad = {root / rel for rel in check.bad_files}
        skipped = train_set.drop(bad) + val_set.drop(bad)
        for name, split in (("train", train_set), ("val", val_set)):
            empty = sorted(set(split.classes) - {split.classes[t] for t in split.targets})
            if empty:
                raise TLCourseError(f"{root / name / empty[0]}: every image of this class is unreadable; "
                                    "fix the files (`python -m tlcourse data --check` lists them)")
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) in {root} (first: {check.bad_files[0]}); "
                      "the list is in Loaders.skipped", UserWarning, stacklevel=2)
    if subset is not None and subset < len(train_set.classes):
        raise TLCourseError(f"subset={subset} is fewer images than classes ({len(train_set.classes)}): some classes "
                            f"would have no image; use at least {len(train_set.classes)} (quick runs: 32 or more)")
    generator = torch.Generator().manual_seed(seed)
    pin = torch.cuda.is_available()
    common = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=pin,
                  persistent_workers=num_workers > 0)
    train = DataLoader(_subset(train_set, subset, seed), shuffle=True, generator=generator, **common)
    val = DataLoader(_subset(val_set, subset, seed), shuffle=False, **common)
    return Loaders(train, val, list(train_set.classes), root, image_size, skipped, check)


# --------------------------------------------------------------------------- summary

@dataclass
class DatasetSummary:
    """Images per split and class: the headcount a learner checks before training."""

    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        names: list[str] = []
        for per_class in self.counts.values():
            names.extend(c for c in per_class if c not in names)
        return names

    def total(self, split: str | None = None) -> int:
        splits = [split] if split else list(self.counts)
        return sum(sum(self.counts[s].values()) for s in splits)

    def rows(self) -> list[tuple[str, str, int]]:
        return [(s, c, n) for s, per in self.counts.items() for c, n in per.items()]

    def __str__(self) -> str:
        lines = [f"{'split':<6} {'class':<16} {'images':>6}"]
        for split, per in self.counts.items():
            for cls, n in per.items():
                lines.append(f"{split:<6} {cls:<16} {n:>6}")
            lines.append(f"{split:<6} {'(total)':<16} {self.total(split):>6}")
        lines.append(f"classes: {', '.join(self.class_names)}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><td>{s}</td><td>{c}</td><td style='text-align:right'>{n}</td></tr>"
                       for s, c, n in self.rows())
        return (f"<table><thead><tr><th>split</th><th>class</th><th>images</th></tr></thead>"
                f"<tbody>{body}</tbody></table><p>classes: {', '.join(self.class_names)}</p>")


def summarize(data_dir: str | Path | None = None,
              splits: Sequence[str] = (*SPLITS, *OPTIONAL_SPLITS)) -> DatasetSummary:
    """Count images per split and class folder, exactly as the loaders and ``check_dataset`` see them.

    ``test/`` is counted when the folder has one (it is optional; see ``tlcourse.evaluation``).
    """
    root = resolve_data_dir(data_dir)
    walk = DatasetCheck(root)  # only its counts are used: problems are check_dataset's business
    for split in splits:
        if (root / split).is_dir():
            check_split(root, split, walk)
    return DatasetSummary(root, walk.counts)


def loaders_for(cfg) -> Loaders:
    """The loaders a ``TrainConfig`` describes: ``train``, ``fine_tune`` and ``lr_find`` all start here."""
    return make_loaders(cfg.data_dir, image_size=cfg.image_size, batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, seed=cfg.seed, augment=cfg.augment, subset=cfg.subset,
                        bad_images=cfg.bad_images)

"""The loaders: a checked dataset folder becomes the train and validation ``DataLoader`` pair.

``make_loaders`` checks the folder first (``tlcourse.checks``) and builds ``ImageFolderRGB``
(``tlcourse.image_folder``) with the course's transforms (``tlcourse.image_transforms``). The
dataset's download (``tlcourse.download``) and headcount (``tlcourse.data_summary``) are their
own modules; their names are re-exported here, the import path notebooks use.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from . import TLCourseError
from .checks import DatasetCheck, check_dataset
from .config import BAD_IMAGE_POLICIES, check_field
from .data_summary import DatasetSummary, summarize  # noqa: F401  (re-exported)
from .download import DATASET_NAME, MARKER, _is_url, fetch, resolve_data_dir  # noqa: F401  (re-exported)
from .image_folder import ImageFolderRGB, load_image  # noqa: F401  (re-exported)
from .image_transforms import (  # noqa: F401  (re-exported)
    IMAGENET_MEAN,
    IMAGENET_STD,
    augmentations,
    draft_size,
    eval_transforms,
    resize_size,
    train_transforms,
)


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


def loaders_for(cfg) -> Loaders:
    """The loaders a ``TrainConfig`` describes: ``train``, ``fine_tune`` and ``lr_find`` all start here."""
    return make_loaders(cfg.data_dir, image_size=cfg.image_size, batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, seed=cfg.seed, augment=cfg.augment, subset=cfg.subset,
                        bad_images=cfg.bad_images)

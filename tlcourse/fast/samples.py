"""Which images a dataset holds: what lets a route decode them once or key a cache on them.

The fast routes need the ``(path, target)`` list behind a dataset (through ``Subset`` wrappers),
its JPEG draft size, and whether its transform draws random numbers.
"""

from __future__ import annotations

from torch.utils.data import Dataset, Subset


def samples_of(dataset: Dataset) -> list[tuple[str, int]] | None:
    """(path, target) of every item of an ImageFolder or a Subset of one, else None."""
    if isinstance(dataset, Subset):
        inner = samples_of(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    return list(samples) if samples is not None else None


def base_dataset(dataset: Dataset) -> Dataset:
    """The dataset under any ``Subset`` wrappers (where the transform and the draft size live)."""
    return base_dataset(dataset.dataset) if isinstance(dataset, Subset) else dataset


def is_random_transform(transform) -> bool:
    """True if a torchvision transform pipeline draws random numbers (Random*, ColorJitter...)."""
    if transform is None:
        return False
    parts = getattr(transform, "transforms", None)
    if parts is not None:
        return any(is_random_transform(t) for t in parts)
    name = type(transform).__name__
    return name.startswith("Random") or name in ("ColorJitter", "AutoAugment", "RandAugment",
                                                 "TrivialAugmentWide", "AugMix", "GaussianBlur")


def folder_samples(dataset: Dataset) -> list[tuple[str, int]] | None:
    """(path, target) of (a Subset of) tlcourse's ImageFolderRGB: images the cache can key on."""
    from ..data import ImageFolderRGB

    return samples_of(dataset) if isinstance(base_dataset(dataset), ImageFolderRGB) else None


def draft_size(dataset: Dataset) -> int | None:
    """The JPEG draft size a folder dataset decodes at (``tlcourse.images.open_rgb``), or None (full size)."""
    return getattr(base_dataset(dataset), "draft", None)

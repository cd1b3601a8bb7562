"""Which images a dataset holds: what lets a route decode them once or key a cache on them.

The fast routes need the ``(path, target)`` list behind a dataset (through ``Subset`` wrappers),
its JPEG draft size, and whether its transform draws random numbers.
"""

from __future__ import annotations

from torch.utils.data import Dataset, Subset


def _samples(dataset: Dataset) -> list[tuple[str, int]] | None:
    """(path, target) of every item of an ImageFolder or a Subset of one, else None."""
    if isinstance(dataset, Subset):
        inner = _samples(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    return list(samples) if samples is not None else None



def _inner(dataset: Dataset) -> Dataset:
    return _inner(dataset.dataset) if isinstance(dataset, Subset) else dataset


def _is_random(transform) -> bool:
    """True if a torchvision transform pipeline draws random numbers (Random*, ColorJitter...)."""
    if transform is None:
        return False
    parts = getattr(transform, "transforms", None)
    if parts is not None:
        return any(_is_random(t) for t in parts)
    name = type(transform).__name__
    return name.startswith("Random") or name in ("ColorJitter", "AutoAugment", "RandAugment",
                                                 "TrivialAugmentWide", "AugMix", "GaussianBlur")



def _folder_samples(dataset: Dataset) -> list[tuple[str, int]] | None:
    """(path, target) of (a Subset of) tlcourse's ImageFolderRGB: images the cache can key on."""
    from ..data import ImageFolderRGB

    return _samples(dataset) if isinstance(_inner(dataset), ImageFolderRGB) else None


def _draft(dataset: Dataset) -> int | None:
    return getattr(_inner(dataset), "draft", None)

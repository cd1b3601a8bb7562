"""The image transforms of training and evaluation: ImageNet's resize, crop and normalisation.

One place for the sizes (``resize_size``, ``draft_size``) that the loaders, the cached fast
routes, prediction and export must agree on, or a model would see other pixels than it learned on.
"""

from __future__ import annotations

from collections.abc import Callable

from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

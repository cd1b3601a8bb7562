"""The ``decode`` route: every image decoded and resized once into memory, for a model that all trains.

When nothing is frozen there is nothing to cache, but the images never change: decoding them
through PIL every epoch is the cost this removes (``tlcourse.distributed`` splits it over ranks).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import transforms

from .. import TLCourseError
from ..data import IMAGENET_MEAN, IMAGENET_STD, augmentations, resize_size
from ..images import open_rgb


class DecodedImages(Dataset):
    """Images decoded and resized once into uint8 tensors; each epoch only does tensor ops.

    Without augmentation the stored tensor is already the evaluation centre crop, so items are
    bit-identical to ``eval_transforms`` on the PIL image. With augmentation the short side is
    kept at the evaluation resize (256 for 224 crops) and random crop/flip/rotation run on the
    tensor (same kinds and ranges as ``train_transforms``, from a smaller source image).
    """

    def __init__(self, samples: list[tuple[str, int]], image_size: int = 224, augment: bool = False,
                 draft: int | None = None):
        decode = [transforms.Resize(resize_size(image_size))] + ([] if augment else [transforms.CenterCrop(image_size)])
        decode = transforms.Compose([*decode, transforms.PILToTensor()])
        self.paths = [Path(p) for p, _ in samples]
        self.targets = [t for _, t in samples]
        self.images: list[torch.Tensor] = []
        for path in self.paths:
            try:
                self.images.append(decode(open_rgb(path, draft)))
            except OSError as exc:
                raise TLCourseError(f"image {path} cannot be read ({exc}); remove it or replace it") from None
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        if augment:
            self.transform = transforms.Compose([*augmentations(image_size),
                                                 transforms.ConvertImageDtype(torch.float32), normalize])
        else:
            self.transform = transforms.Compose([transforms.ConvertImageDtype(torch.float32), normalize])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.targets[index]

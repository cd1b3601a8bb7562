"""``ImageFolderRGB``: torchvision's ``ImageFolder`` with the course's one file policy and one-line errors."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image
from torchvision import datasets

from . import TLCourseError
from .checks import ImageLoadError, describe_load_error, list_class
from .images import is_image_file, open_rgb


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

"""Generated image folders: an ImageFolder of any class names, counts and sizes, made in a second.

Ants/bees is not the world: a feature should also work with three classes called cat, dog and
fox, or with 80x64 images. The tests, the benchmarks and anyone trying the pipeline offline make
such a folder with :func:`make_image_folder` instead of downloading one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image


def make_image_folder(root: Path, classes=("ants", "bees"), per_class: dict | int = 6,
                      size=(40, 32), splits=("train", "val")) -> Path:
    """Write ``root/{split}/{class}/img_N.png`` with one dominant colour per class.

    Classes differ by colour so a network can tell them apart in a few steps; each image gets
    a little deterministic noise so no two files are identical.
    """
    colours = [(220, 40, 40), (40, 60, 220), (40, 200, 60), (200, 200, 40), (160, 40, 200)]
    generator = torch.Generator().manual_seed(0)
    for split in splits:
        count = per_class[split] if isinstance(per_class, dict) else per_class
        for ci, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                base = torch.tensor(colours[ci % len(colours)], dtype=torch.float32).view(3, 1, 1)
                noise = torch.randint(-30, 31, (3, size[1], size[0]), generator=generator).float()
                pixels = (base + noise).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                Image.fromarray(pixels, "RGB").save(folder / f"img_{i}.png")
    return root

"""Small, real inputs the exercises and their checks share: frozen features of a few course images,
and a generated image folder (other class names and counts than ants/bees)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class Features:
    """Pooled backbone features of ``subset`` train and val images (computed once, in eval mode)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    class_names: list[str]
    dropout: float  # torchvision's dropout in front of this arch's classifier (0: none)
    arch: str

    def loaders(self, batch_size: int = 8) -> tuple[DataLoader, DataLoader]:
        """(train, val) loaders in a fixed order, so two runs see the same batches."""
        return (DataLoader(TensorDataset(self.train_x, self.train_y), batch_size=batch_size),
                DataLoader(TensorDataset(self.val_x, self.val_y), batch_size=batch_size))

    def head(self, seed: int = 0) -> nn.Module:
        """A fresh classifier head for these features, the same one for the same seed."""
        torch.manual_seed(seed)
        linear = nn.Linear(self.train_x.shape[1], len(self.class_names))
        return nn.Sequential(nn.Dropout(self.dropout), linear) if self.dropout else nn.Sequential(linear)


def features(arch: str, weights, *, data_dir=None, image_size: int = 224, subset: int | None = 64,
             batch_size: int = 32, seed: int = 0) -> Features:
    """Run the frozen backbone of ``arch`` once over ``subset`` images per split (64 by default: an
    exercise must stay quick in the full course too)."""
    from ..archs import spec_of
    from ..data import make_loaders
    from ..models import build_model

    loaders = make_loaders(data_dir, image_size=image_size, batch_size=batch_size, subset=subset or 64,
                           seed=seed, augment=False, verify_images=False)
    model = build_model(arch, len(loaders.class_names), weights=weights)
    spec = spec_of(model)
    setattr(model, spec.head, nn.Identity())
    model.eval()
    out = []
    with torch.no_grad():
        for loader in (loaders.train, loaders.val):
            xs, ys = zip(*((model(x), y) for x, y in loader))
            out += [torch.cat(xs), torch.cat(ys)]
    return Features(*out, loaders.class_names, spec.head_dropout, arch)


def image_folder(root: str | Path, counts: dict[str, dict[str, int]], *, size: tuple[int, int] = (40, 30),
                 seed: int = 0, extras: bool = True) -> Path:
    """``root/<split>/<class>/*.jpg`` with ``counts[split][class]`` images of random colours; with
    ``extras`` also a stray text file, a hidden file and an upper-case ``.JPG`` per class."""
    from PIL import Image

    rng = random.Random(seed)
    root = Path(root)
    for split, classes in counts.items():
        for name, n in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                colour = tuple(rng.randrange(256) for _ in range(3))
                suffix = ".JPG" if extras and i == 0 else ".jpg"
                Image.new("RGB", size, colour).save(folder / f"img{i}{suffix}", format="JPEG")
            if extras:
                (folder / "notes.txt").write_text("not an image\n")
                (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root

"""Top-k prediction from a checkpoint: one image, a whole folder (batched), or a random sample.

Results are data (``Prediction`` objects); ``format_predictions`` prints them the way the
course's CLI does::

    IMAGE: data/hymenoptera_data/val/bees/1032546534_06907fe3b3.jpg
    TOPK:
      1) bees  p=0.9712
      2) ants  p=0.0288
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import TLCourseError
from .checkpoints import load_checkpoint, model_from_checkpoint
from .checks import describe_load_error
from .data import draft_size, eval_transforms
from .device import select_device
from .heads import probabilities
from .images import is_image_file, open_rgb
from .text import printable


@dataclass(frozen=True)
class Prediction:
    path: Path
    topk: tuple[tuple[str, float], ...]   # (class name, probability), most likely first
    true_label: str | None = None          # the parent folder's name when it is a known class

    @property
    def label(self) -> str:
        return self.topk[0][0]

    @property
    def prob(self) -> float:
        return self.topk[0][1]

    @property
    def correct(self) -> bool | None:
        return None if self.true_label is None else self.label == self.true_label


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    folder = Path(folder)
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and is_image_file(p))


class Predictor:
    """A model rebuilt from a checkpoint, with the exact preprocessing it was trained with."""

    def __init__(self, checkpoint: str | Path | dict, device: str | torch.device = "auto"):
        self.device = select_device(device)
        ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        self.checkpoint_path = None if isinstance(checkpoint, dict) else Path(checkpoint)
        source = str(self.checkpoint_path or "checkpoint")
        self.model: nn.Module = model_from_checkpoint(ckpt, self.device, source=source)
        self.class_names: list[str] = list(ckpt["class_names"])
        self.image_size: int = ckpt["image_size"]
        self.transform = eval_transforms(self.image_size)
        self.epoch = ckpt.get("epoch")
        self.metrics = ckpt.get("metrics", {})

    def _check_topk(self, topk: int) -> int:
        if topk < 1 or topk > len(self.class_names):
            raise TLCourseError(f"topk={topk} must be between 1 and the number of classes ({len(self.class_names)})")
        return topk

    @torch.no_grad()
    def predict_paths(self, paths: Sequence[str | Path], topk: int = 2, batch_size: int = 32) -> list[Prediction]:
        """Batched prediction over many files (much faster than one image at a time)."""
        topk = self._check_topk(topk)
        results: list[Prediction] = []
        for start in range(0, len(paths), batch_size):
            chunk = [Path(p) for p in paths[start:start + batch_size]]
            batch = torch.stack([self._load(p) for p in chunk]).to(self.device)
            probs = probabilities(self.model(batch).float()).cpu()
            values, indices = probs.topk(topk, dim=1)
            for path, vals, idxs in zip(chunk, values.tolist(), indices.tolist()):
                truth = path.parent.name if path.parent.name in self.class_names else None
                results.append(Prediction(path, tuple((self.class_names[i], v) for i, v in zip(idxs, vals)), truth))
        return results

    def _load(self, path: Path) -> torch.Tensor:
        """The image as the model's input; any unreadable or oversized file is one line naming it."""
        try:
            image = open_rgb(path, draft_size(self.image_size))  # as the training loaders; refuses bombs
        except FileNotFoundError:
            raise TLCourseError(f"image {path} does not exist") from None
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
            raise TLCourseError(f"image {path}: {describe_load_error(path, exc)}") from None
        return self.transform(image)

    def predict_image(self, path: str | Path, topk: int = 2) -> Prediction:
        path = Path(path)
        if not path.is_file():
            raise TLCourseError(f"image {path} does not exist (for a folder use predict_folder)")
        return self.predict_paths([path], topk)[0]

    def predict_folder(self, folder: str | Path, topk: int = 2, batch_size: int = 32) -> list[Prediction]:
        paths = list_images(_existing_dir(folder))
        if not paths:
            raise TLCourseError(f"folder {folder} holds no images ({', '.join(('.jpg', '.png', '...'))})")
        return self.predict_paths(paths, topk, batch_size)

    def predict_random(self, folder: str | Path, n: int = 5, topk: int = 2,
                       seed: int | None = None) -> list[Prediction]:
        """``n`` images drawn at random from anywhere under ``folder`` (e.g. ``data/.../val``)."""
        paths = list_images(_existing_dir(folder))
        if not paths:
            raise TLCourseError(f"folder {folder} holds no images")
        if n < 1:
            raise TLCourseError(f"n={n} must be >= 1")
        sample = random.Random(seed).sample(paths, min(n, len(paths)))
        return self.predict_paths(sample, topk)


def _existing_dir(folder: str | Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise TLCourseError(f"{folder} is not a folder")
    return folder


def format_prediction(pred: Prediction, root: str | Path | None = None) -> str:
    shown = pred.path
    if root is not None:
        try:
            shown = pred.path.resolve().relative_to(Path(root).resolve())
        except ValueError:
            pass
    names = [printable(name) for name, _ in pred.topk]      # from a checkpoint: no raw escape sequences
    width = max(len(name) for name in names)
    lines = [f"IMAGE: {printable(shown)}", "TOPK:"]
    lines += [f"  {i}) {name:<{width}}  p={p:.4f}" for i, (name, (_, p)) in enumerate(zip(names, pred.topk), 1)]
    return "\n".join(lines)


def format_predictions(preds: Iterable[Prediction], root: str | Path | None = None) -> str:
    return "\n\n".join(format_prediction(p, root) for p in preds)


def accuracy(preds: Iterable[Prediction]) -> float | None:
    known = [p.correct for p in preds if p.correct is not None]
    return sum(known) / len(known) if known else None

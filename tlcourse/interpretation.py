"""A model's predictions on one split, image by image, and the views built on them.

``Interpretation`` holds the numbers (true class, logits, loss per image); everything it shows
(confusion matrix, per-class metrics, most confused pairs, top losses, Grad-CAM, the figures)
is computed from them. Building one from a checkpoint is ``tlcourse.interpret.interpret``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import TLCourseError
from .data import IMAGENET_MEAN, IMAGENET_STD
from .gradcam import CamResult, denormalize, grad_cam, plot_grad_cam
from .heads import predictions, probabilities
from .text import plot_label

__all__ = ["ClassMetrics", "Confusion", "Interpretation", "TopLoss"]


# --------------------------------------------------------------------------- small records

@dataclass(frozen=True)
class Confusion:
    true: str
    predicted: str
    count: int


@dataclass(frozen=True)
class TopLoss:
    index: int            # position in the split (Interpretation.paths[index])
    path: Path
    true: str
    predicted: str
    prob: float           # the model's probability for its predicted class
    true_prob: float      # ... and for the true class
    loss: float


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall, F1 and support per class, as a table (text or HTML)."""

    names: tuple[str, ...]
    precision: tuple[float, ...]
    recall: tuple[float, ...]
    f1: tuple[float, ...]
    support: tuple[int, ...]
    predicted: tuple[int, ...]

    HEADERS = ("class", "precision", "recall", "F1", "images", "predicted")

    def row(self, name: str) -> dict:
        i = self.names.index(name)
        return {"precision": self.precision[i], "recall": self.recall[i], "f1": self.f1[i],
                "support": self.support[i], "predicted": self.predicted[i]}

    @property
    def macro_f1(self) -> float:
        return sum(self.f1) / len(self.f1)

    def _cells(self) -> list[tuple[str, ...]]:
        rows = [(n, f"{p:.4f}", f"{r:.4f}", f"{f:.4f}", str(s), str(k)) for n, p, r, f, s, k in
                zip(self.names, self.precision, self.recall, self.f1, self.support, self.predicted)]
        rows.append(("(macro average)", f"{sum(self.precision) / len(self.names):.4f}",
                     f"{sum(self.recall) / len(self.names):.4f}", f"{self.macro_f1:.4f}",
                     str(sum(self.support)), str(sum(self.predicted))))
        return rows

    def to_text(self) -> str:
        table = [self.HEADERS, *self._cells()]
        widths = [max(len(line[i]) for line in table) for i in range(len(self.HEADERS))]
        return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                         for line in table)

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.HEADERS) + " |", "|" + "---|" * len(self.HEADERS)]
        lines += ["| " + " | ".join(row) + " |" for row in self._cells()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{h}</th>" for h in self.HEADERS)
        body = "".join("<tr>" + "".join(f"<td style='text-align:{'left' if i == 0 else 'right'}'>{html.escape(c)}</td>"
                                        for i, c in enumerate(row)) + "</tr>" for row in self._cells())
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------- the interpretation

@dataclass
class Interpretation:
    """A model's predictions on one split, image by image (see the module docstring)."""

    class_names: list[str]
    split: str
    paths: list[Path]
    targets: torch.Tensor          # (N,) true class indices
    outputs: torch.Tensor          # (N, C) logits, or (N, 1) for a single-logit binary head
    losses: torch.Tensor           # (N,) the training loss of each image on its own
    model: nn.Module               # in eval mode
    dataset: object                # the split with evaluation transforms (image i -> dataset[i])
    source: str                    # what was interpreted, in words
    features_from: str = ""        # where the pooled features came from
    image_size: int = 224
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def probs(self) -> torch.Tensor:
        """(N, C) class probabilities (softmax, or (1 - p, p) for one logit)."""
        return probabilities(self.outputs)

    @property
    def preds(self) -> torch.Tensor:
        return predictions(self.outputs)

    @property
    def accuracy(self) -> float:
        return int((self.preds == self.targets).sum()) / len(self)   # the same division as training's

    @property
    def mistakes(self) -> list[int]:
        return (self.preds != self.targets).nonzero()[:, 0].tolist()

    # ----------------------------------------------------------------- counts

    def confusion_matrix(self, normalize: bool = False) -> torch.Tensor:
        """``[t, p]`` = images of true class ``t`` predicted as ``p``; ``normalize``: each row sums to 1."""
        n = len(self.class_names)
        counts = torch.bincount(self.targets * n + self.preds, minlength=n * n).reshape(n, n)
        if not normalize:
            return counts
        totals = counts.sum(dim=1, keepdim=True)
        return torch.where(totals > 0, counts / totals.clamp_min(1), torch.zeros(n, n))

    def per_class(self) -> ClassMetrics:
        """Precision = right / predicted as the class; recall = right / images of the class; F1 their harmonic mean.

        A class never predicted has precision 0 (scikit-learn's ``zero_division=0``).
        """
        cm = self.confusion_matrix().double()
        right = cm.diag()
        predicted, support = cm.sum(dim=0), cm.sum(dim=1)
        precision = torch.where(predicted > 0, right / predicted.clamp_min(1), torch.zeros_like(right))
        recall = torch.where(support > 0, right / support.clamp_min(1), torch.zeros_like(right))
        denominator = precision + recall
        f1 = torch.where(denominator > 0, 2 * precision * recall / denominator.clamp_min(1e-12),
                         torch.zeros_like(right))
        return ClassMetrics(tuple(self.class_names), tuple(precision.tolist()), tuple(recall.tolist()),
                            tuple(f1.tolist()), tuple(int(s) for s in support.tolist()),
                            tuple(int(p) for p in predicted.tolist()))

    def most_confused(self, k: int | None = None, min_count: int = 1) -> list[Confusion]:
        """Off-diagonal ``(true, predicted, count)`` with ``count >= min_count``, largest first (at most ``k``)."""
        if k is not None and (not isinstance(k, int) or k < 1):
            raise TLCourseError(f"k={k!r} must be a whole number >= 1 (or None for every pair)")
        cm = self.confusion_matrix()
        pairs = [Confusion(self.class_names[t], self.class_names[p], int(cm[t, p]))
                 for t in range(len(self.class_names)) for p in range(len(self.class_names))
                 if t != p and cm[t, p] >= min_count]
        pairs.sort(key=lambda c: -c.count)   # stable: ties keep class order
        return pairs[:k] if k is not None else pairs

    def top_losses(self, k: int = 9, *, mistakes_only: bool = False) -> list[TopLoss]:
        """The ``k`` images with the highest loss (optionally only the wrong ones), highest first."""
        candidates = self.mistakes if mistakes_only else list(range(len(self)))
        what = "wrong predictions" if mistakes_only else f"images in the {self.split} split"
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > len(candidates):
            raise TLCourseError(f"k={k!r} must be between 1 and the number of {what} ({len(candidates)})")
        order = sorted(candidates, key=lambda i: -self.losses[i].item())[:k]
        probs, preds = self.probs, self.preds
        return [TopLoss(i, self.paths[i], self.class_names[int(self.targets[i])], self.class_names[int(preds[i])],
                        probs[i, preds[i]].item(), probs[i, self.targets[i]].item(), self.losses[i].item())
                for i in order]

    # ----------------------------------------------------------------- images

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` of the split as the network sees it (evaluation transforms, normalised)."""
        return self.dataset[index][0]

    def grad_cam(self, indices: Sequence[int], target=None) -> CamResult:
        """Grad-CAM of the given images for their predicted class (or ``target``: index, name or one per image)."""
        if not len(indices):
            raise TLCourseError("indices is empty: pick at least one image (e.g. interp.mistakes[:4])")
        bad = [i for i in indices if not 0 <= int(i) < len(self)]
        if bad:
            raise TLCourseError(f"image index {bad[0]} is outside the {self.split} split (0..{len(self) - 1})")
        images = torch.stack([self.image(int(i)) for i in indices])
        return grad_cam(self.model, images, target, class_names=self.class_names)

    # ----------------------------------------------------------------- figures

    def plot_confusion_matrix(self, normalize: bool = False, ax=None, cmap: str = "Blues"):
        """The matrix as an image with the number in every cell; returns the figure."""
        import matplotlib.pyplot as plt

        values = self.confusion_matrix(normalize)
        n = len(self.class_names)
        if ax is None:
            side = max(3.5, 0.6 * n + 2)
            _, ax = plt.subplots(figsize=(side, side))
        ax.imshow(values.numpy(), cmap=cmap, vmin=0, vmax=1 if normalize else max(1, int(values.max())))
        threshold = (1 if normalize else float(values.max())) / 2
        for t in range(n):
            for p in range(n):
                value = values[t, p].item()
                ax.text(p, t, f"{value:.2f}" if normalize else str(int(value)), ha="center", va="center",
                        color="white" if value > threshold else "black", fontsize=10)
        labels = [plot_label(name) for name in self.class_names]      # a "$" is a dollar, not mathtext
        ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
        ax.set_yticks(range(n), labels)
        ax.set(xlabel="predicted", ylabel="true",
               title=f"{'share of each true class' if normalize else 'images'}\n{self.split}: {len(self)} images, "
                     f"accuracy {self.accuracy:.3f}")
        ax.figure.tight_layout()
        return ax.figure

    def plot_top_losses(self, k: int = 9, ncols: int = 3, *, mistakes_only: bool = False, size: float = 2.8):
        """A grid: each image titled ``true / predicted``, probability of the prediction, loss."""
        import matplotlib.pyplot as plt

        rows = self.top_losses(k, mistakes_only=mistakes_only)
        ncols = max(1, min(ncols, len(rows)))
        nrows = -(-len(rows) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.3)), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, row in zip(axes.flat, rows):
            ax.imshow(denormalize(self.image(row.index), self.mean, self.std).permute(1, 2, 0).numpy())
            colour = "green" if row.true == row.predicted else "red"
            ax.set_title(f"{plot_label(row.true)} / {plot_label(row.predicted)}\n"
                         f"p={row.prob:.2f} loss={row.loss:.2f}", color=colour, fontsize=9)
        fig.suptitle("top losses: true / predicted, probability of the prediction, loss", fontsize=10)
        fig.tight_layout()
        return fig

    def plot_grad_cam(self, indices: Sequence[int], target=None, ncols: int = 4):
        cam = self.grad_cam(indices, target)
        titles = []
        for i, index in enumerate(indices):
            true = plot_label(self.class_names[int(self.targets[index])])
            shown = plot_label(self.class_names[cam.classes[i]])
            titles.append(f"true {true}, CAM of {shown}\np({shown})={cam.probs[i]:.2f}")
        return plot_grad_cam(cam, titles, ncols=ncols)

    # ----------------------------------------------------------------- text

    def summary(self) -> str:
        wrong = len(self.mistakes)
        return (f"{self.source}: {len(self)} {self.split} images, accuracy {self.accuracy:.4f} "
                f"({wrong} wrong), mean loss {self.losses.mean().item():.4f}")

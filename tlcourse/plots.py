"""Pictures a learner would rather look at than read: curves, prediction grids, comparisons."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from .data import IMAGENET_MEAN, IMAGENET_STD
from .history import best_from_history
from .images import open_rgb
from .predict import Prediction
from .text import plot_label


def plot_history(history: Sequence[dict], title: str = "", axes=None):
    """Loss and accuracy per epoch, train vs validation, with the best val accuracy marked."""
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    epochs = [r["epoch"] for r in history]
    ax_loss, ax_acc = axes
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title} loss".strip())
    ax_acc.plot(epochs, [r["train_acc"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [r["val_acc"] for r in history], "o-", label="val")
    best = best_from_history(history)
    ax_acc.scatter([best["acc_epoch"]], [best["acc"]], s=150, facecolors="none", edgecolors="red",
                   label=f"best {best['acc']:.3f} (epoch {best['acc_epoch']})", zorder=3)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title=f"{title} accuracy".strip())
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    plt.tight_layout()
    return axes


def plot_predictions(preds: Sequence[Prediction], ncols: int = 4, size: float = 2.6):
    """A grid of images titled with the predicted class and probability (green right, red wrong)."""
    nrows = max(1, -(-len(preds) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, pred in zip(axes.flat, preds):
        ax.imshow(open_rgb(pred.path))
        colour = {True: "green", False: "red", None: "black"}[pred.correct]
        truth = f"\n(true: {plot_label(pred.true_label)})" if pred.correct is False else ""
        ax.set_title(f"{plot_label(pred.label)} {pred.prob:.2f}{truth}", color=colour, fontsize=10)
    fig.tight_layout()
    return fig


def show_batch(images: torch.Tensor, labels: Sequence[int], class_names: Sequence[str], ncols: int = 8):
    """Undo ImageNet normalisation and show a batch as the network sees it (after augmentation)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.8, nrows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, label in zip(axes.flat, images, labels):
        ax.imshow((img.cpu() * std + mean).clamp(0, 1).permute(1, 2, 0))
        ax.set_title(plot_label(class_names[int(label)]), fontsize=9)
    fig.tight_layout()
    return fig


def plot_comparison(results: Mapping[str, Sequence[dict]], metric: str = "val_acc", ax=None):
    """One curve per strategy (e.g. head / last_stage / all) for ``metric`` over epochs."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, history in results.items():
        ax.plot([r["epoch"] for r in history], [r[metric] for r in history], "o-", label=name)
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} by strategy")
    ax.grid(alpha=0.3)
    ax.legend()
    return ax

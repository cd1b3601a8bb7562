"""What did the model learn? Predictions and losses per image, and the views built on them.

``interpret(source)`` runs a trained model once over a split (``val`` by default) and keeps,
for every image, its true class, the logits, the predicted class and its loss. Everything else
is computed from those numbers (in the spirit of fastai's ``ClassificationInterpretation``):

* ``confusion_matrix()``: counts (row = true class, column = predicted), or row-normalised;
* ``per_class()``: precision, recall and F1 per class;
* ``most_confused(k)``: the ``(true, predicted, count)`` pairs off the diagonal, largest first;
* ``top_losses(k)``: the images the model got most wrong (a confident mistake costs most);
* ``grad_cam(indices)``: where in those images the evidence for a class sits (``tlcourse.gradcam``).

``source`` is a checkpoint file (``RUN/best_acc.pt``), a checkpoint dict, or a ``RunResult``
(its ``best_acc.pt``). Works for every architecture in ``tlcourse.archs``, any number of classes
and single-logit binary heads. The one forward pass is split at the pooled features
(``tlcourse.fast.split_model``): the backbone part is ``tlcourse.fast.compute_cache``, the pass
the fast training route makes, and when the ``RunResult`` trained on cached features of this very
split with this very backbone those features are reused instead of recomputed.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import TLCourseError
from .checkpoints import BEST_ACC, load_checkpoint, model_from_checkpoint
from .checks import DatasetCheck, check_split
from .data import IMAGENET_MEAN, IMAGENET_STD, ImageFolderRGB, _subset, eval_transforms, resolve_data_dir
from .device import select_device
from .fast import compute_cache, samples_of, split_model
from .gradcam import CamResult, denormalize, grad_cam, plot_grad_cam
from .heads import compute_loss, loss_for_model, predictions, probabilities
from .text import plot_label

__all__ = ["ClassMetrics", "Confusion", "Interpretation", "TopLoss", "cam_examples", "grad_cam", "interpret",
           "plot_grad_cam", "write_report"]


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


# --------------------------------------------------------------------------- building one

def _split_dataset(data_dir, split: str, class_names: list[str], image_size: int) -> ImageFolderRGB:
    root = resolve_data_dir(data_dir)
    if not root.is_dir():
        raise TLCourseError(f"data folder {root} does not exist; pass --data-dir (a folder holding {split}/<class>/)")
    if not (root / split).is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise TLCourseError(f"split {split!r} does not exist in {root}; it has {', '.join(have) or 'no folders'}")
    check = DatasetCheck(root)
    found = check_split(root, split, check)
    check.raise_if_errors()
    if sorted(found) != sorted(class_names):
        raise TLCourseError(f"the model was trained on classes {list(class_names)}, but {root / split} has "
                            f"{sorted(found)}; interpret it on a dataset with the same classes")
    return ImageFolderRGB(root / split, transform=eval_transforms(image_size))


def _prefix_equal(a: nn.Module, b: nn.Module) -> bool:
    """True when the two models compute the same pooled features (same backbone tensors)."""
    pa, pb = split_model(a, "features").prefix.state_dict(), split_model(b, "features").prefix.state_dict()
    return pa.keys() == pb.keys() and all(torch.equal(pa[k].cpu(), pb[k].cpu()) for k in pa)


def _reusable_features(run, model: nn.Module, targets: torch.Tensor) -> torch.Tensor | None:
    """The pooled validation features a ``RunResult`` trained on, if they are exactly what we need."""
    fast = getattr(run, "fast", None)
    cached = fast.pooled_val_features() if fast is not None else None
    if cached is None or not torch.equal(cached[1], targets):
        return None
    return cached[0] if _prefix_equal(run.model, model) else None


@torch.no_grad()
def _forward(model: nn.Module, dataset, device, batch_size: int, features: torch.Tensor | None):
    """Logits of every image: pooled features (given, or one backbone pass) through the head."""
    split = split_model(model, "features")
    if features is None:
        features, _ = compute_cache(split.prefix, dataset, batch_size=batch_size, device=device)
    outputs = []
    for start in range(0, len(features), batch_size):
        outputs.append(split.suffix(features[start:start + batch_size].to(device)).float().cpu())
    return torch.cat(outputs)


def interpret(source, *, data_dir: str | Path | None = None, split: str = "val", subset: int | None = None,
              batch_size: int = 32, device: str = "auto", k: int = 1) -> Interpretation:
    """Interpret a trained model on ``split`` of its dataset (see the module docstring).

    ``source``: a checkpoint path, a checkpoint dict, or a ``RunResult`` (its best_acc.pt).
    ``data_dir`` defaults to the dataset the checkpoint was trained on; ``subset`` keeps at most
    that many images (the same class-balanced pick as training's ``subset``). ``k``: the images
    the caller will show; a smaller split is refused before the (possibly long) forward pass.
    """
    device = select_device(device)
    run = None
    if hasattr(source, "run_dir") and hasattr(source, "history"):   # a RunResult
        run, path = source, Path(source.run_dir) / BEST_ACC
        checkpoint, label = load_checkpoint(path), f"{Path(source.run_dir).name}/{BEST_ACC}"
    elif isinstance(source, dict):
        checkpoint, label = source, "checkpoint"
    else:
        checkpoint, label = load_checkpoint(source), str(source)
    config = checkpoint.get("config") or {}
    if data_dir is None:
        data_dir = config.get("data_dir")
    if subset is None and run is not None and split == "val":
        subset = config.get("subset")   # a RunResult: the images its validation saw
    class_names, image_size = list(checkpoint["class_names"]), int(checkpoint["image_size"])
    dataset = _split_dataset(data_dir, split, class_names, image_size)
    if subset is not None:
        dataset = _subset(dataset, subset, config.get("seed", 0))
    if len(dataset) == 0:
        raise TLCourseError(f"split {split!r} of {resolve_data_dir(data_dir)} holds no images")
    if k > len(dataset):
        raise TLCourseError(f"--k {k} is larger than the {split} split ({len(dataset)} images); use --k "
                            f"{len(dataset)} or less")
    samples = samples_of(dataset)
    targets = torch.tensor([t for _, t in samples])
    model = model_from_checkpoint(checkpoint, device, source=label)
    features = _reusable_features(run, model, targets) if (run is not None and split == "val") else None
    features_from = ("the features cached while training (no backbone pass)" if features is not None
                     else f"one backbone pass over {len(dataset)} images")
    outputs = _forward(model, dataset, device, batch_size, features)
    loss_fn = loss_for_model(model)
    loss_fn.reduction = "none"      # one loss per image, the same formula training averages
    losses = compute_loss(loss_fn, outputs, targets).detach()
    if not torch.isfinite(losses).all():
        raise TLCourseError(f"{label} gives non-finite losses on {split}; the checkpoint's weights are broken")
    norm = checkpoint.get("normalization") or {}
    return Interpretation(class_names, split, [Path(p) for p, _ in samples], targets, outputs, losses, model, dataset,
                          label, features_from, image_size, tuple(norm.get("mean", IMAGENET_MEAN)),
                          tuple(norm.get("std", IMAGENET_STD)))


# --------------------------------------------------------------------------- the written report

def write_report(interp: Interpretation, out: str | Path, *, k: int = 9, cams: int = 8) -> dict[str, Path]:
    """``confusion.png``, ``top_losses.png``, ``gradcam.png``, ``report.md`` and ``report.html`` in ``out``.

    Grad-CAM shows the wrong predictions first (highest loss first), then the most confident
    right ones, ``cams`` images in all. Returns ``{name: path}``.
    """
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("confusion.png", "top_losses.png", "gradcam.png", "report.md",
                                           "report.html")}
    fig, axes = plt.subplots(1, 2, figsize=(2 * max(4.0, 0.6 * len(interp.class_names) + 2.5),
                                            max(3.5, 0.6 * len(interp.class_names) + 2)))
    interp.plot_confusion_matrix(ax=axes[0])
    interp.plot_confusion_matrix(normalize=True, ax=axes[1])
    fig.savefig(files["confusion.png"], dpi=110)
    plt.close(fig)
    k = min(k, len(interp))
    fig = interp.plot_top_losses(k)
    fig.savefig(files["top_losses.png"], dpi=110)
    plt.close(fig)
    chosen = cam_examples(interp, cams)
    fig = interp.plot_grad_cam(chosen)
    fig.savefig(files["gradcam.png"], dpi=110)
    plt.close(fig)
    md, page = report_texts(interp, k)
    files["report.md"].write_text(md)
    files["report.html"].write_text(page)
    return files


def cam_examples(interp: Interpretation, n: int = 8) -> list[int]:
    """Up to ``n`` image indices: the wrong predictions with the highest loss (at most half, unless
    too few are right), then the most confident right ones, taking the classes in turn."""
    wrong = sorted(interp.mistakes, key=lambda i: -interp.losses[i].item())
    right = sorted(set(range(len(interp))) - set(wrong), key=lambda i: interp.losses[i].item())
    by_class = [[i for i in right if int(interp.targets[i]) == c] for c in range(len(interp.class_names))]
    right = [i for rank in range(len(right)) for group in by_class if rank < len(group) for i in [group[rank]]]
    half = min(len(wrong), max(n // 2, n - len(right)))
    return wrong[:half] + right[:n - half]


def report_texts(interp: Interpretation, k: int = 9) -> tuple[str, str]:
    """The report as Markdown and as a standalone HTML page."""
    cm = interp.confusion_matrix()
    names = interp.class_names
    confused = interp.most_confused(10)
    top = interp.top_losses(min(k, len(interp)))
    md = [f"# Interpretation of {interp.source}", "",
          f"{len(interp)} images of the `{interp.split}` split; accuracy **{interp.accuracy:.4f}** "
          f"({len(interp.mistakes)} wrong); mean loss {interp.losses.mean().item():.4f}. "
          f"Features: {interp.features_from}.", "",
          "## Per class", "", interp.per_class().to_markdown(), "",
          "## Confusion matrix (rows: true class, columns: predicted)", "",
          "| true \\ predicted | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    md += [f"| {names[t]} | " + " | ".join(str(int(v)) for v in cm[t]) + " |" for t in range(len(names))]
    md += ["", "## Most confused", ""]
    md += [f"- {c.true} predicted as {c.predicted}: {c.count}" for c in confused] or ["- none: every image is right"]
    md += ["", "## Top losses", "", "| loss | true | predicted | p(predicted) | image |", "|---|---|---|---|---|"]
    md += [f"| {t.loss:.4f} | {t.true} | {t.predicted} | {t.prob:.4f} | {t.path.name} |" for t in top]
    md += ["", "Figures: `confusion.png`, `top_losses.png`, `gradcam.png`.", ""]
    body = (f"<h1>Interpretation of {html.escape(interp.source)}</h1>"
            f"<p>{len(interp)} images of the <code>{html.escape(interp.split)}</code> split; accuracy "
            f"<b>{interp.accuracy:.4f}</b> ({len(interp.mistakes)} wrong); "
            f"mean loss {interp.losses.mean().item():.4f}. "
            f"Features: {html.escape(interp.features_from)}.</p>"
            f"<h2>Per class</h2>{interp.per_class()._repr_html_()}"
            "<h2>Confusion matrix</h2><img src='confusion.png' alt='confusion matrix'>"
            "<h2>Most confused</h2><ul>"
            + ("".join(f"<li>{html.escape(c.true)} predicted as {html.escape(c.predicted)}: {c.count}</li>"
                       for c in confused) or "<li>none: every image is right</li>")
            + "</ul><h2>Top losses</h2><img src='top_losses.png' alt='top losses'>"
            "<h2>Grad-CAM</h2><img src='gradcam.png' alt='Grad-CAM'>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Interpretation</title></head>"
            f"<body>{body}</body></html>\n")
    return "\n".join(md), page


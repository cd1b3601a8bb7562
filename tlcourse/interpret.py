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
split with this very backbone those features are reused instead of recomputed
(``FastSetup.pooled_val_features``). This module builds an ``Interpretation``
(``tlcourse.interpretation``, re-exported here) and writes its report.
"""

from __future__ import annotations

import html
from pathlib import Path

import torch
from torch import nn

from . import TLCourseError
from .archs import spec_of
from .checkpoints import BEST_ACC, load_checkpoint, model_from_checkpoint
from .checks import DatasetCheck, check_split
from .data import IMAGENET_MEAN, IMAGENET_STD, ImageFolderRGB, _subset, eval_transforms, resolve_data_dir
from .device import select_device
from .fast import compute_cache, samples_of, split_model
from .fast.runtime import frozen_parts
from .gradcam import grad_cam, plot_grad_cam
from .heads import compute_loss, loss_for_model
from .interpretation import ClassMetrics, Confusion, Interpretation, TopLoss

__all__ = ["ClassMetrics", "Confusion", "Interpretation", "TopLoss", "cam_examples", "grad_cam", "interpret",
           "plot_grad_cam", "write_report"]


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
    if features is None:   # on a CPU the backbone runs on ONNX Runtime, as training's pass does
        example = dataset[0][0].unsqueeze(0) if len(dataset) else torch.zeros(1, 3, 224, 224)
        _, parts = frozen_parts([("features", split.prefix)], "auto", device, example, images=len(dataset),
                                 arch=spec_of(model).name)
        features, _ = compute_cache(parts[0][1], dataset, batch_size=batch_size, device=device)
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


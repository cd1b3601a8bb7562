"""Checks for notebook 08 (interpretation): the most confused pair from predictions, and Grad-CAM
written by hand, compared with tlcourse.gradcam on the arch's own cam layer."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from . import NotYet, check, require, run_learner

CLASSES = ["ant", "bee", "wasp"]
# true -> predicted counts: ant->bee 3 (the answer), wasp->ant 2, bee->ant 1; diagonals 6, 5, 4
_PAIRS = {(0, 0): 6, (1, 1): 5, (2, 2): 4, (0, 1): 3, (2, 0): 2, (1, 0): 1}


def confusion_example() -> tuple[torch.Tensor, torch.Tensor]:
    targets, preds = [], []
    for (t, p), n in _PAIRS.items():
        targets += [t] * n
        preds += [p] * n
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
    return torch.tensor(targets)[order], torch.tensor(preds)[order]


@check
def most_confused(fn):
    """The learner's ``most_confused(targets, preds, class_names) -> (true name, predicted name, count)``."""
    require(most_confused=fn)
    targets, preds = confusion_example()
    got = run_learner(fn, targets.clone(), preds.clone(), list(CLASSES), what="most_confused")
    if not isinstance(got, tuple | list) or len(got) != 3:
        raise NotYet(f"return (true class name, predicted class name, count), got {got!r}")
    true, pred, count = str(got[0]), str(got[1]), got[2]
    if true == pred:
        raise NotYet(f"({true}, {pred}) is the diagonal: those are correct predictions; skip true == predicted")
    if (true, pred) == ("bee", "ant") and count == 3:
        raise NotYet("true and predicted are swapped: count (targets[i], preds[i]) pairs, true class first")
    if count == 4:
        raise NotYet("you added both directions (ant->bee and bee->ant): each direction is its own mistake")
    if (true, pred, count) != ("ant", "bee", 3):
        raise NotYet("not the largest off-diagonal count: build the confusion matrix (rows true, columns predicted)")
    return "ant→bee, 3 times: the largest off-diagonal cell, one direction at a time, true class first"


def _reference(model, image, target, layer):
    from ..gradcam import grad_cam

    return grad_cam(model, image, target, layer=layer)


@check
def grad_cam_by_hand(fn, arch: str = "resnet18", image_size: int = 64):
    """The learner's ``my_grad_cam(model, image, target, layer) -> (H, W) heatmap in [0, 1]``."""
    require(my_grad_cam=fn)
    from ..archs import get_spec
    from ..models import build_model

    torch.manual_seed(0)
    model = build_model(arch, 3, weights=None).eval()
    image = 0.3 * torch.randn(3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    q = image_size // 8
    image[:, q:4 * q, q:4 * q] += 2.0  # a bright and a dark patch: something for the map to find
    image[:, 5 * q:8 * q, 4 * q:7 * q] -= 2.0
    layer = get_spec(arch).cam_layer
    # one batched reference for every class: their maps differ most between classes, not only the predicted one
    reference = _reference(model, image[None].expand(3, -1, -1, -1), [0, 1, 2], layer)
    targets = [t for t in (2, 1, 0) if not reference.empty[t]][:2]
    corrs = []
    for target in targets:
        want = reference.heatmaps[target]
        got = run_learner(fn, model, image.clone(), target, layer, what="my_grad_cam")
        if not isinstance(got, torch.Tensor):
            raise NotYet(f"return the heatmap as a tensor, got {type(got).__name__}")
        got = got.detach().float().squeeze()
        if tuple(got.shape) != tuple(want.shape):
            raise NotYet(f"the heatmap is {tuple(got.shape)}, the image {tuple(want.shape)}: upsample the map to "
                         "the input size (F.interpolate, bilinear)")
        if got.min() < -1e-6:
            raise NotYet("the heatmap has negative values: Grad-CAM keeps what raises the class score, apply ReLU")
        if abs(got.max().item() - 1) > 1e-3:
            raise NotYet(f"the heatmap's maximum is {got.max().item():.3g}: scale it to [0, 1] (divide by its maximum)")
        corr = torch.corrcoef(torch.stack([got.flatten(), want.flatten()]))[0, 1].item()
        if not corr > 0.98:
            raise NotYet(f"for class {target} your map correlates {corr:.2f} with Grad-CAM's: weigh each channel by "
                         "the mean of its gradient over h and w, sum the weighted activations, ReLU, upsample, scale")
        corrs.append(corr)
    return (f"matches tlcourse.gradcam on {arch}'s {layer} for {len(corrs)} classes (correlation at least "
            f"{min(corrs):.3f}): channel weights are mean gradients, ReLU keeps what raises the score")


def upsample(cam: torch.Tensor, size) -> torch.Tensor:
    """Bilinear upsampling of an ``(h, w)`` map to ``size`` (a helper the exercise may use)."""
    return F.interpolate(cam[None, None], size=tuple(size), mode="bilinear", align_corners=False)[0, 0]

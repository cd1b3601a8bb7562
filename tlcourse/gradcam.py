"""Grad-CAM: which part of the image made the network choose a class (Selvaraju et al., 2017).

The recipe, for one class ``c`` and the activations ``A`` (``K`` channels, ``h x w``) of the
network's last convolutional stage (``cam_layer`` in ``tlcourse.archs``: ``layer4`` on ResNets,
``features.18`` on MobileNetV2):

1. run the image forward and keep ``A`` (a forward hook on that layer);
2. take the gradient of the class score ``y_c`` with respect to ``A``;
3. weigh each channel by its mean gradient: ``alpha_k = mean over h, w of dy_c / dA_k``;
4. ``cam = ReLU(sum_k alpha_k * A_k)``: where the channels that raise ``y_c`` are active;
5. upsample ``cam`` to the input size and scale it to [0, 1] for an overlay.

The hook hands the rest of the network a *detached copy* of ``A`` that requires a gradient, and
the gradient comes from ``torch.autograd.grad``: so a fully frozen backbone works too, no
parameter's ``.grad`` is touched, and the graph behind ``A`` is never built. The model runs in
eval mode (BatchNorm statistics and dropout fixed) and gets its own mode back afterwards; the
hook is removed even when something fails, so repeated calls leave nothing behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from . import TLCourseError
from .archs import spec_of
from .data import IMAGENET_MEAN, IMAGENET_STD
from .heads import head_module, is_single_logit, predictions, probabilities

__all__ = ["CamResult", "cam_layer", "denormalize", "grad_cam", "plot_grad_cam"]


def cam_layer(model: nn.Module, layer: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` of the layer Grad-CAM looks at: ``layer``, else the arch's ``cam_layer``."""
    spec = spec_of(model)
    name = layer or spec.cam_layer
    if not name:
        raise TLCourseError(f"{spec.name} has no known Grad-CAM layer (cam_layer in tlcourse.archs); "
                            "pass layer='<name of its last convolutional stage>'")
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        raise TLCourseError(f"{spec.name} has no layer {name!r} for Grad-CAM; its top-level layers are "
                            f"{', '.join(n for n, _ in model.named_children())}") from None


@dataclass
class CamResult:
    """Grad-CAM heatmaps of a batch, with what is needed to draw them."""

    heatmaps: torch.Tensor        # (N, H, W) in [0, 1], at the input's size
    cams: torch.Tensor            # (N, h, w) ReLU(weighted activations) at the layer's size, unscaled
    classes: list[int]            # the class each map explains
    probs: torch.Tensor           # (N,) the model's probability for that class
    predicted: list[int]          # the model's predicted class per image
    images: torch.Tensor          # (N, 3, H, W) the normalised inputs, on the CPU
    layer: str

    def __len__(self) -> int:
        return len(self.heatmaps)

    @property
    def empty(self) -> list[bool]:
        """True where nothing in the image raises the class score (the map is all zero)."""
        return [bool(c.max() <= 0) for c in self.cams]

    def peak(self, index: int) -> tuple[int, int]:
        """``(row, column)`` of the heatmap's maximum in input pixels."""
        flat = int(self.heatmaps[index].argmax())
        return divmod(flat, self.heatmaps.shape[-1])

    def overlay(self, index: int, alpha: float = 0.45, cmap: str = "jet", mean=IMAGENET_MEAN, std=IMAGENET_STD):
        """An ``(H, W, 3)`` float array: the de-normalised image with the coloured heatmap on top."""
        import matplotlib

        image = denormalize(self.images[index], mean, std).permute(1, 2, 0).numpy()
        colours = matplotlib.colormaps[cmap](self.heatmaps[index].numpy())[..., :3]
        return ((1 - alpha) * image + alpha * colours).clip(0, 1)


def denormalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Undo the ImageNet normalisation of a ``(3, H, W)`` tensor: pixel values in [0, 1] again."""
    mean = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image.detach().cpu() * std + mean).clamp(0, 1)


def _targets(target, outputs: torch.Tensor, class_names: Sequence[str] | None) -> list[int]:
    """The class to explain per image: the prediction (None), one index/name, or one per image."""
    n = outputs.shape[0]
    num_classes = 2 if is_single_logit(outputs) else outputs.shape[1]
    if target is None:
        return predictions(outputs).tolist()
    items = list(target) if isinstance(target, (list, tuple, torch.Tensor)) else [target] * n
    if len(items) != n:
        raise TLCourseError(f"target has {len(items)} classes for {n} images; give one per image or a single one")
    out = []
    for item in items:
        if isinstance(item, str):
            if not class_names or item not in class_names:
                raise TLCourseError(f"target={item!r} is not a class name; the classes are "
                                    f"{', '.join(class_names) if class_names else '(unknown: pass class_names)'}")
            item = list(class_names).index(item)
        item = int(item)
        if not 0 <= item < num_classes:
            raise TLCourseError(f"target={item} is not a class index of this model (0..{num_classes - 1})")
        out.append(item)
    return out


def _class_scores(outputs: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """The score that grows with each image's target class: its logit, or ±logit for a single-logit head."""
    index = torch.tensor(classes, device=outputs.device)
    if is_single_logit(outputs):
        sign = index.to(outputs.dtype) * 2 - 1        # class 1: +logit, class 0: -logit
        return outputs[:, 0] * sign
    return outputs.gather(1, index[:, None])[:, 0]


def grad_cam(model: nn.Module, images: torch.Tensor, target=None, *, layer: str | None = None,
             class_names: Sequence[str] | None = None) -> CamResult:
    """Grad-CAM heatmaps for a batch ``(N, 3, H, W)`` (or one image ``(3, H, W)``) of normalised images.

    ``target``: None explains each image's predicted class; an index or a class name explains
    that class for every image; a sequence gives one per image. ``layer`` overrides the
    architecture's ``cam_layer``.
    """
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3:
        raise TLCourseError(f"images must be (N, 3, H, W) or (3, H, W), got shape {tuple(images.shape)}")
    name, module = cam_layer(model, layer)
    if not any(True for _ in head_module(model).parameters()):
        raise TLCourseError(f"the model's head ({spec_of(model).head}) has no parameters, so its outputs are not "
                            "class scores; Grad-CAM needs a classifier head (build_model adds one)")
    device = next(model.parameters()).device
    captured: list[torch.Tensor] = []

    def keep_activations(_module, _inputs, output):
        leaf = output.detach().requires_grad_(True)   # the gradient stops here: nothing behind it is built
        captured.append(leaf)
        return leaf

    modes = {m: m.training for m in model.modules()}
    handle = module.register_forward_hook(keep_activations)
    try:
        model.eval()
        with torch.enable_grad():
            outputs = model(images.to(device)).float()
            if not captured:
                raise TLCourseError(f"layer {name!r} did not run in the forward pass; choose another layer")
            activations = captured[-1]
            classes = _targets(target, outputs.detach(), class_names)
            scores = _class_scores(outputs, classes)
            (gradients,) = torch.autograd.grad(scores.sum(), activations, allow_unused=True)
    finally:
        handle.remove()
        for m, mode in modes.items():
            m.training = mode
    if gradients is None or not bool(gradients.abs().sum() > 0):
        raise TLCourseError(f"the class scores do not depend on layer {name!r} (its gradient is "
                            f"{'missing' if gradients is None else 'zero everywhere'}): the head ignores it, "
                            "or its weights are all zero; Grad-CAM would be a blank image")
    weights = gradients.mean(dim=(2, 3), keepdim=True)                       # alpha_k
    cams = F.relu((weights * activations.detach()).sum(dim=1)).float()       # (N, h, w)
    upsampled = F.interpolate(cams[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = upsampled.amax(dim=(1, 2), keepdim=True)
    heatmaps = torch.where(peak > 0, upsampled / peak.clamp_min(1e-12), torch.zeros_like(upsampled))
    probs = probabilities(outputs.detach()).gather(1, torch.tensor(classes, device=device)[:, None])[:, 0]
    return CamResult(heatmaps.cpu(), cams.cpu(), classes, probs.cpu(), predictions(outputs.detach()).tolist(),
                     images.detach().cpu(), name)


def plot_grad_cam(cam: CamResult, titles: Sequence[str] | None = None, ncols: int = 4, size: float = 2.8,
                  mark_peak: bool = True):
    """Each image with its heatmap overlaid (the ``+`` marks the peak); returns the figure."""
    import matplotlib.pyplot as plt

    n = len(cam)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, ax in enumerate(axes.flat[:n]):
        ax.imshow(cam.overlay(i))
        if mark_peak and not cam.empty[i]:
            row, col = cam.peak(i)
            ax.plot([col], [row], "w+", markersize=14, markeredgewidth=2)
        title = titles[i] if titles is not None else f"class {cam.classes[i]} p={cam.probs[i]:.2f}"
        if cam.empty[i]:
            title += "\n(no positive evidence)"
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig

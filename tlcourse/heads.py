"""Classifier heads, and what their outputs mean: the loss, the predicted class, probabilities.

Three heads (``linear``, ``binary``, ``mlp``). A ``binary`` head has a single logit, which
changes the loss (``BCEWithLogitsLoss``), the prediction (``logit > 0``) and the probabilities
(``sigmoid``); :func:`is_single_logit` is the one place that tells the two kinds apart.
"""

from __future__ import annotations

import torch
from torch import nn

from . import TLCourseError
from .archs import spec_of
from .config import HEADS, MAX_CLASSES


def make_head(in_features: int, num_classes: int, head: str = "linear", *,
              hidden: int = 256, dropout: float = 0.4) -> nn.Module:
    """A new classifier head.

    * ``linear``: ``Linear(in, num_classes)``, for ``CrossEntropyLoss``.
    * ``binary``: a single logit, for ``BCEWithLogitsLoss`` (two classes only).
    * ``mlp``: ``Linear(in, hidden) → ReLU → Dropout → Linear(hidden, num_classes)``.

    No softmax/log-softmax layer: the losses take raw logits, which is numerically safer.
    """
    if head not in HEADS:
        raise TLCourseError(f"head={head!r} is not supported; choose one of {', '.join(HEADS)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise TLCourseError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
    if num_classes > MAX_CLASSES:
        raise TLCourseError(f"num_classes={num_classes:,} is more than tlcourse supports ({MAX_CLASSES:,}): "
                            f"the head alone would need {in_features * num_classes * 4 / 1e9:,.1f} GB")
    if not 0 <= dropout < 1:
        raise TLCourseError(f"dropout={dropout} must be >= 0 and < 1")
    if head == "binary":
        if num_classes != 2:
            raise TLCourseError(f"head='binary' is a single logit for 2 classes, not {num_classes}; use head='linear'")
        return nn.Linear(in_features, 1)
    if head == "mlp":
        return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True),
                             nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    return nn.Linear(in_features, num_classes)


def head_module(model: nn.Module) -> nn.Module:
    return getattr(model, spec_of(model).head)


def head_in_features(model: nn.Module) -> int:
    head = head_module(model)
    linears = [head] if isinstance(head, nn.Linear) else [m for m in head.modules() if isinstance(m, nn.Linear)]
    return linears[0].in_features


def replace_head(model: nn.Module, num_classes: int, head: str = "linear", **head_kwargs) -> nn.Module:
    """Swap the ImageNet classifier for a new head; torchvision's dropout stays in front of it."""
    spec = spec_of(model)
    new = make_head(head_in_features(model), num_classes, head, **head_kwargs)
    if spec.head_dropout and head != "mlp":
        new = nn.Sequential(nn.Dropout(spec.head_dropout), new)
    setattr(model, spec.head, new)
    return model


# --------------------------------------------------------------------------- outputs

def is_single_logit(outputs: torch.Tensor) -> bool:
    """True for the ``(N, 1)`` output of a binary head."""
    return outputs.ndim == 2 and outputs.shape[1] == 1


class SmoothedBCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """``BCEWithLogitsLoss`` with label smoothing: targets 0/1 become ``eps/2`` and ``1 - eps/2``."""

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        eps = self.label_smoothing
        return super().forward(input, target * (1 - eps) + eps / 2)


def loss_for_head(head: str, label_smoothing: float = 0.0) -> nn.Module:
    """CrossEntropy on N logits; BCEWithLogits on the single logit of a binary head.

    ``label_smoothing`` moves ``eps`` of each target's probability onto the other classes
    (spread evenly), which keeps a head on fixed features from chasing ever larger logits.
    """
    if head == "binary":
        return SmoothedBCEWithLogitsLoss(label_smoothing) if label_smoothing else nn.BCEWithLogitsLoss()
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def loss_for_model(model: nn.Module, label_smoothing: float = 0.0) -> nn.Module:
    """The loss that fits ``model``'s head (read from the head itself, not from a setting)."""
    head = head_module(model)
    last = head if isinstance(head, nn.Linear) else [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    return loss_for_head("binary" if last.out_features == 1 else "linear", label_smoothing)


def compute_loss(loss_fn: nn.Module, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if is_single_logit(outputs):
        return loss_fn(outputs.squeeze(1), targets.float())
    return loss_fn(outputs, targets)


def predictions(outputs: torch.Tensor) -> torch.Tensor:
    """Class indices: argmax of N logits, or ``logit > 0`` (sigmoid > 0.5) for a single logit."""
    if is_single_logit(outputs):
        return (outputs.squeeze(1) > 0).long()
    return outputs.argmax(dim=1)


def probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Class probabilities: softmax over N logits, or (1 - p, p) for a single binary logit."""
    if is_single_logit(outputs):
        p = torch.sigmoid(outputs)
        return torch.cat([1 - p, p], dim=1)
    return torch.softmax(outputs, dim=1)

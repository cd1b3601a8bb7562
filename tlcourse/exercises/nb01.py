"""Checks for notebook 01 (model structure): count parameters by hand, build a multi-layer head."""

from __future__ import annotations

import torch
from torch import nn

from . import NotYet, check, require


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _stage(arch: str, stage: str) -> nn.Module:
    from ..models import build_model

    return build_model(arch, 2, weights=None).get_submodule(stage)


@check
def stage_count(count, arch: str = "resnet18", stage: str = "layer3"):
    """The learner's hand count of ``stage``'s parameters (convolutions and BatchNorm)."""
    require(**{f"{stage.replace('.', '_')}_params": count})
    module = _stage(arch, stage)
    true = _params(module)
    if not isinstance(count, int | float) or isinstance(count, bool):
        raise NotYet(f"the count must be a number, got {type(count).__name__}")
    count = int(count)
    if count == true:
        return f"{stage} has {true:,} parameters: 3x3 and 1x1 convolutions without bias, plus 2 per BatchNorm channel"
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    bns = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    conv_only = sum(_params(m) for m in convs)
    with_bias = true + sum(m.out_channels for m in convs)
    no_shortcut = true - sum(_params(m) for name, m in module.named_modules() if "downsample" in name and not
                             isinstance(m, nn.Sequential))
    if count == conv_only:
        raise NotYet(f"you counted the convolutions only: each of the {len(bns)} BatchNorm layers also learns a weight "
                     "and a bias per channel")
    if count == with_bias:
        raise NotYet("ResNet's convolutions have bias=False (the BatchNorm after each one has the bias): "
                     "drop the conv biases")
    if count == no_shortcut:
        raise NotYet(f"you left out the shortcut: {stage}.0 halves the image and changes the channel count, so it has "
                     "a downsample branch (a 1x1 conv and a BatchNorm)")
    side = "high" if count > true else "low"
    raise NotYet(f"your count is too {side}: count block by block (print(model.{stage})); a k x k conv from a to b "
                 f"channels has a*b*k*k weights, a BatchNorm over c channels 2*c")


@check
def mlp_head(head, hand_count, in_features: int = 512, num_classes: int = 5):
    """A multi-layer head from ``in_features`` to ``num_classes`` logits, and its parameters counted by hand."""
    require(mlp_head=head, mlp_params=hand_count)
    if not isinstance(head, nn.Module):
        raise NotYet(f"head must be an nn.Module (e.g. nn.Sequential(...)), got {type(head).__name__}")
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise NotYet(f"your head has {len(linears)} Linear layer(s): an MLP head has a hidden layer, "
                     "so at least two, with a non-linearity between them")
    if not any(isinstance(m, nn.ReLU | nn.GELU | nn.SiLU | nn.Tanh | nn.LeakyReLU) for m in head.modules()):
        raise NotYet("two Linear layers in a row without a non-linearity are one linear map: put nn.ReLU() between")
    head.eval()
    try:
        with torch.no_grad():
            out = head(torch.zeros(2, in_features))
    except Exception as exc:  # a shape mismatch is the likely mistake
        raise NotYet(f"the head fails on a batch of pooled features (2, {in_features}): {type(exc).__name__}; "
                     f"its first layer must take the backbone's {in_features} features") from None
    if tuple(out.shape) != (2, num_classes):
        raise NotYet(f"the head outputs shape {tuple(out.shape)} for 2 images: the last Linear needs "
                     f"out_features={num_classes}, one logit per class")
    true = _params(head)
    if not isinstance(hand_count, int | float) or isinstance(hand_count, bool):
        raise NotYet(f"head_params must be a number, got {type(hand_count).__name__}")
    if int(hand_count) != true:
        side = "high" if hand_count > true else "low"
        raise NotYet(f"your hand count is too {side} for the head you built: a Linear(a, b) has a*b weights and "
                     "b biases; ReLU and Dropout have none")
    hidden = linears[0].out_features
    return (f"{in_features}→{hidden}→{num_classes}: {true:,} parameters, all in the Linear layers "
            f"(the weights {in_features}x{hidden} dominate)")

"""Checks for notebook 02 (trainable layers): freeze by hand with frozen BatchNorm, count what trains."""

from __future__ import annotations

from torch import nn

from . import NotYet, check, require, run_learner

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _block(name: str) -> str:
    from ..archs import block_of

    return block_of(name)


@check
def freeze_stages(model, optimizer, stages=("layer3", "layer4")):
    """``model`` trains ``stages`` and the head only, its frozen BatchNorm stays in eval mode through
    ``model.train()``, and ``optimizer`` holds exactly the trainable parameters."""
    require(model=model, optimizer=optimizer)
    from ..freeze import head_block

    if not isinstance(model, nn.Module):
        raise NotYet(f"model must be the network (an nn.Module), got {type(model).__name__}")
    wanted = {*stages, head_block(model)}
    for name, p in model.named_parameters():
        should = _block(name) in wanted
        if p.requires_grad and not should:
            raise NotYet(f"{name} is trainable but {_block(name)} should be frozen: set requires_grad=False on every "
                         "parameter first, then unfreeze the blocks you want")
        if should and not p.requires_grad:
            raise NotYet(f"{name} is frozen but should train ({_block(name)} is one of {', '.join(sorted(wanted))})")
    model.train()  # what every training loop does at the start of an epoch
    for name, m in model.named_modules():
        if isinstance(m, _BN) and not any(p.requires_grad for p in m.parameters()) and m.training:
            raise NotYet(f"{name} is frozen but in train mode after model.train(), so its running statistics still "
                         "change: see the BatchNorm section (keep_frozen_bn_in_eval)")
    if not hasattr(optimizer, "param_groups"):
        raise NotYet(f"optimizer must be a torch.optim optimizer, got {type(optimizer).__name__}")
    given = {id(p) for g in optimizer.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    extra = [names.get(i, "a parameter of another model") for i in given
             if i not in names or not dict(model.named_parameters())[names[i]].requires_grad]
    if extra:
        raise NotYet(f"the optimizer holds {len(extra)} parameter(s) that do not train (e.g. {extra[0]}): "
                     "give it only those with requires_grad")
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in given]
    if missing:
        raise NotYet(f"the optimizer misses {len(missing)} trainable parameter(s) (e.g. {missing[0]}), "
                     "so they would never change")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return (f"{', '.join(sorted(wanted))} train ({trainable:,} of {total:,} parameters, {trainable / total:.0%}); "
            "frozen BatchNorm keeps its ImageNet statistics, and the optimizer sees only what trains")


@check
def count_trainable(fn, arch: str = "resnet18"):
    """The learner's ``count_trainable(model) -> (trainable, total)``, tried on three presets."""
    require(count_trainable=fn)
    from ..freeze import apply_freeze
    from ..models import build_model

    for preset in ("head", "last_stage", "all"):
        model = apply_freeze(build_model(arch, 3, weights=None), preset)
        true = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                sum(p.numel() for p in model.parameters()))
        got = run_learner(fn, model, what="count_trainable")
        if not isinstance(got, tuple | list) or len(got) != 2:
            raise NotYet(f"count_trainable must return a pair (trainable, total), got {got!r}")
        got = tuple(int(x) for x in got)
        tensors = (sum(1 for p in model.parameters() if p.requires_grad), sum(1 for _ in model.parameters()))
        if got == tensors:
            raise NotYet("you counted parameter tensors, not numbers: add p.numel() for each")
        if got[1] != true[1]:
            raise NotYet(f"the total is wrong for freeze={preset!r}: count every parameter, frozen or not")
        if got[0] == true[1] and preset != "all":
            raise NotYet(f"with freeze={preset!r} you count every parameter as trainable: "
                         "keep those with requires_grad")
        if got[0] != true[0]:
            raise NotYet(f"the trainable count is wrong for freeze={preset!r}: sum p.numel() over p.requires_grad")
    return f"right for head, last_stage and all on a 3-class {arch}: requires_grad decides, numel counts"

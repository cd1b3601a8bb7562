"""Checks for notebook 04 (fine-tuning the last stage): unfreeze one block more at a lower rate, and
find which blocks a training step really changed."""

from __future__ import annotations

import torch
from torch import nn

from . import NotYet, check, require, run_learner


def block_before_last_stage(model: nn.Module) -> str:
    """The trunk block just before the arch's last stage (``layer3`` on ResNets, ``features.13`` on MobileNetV2)."""
    from ..archs import spec_of
    from ..freeze import blocks

    names = list(blocks(model))
    return names[names.index(spec_of(model).last_stage[0]) - 1]


@check
def deeper_unfreeze(model, optimizer, lr: float, head_lr: float):
    """``model`` trains the block before the last stage, the last stage and the head; ``optimizer`` gives
    the head ``head_lr``, the last stage ``lr`` and the earlier block a lower rate than ``lr``."""
    require(model=model, optimizer=optimizer)
    from ..archs import block_of, spec_of
    from ..freeze import head_block

    if not isinstance(model, nn.Module) or not hasattr(optimizer, "param_groups"):
        raise NotYet("model must be the network and optimizer a torch.optim optimizer over its parameters")
    spec = spec_of(model)
    before, head = block_before_last_stage(model), head_block(model)
    wanted = {before, *spec.last_stage, head}
    for name, p in model.named_parameters():
        if p.requires_grad != (block_of(name) in wanted):
            state = "trainable" if p.requires_grad else "frozen"
            raise NotYet(f"{name} is {state}: train exactly {before} (the block before the last stage), the last "
                         f"stage ({spec.last_stage[0]}...) and the head ({head}); tlcourse.archs names them")
    model.train()
    frozen_bn = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and m.training
                 and not any(p.requires_grad for p in m.parameters())]
    if frozen_bn:
        raise NotYet(f"{frozen_bn[0]} is frozen but in train mode after model.train(): keep frozen BatchNorm in eval")
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    missing = [n for n, p in names.items() if p.requires_grad and id(p) not in rate]
    if missing or len(rate) != sum(p.requires_grad for p in names.values()):
        raise NotYet(f"the optimizer must hold exactly the trainable parameters (it misses {len(missing)}, "
                     f"e.g. {missing[0] if missing else '-'}; or holds frozen ones)")
    by_block: dict[str, set[float]] = {}
    for n, p in names.items():
        if p.requires_grad:
            by_block.setdefault(block_of(n), set()).add(rate[id(p)])
    mixed = [b for b, rates in by_block.items() if len(rates) > 1]
    if mixed:
        raise NotYet(f"{mixed[0]} has parameters at different rates: one rate per block")
    head_rate = by_block[head].pop()
    stage_rates = {r for b in spec.last_stage for r in by_block[b]}
    before_rate = by_block[before].pop()
    if abs(head_rate - head_lr) > 1e-12:
        raise NotYet(f"the head ({head}) trains at {head_rate:g}: a freshly initialised head takes head_lr={head_lr:g}")
    if stage_rates != {lr}:
        raise NotYet(f"the last stage trains at {sorted(stage_rates)}: give it lr={lr:g}")
    if before_rate >= lr:
        raise NotYet(f"{before} trains at {before_rate:g}, not lower than the last stage's {lr:g}: earlier blocks hold "
                     "more general features, so they should move less")
    trainable = sum(p.numel() for p in names.values() if p.requires_grad)
    return (f"{before} at {before_rate:g} < last stage at {lr:g} < head at {head_lr:g}; {trainable:,} parameters "
            "train, frozen BatchNorm stays in eval")


@check
def changed_blocks(snapshot, changed, arch: str = "resnet18"):
    """The learner's ``snapshot(model)`` and ``changed(model, snap) -> set of block names``, checked
    around one real optimizer step with the last stage and head trainable."""
    require(snapshot=snapshot, changed=changed)
    from ..freeze import apply_freeze, preset_blocks
    from ..models import build_model

    torch.manual_seed(0)
    model = apply_freeze(build_model(arch, 3, weights=None), "last_stage")
    model.train()
    snap = run_learner(snapshot, model, what="snapshot")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(2, 3, 48, 48), torch.tensor([0, 2])
    nn.CrossEntropyLoss()(model(x), y).backward()
    optimizer.step()
    got = run_learner(changed, model, snap, what="changed")
    want = set(preset_blocks(model, "last_stage"))
    if got is None:
        raise NotYet("changed returned None: return the set of block names whose weights moved")
    got = set(got)
    if not got:
        raise NotYet("nothing changed, yet a step was taken: model.state_dict() returns tensors that share memory "
                     "with the model, so clone them (t.clone()) in snapshot")
    if got - want:
        extra = sorted(got - want)[0]
        raise NotYet(f"{extra} is reported as changed but it is frozen: compare values (torch.equal), and keep "
                     "names at block level (tlcourse.archs.block_of)")
    if want - got:
        raise NotYet(f"{sorted(want - got)[0]} trained but is not reported: compare every parameter and buffer "
                     "of each block")
    return (f"exactly the last stage and the head moved ({len(want)} blocks); the frozen blocks, their BatchNorm "
            "statistics included, are bit-for-bit unchanged")

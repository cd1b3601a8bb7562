"""Checks for notebook 03 (feature extraction): your own train/validate loop, your own evaluation transform."""

from __future__ import annotations

import torch
from torch import nn

from . import NotYet, check, require, run_learner
from ._data import Features, features

__all__ = ["eval_transform", "features", "own_loop"]


class _Spy:
    """Records, for every forward pass of ``module``, whether it was in train mode and building a graph."""

    def __init__(self, module: nn.Module):
        self.calls: list[tuple[bool, bool]] = []
        self.handle = module.register_forward_pre_hook(
            lambda m, _: self.calls.append((m.training, torch.is_grad_enabled())))


def _reference_epoch(head, loader, optimizer, loss_fn, *, zero_grad: bool = True) -> float:
    head.train()
    total, seen = 0.0, 0
    for x, y in loader:
        if zero_grad:
            optimizer.zero_grad()
        loss = loss_fn(head(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        seen += len(y)
    return total / seen


def _run(fn, feats: Features, loader, *, zero_grad: bool = True, learner: bool = False):
    head = feats.head(seed=0)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1)  # the same dropout masks for every run
    if learner:
        spy = _Spy(head)
        try:
            loss = run_learner(fn, head, loader, optimizer, nn.CrossEntropyLoss(), what="my_train_epoch")
        finally:
            spy.handle.remove()
        return head, loss, spy.calls
    return head, _reference_epoch(head, loader, optimizer, nn.CrossEntropyLoss(), zero_grad=zero_grad), []


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-5 * max(1.0, abs(b))


@check
def own_loop(my_train_epoch, my_validate, feats: Features):
    """``my_train_epoch(model, loader, optimizer, loss_fn) -> mean loss`` and
    ``my_validate(model, loader, loss_fn) -> (mean loss, accuracy)`` against tlcourse's loops."""
    require(my_train_epoch=my_train_epoch, my_validate=my_validate)
    from ..loops import evaluate, train_one_epoch

    train_loader, val_loader = feats.loaders(batch_size=8)
    ref_head = feats.head(seed=0)
    optimizer = torch.optim.SGD(ref_head.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1)
    ref = train_one_epoch(ref_head, train_loader, optimizer, nn.CrossEntropyLoss(), torch.device("cpu"))["loss"]
    head, loss, calls = _run(my_train_epoch, feats, train_loader, learner=True)
    if loss is None:
        raise NotYet("my_train_epoch returned None: return the mean training loss of the epoch")
    if calls and not all(training for training, _ in calls):
        raise NotYet("the model ran in eval mode while training (dropout off): call model.train() first")
    start = feats.head(seed=0)
    if all(torch.equal(a, b) for a, b in zip(head.parameters(), start.parameters())):
        if all(p.grad is None for p in head.parameters()):
            raise NotYet("the weights never changed and no gradient was computed: call loss.backward(), "
                         "then optimizer.step()")
        raise NotYet("gradients were computed but the weights never changed: call optimizer.step() after backward")
    loss = float(loss)
    n, batches = len(feats.train_y), len(train_loader)
    if not _close(loss, ref):
        _, no_zero, _ = _run(None, feats, train_loader, zero_grad=False)
        if _close(loss, no_zero):
            raise NotYet("your loss matches a loop without optimizer.zero_grad(): gradients add up across batches, "
                         "so every step uses all previous batches too")
        if _close(loss, ref * n):
            raise NotYet(f"you returned the sum of the per-image losses: divide by the number of images ({n})")
        if _close(loss / batches * n, ref * n) or _close(loss, ref * batches):
            raise NotYet("weigh each batch's mean loss by its number of images, then divide by all images")
        raise NotYet(f"your mean loss {loss:.4f} differs from train_one_epoch's {ref:.4f} on the same batches: "
                     "zero_grad, forward, loss, backward, step, in that order, once per batch")
    ref_val = evaluate(ref_head, val_loader, nn.CrossEntropyLoss())
    spy = _Spy(ref_head)
    try:
        got = run_learner(my_validate, ref_head, val_loader, nn.CrossEntropyLoss(), what="my_validate")
    finally:
        spy.handle.remove()
    if not isinstance(got, tuple | list) or len(got) != 2:
        raise NotYet(f"my_validate must return (mean loss, accuracy), got {got!r}")
    if any(grad for _, grad in spy.calls):
        raise NotYet("validation built a graph for backward it never needs: wrap it in torch.no_grad()")
    if any(training for training, _ in spy.calls):
        raise NotYet("validation ran in train mode, so dropout (and BatchNorm) behave as in training: "
                     "call model.eval() first")
    val_loss, val_acc = float(got[0]), float(got[1])
    if not _close(val_loss, ref_val["loss"]):
        raise NotYet(f"your validation loss {val_loss:.4f} is not the mean over all {ref_val['images']} images")
    if abs(val_acc - ref_val["acc"]) > 1e-9:
        raise NotYet("your accuracy is off: count argmax(outputs) == targets over all images, divide by their number")
    return (f"your loop matches train_one_epoch (loss {loss:.4f} over {n} images) and evaluate "
            f"(val acc {val_acc:.3f}): the five steps in order, then eval mode without gradients")


@check
def eval_transform(transform, image_size: int = 224):
    """An evaluation transform that gives exactly what the course's ``eval_transforms(image_size)`` gives."""
    require(my_eval_transform=transform)
    from PIL import Image

    from ..data import eval_transforms

    gen = torch.Generator().manual_seed(0)
    w, h = round(image_size * 1.6), round(image_size * 1.2)
    pixels = (torch.rand(h, w, 3, generator=gen) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    want = eval_transforms(image_size)(image)
    a = run_learner(transform, image, what="my_eval_transform")
    b = run_learner(transform, image, what="my_eval_transform")
    if not isinstance(a, torch.Tensor):
        raise NotYet(f"the transform returns a {type(a).__name__}: end with ToTensor() (and Normalize)")
    if not torch.equal(a, b):
        raise NotYet("two calls on the same image differ: evaluation must be deterministic, no Random* transforms")
    if tuple(a.shape) != tuple(want.shape):
        raise NotYet(f"a {w}x{h} image becomes {tuple(a.shape)}, not (3, {image_size}, {image_size}): "
                     "resize the short side, then take a centre square crop")
    if a.min() >= 0 and a.max() <= 1:
        raise NotYet("values are in [0, 1]: normalise with the ImageNet mean and std the backbone was trained with")
    diff = (a - want).abs().max().item()
    if diff > 1e-4:
        raise NotYet(f"the output differs from the course's transform by up to {diff:.2f}: resize the short side to "
                     "256/224 of the crop (the ImageNet convention) before the centre crop, and check mean and std")
    return f"resize the short side, centre-crop {image_size}x{image_size}, normalise: the same pixels every time"

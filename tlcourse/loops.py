"""The loops: one training epoch, one evaluation pass, and ``fit`` (epochs, validation, checkpoints).

Plain and explicit, in the style of torchvision's ``references/classification/train.py``. Each
epoch prints one line::

    EPOCH 6/10  train_loss=0.1858 train_acc=1.0000  val_loss=0.2504 val_acc=1.0000  lr=0.001  time=4.2s

``fit`` takes a ``TrainConfig`` (epochs, device, precision, progress) and an optional
``CheckpointSaver``; ``tlcourse.engine.train`` builds everything for a whole run and calls it once
per phase, with the run's epoch numbers and, with several processes, ``FitHooks``.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn

from . import TLCourseError
from .checkpoints import CheckpointSaver
from .config import TrainConfig
from .device import rng_state, select_device
from .heads import compute_loss, loss_for_model, predictions
from .history import best_from_history, format_epoch


def _interactive() -> bool:
    if sys.stderr is not None and sys.stderr.isatty():
        return True
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _batches(loader, desc: str, show_bar: bool, max_batches: int | None):
    """Yield ``(bar, batch)``; a full epoch exhausts the loader exactly as a plain ``for`` loop does.

    (Stopping early without exhausting it would skip the sampler's last random draw and change
    the shuffling of later epochs.)
    """
    from tqdm.auto import tqdm

    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    with tqdm(total=total, desc=desc, leave=False, disable=not show_bar, unit="batch") as bar:
        for index, batch in enumerate(loader):
            yield bar, batch
            bar.update(1)
            if index + 1 == total < len(loader):
                break  # a short epoch: stop without loading a batch that would not be used


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def set_epoch(loader, epoch: int) -> None:
    """Tell a loader's sampler and dataset which epoch starts (as timm's ``_set_loader_epoch``)."""
    for part in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


# --------------------------------------------------------------------------- one pass

def train_one_epoch(model: nn.Module, loader, optimizer, loss_fn, device: torch.device, *,
                    amp: bool = False, channels_last: bool = False, max_batches: int | None = None,
                    show_bar: bool = False, desc: str = "train", scaler=None) -> dict:
    """One pass over ``loader`` updating ``model``; returns mean loss, accuracy and counts."""
    model.train()
    total_loss, correct, seen, batches = 0.0, 0, 0, 0
    for bar, (inputs, targets) in _batches(loader, desc, show_bar, max_batches):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            outputs = model(inputs)
            loss = compute_loss(loss_fn, outputs.float(), targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if not math.isfinite(loss.item()):
            raise TLCourseError(f"the training loss became {loss.item()}; "
                                f"lower lr (now {optimizer.param_groups[0]['lr']})")
        total_loss += loss.item() * targets.size(0)
        correct += (predictions(outputs) == targets).sum().item()
        seen += targets.size(0)
        batches += 1
        bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    if seen == 0:
        raise TLCourseError("the training loader yielded no images; check the dataset folder")
    return {"loss": total_loss / seen, "acc": correct / seen, "images": seen, "batches": batches}


@torch.no_grad()
def evaluate(model: nn.Module, loader, loss_fn: nn.Module | None = None, device: str | torch.device = "cpu", *,
             amp: bool = False, channels_last: bool = False, max_batches: int | None = None,
             show_bar: bool = False, desc: str = "val", return_outputs: bool = False) -> dict:
    """Mean loss and accuracy over ``loader`` in eval mode (optionally the logits and targets)."""
    device = torch.device(device)
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    all_outputs, all_targets = [], []
    for _, (inputs, targets) in _batches(loader, desc, show_bar, max_batches):
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            outputs = model(inputs).float()
        if loss_fn is not None:
            total_loss += compute_loss(loss_fn, outputs, targets).item() * targets.size(0)
        correct += (predictions(outputs) == targets).sum().item()
        seen += targets.size(0)
        if return_outputs:
            all_outputs.append(outputs.cpu())
            all_targets.append(targets.cpu())
    if seen == 0:
        raise TLCourseError("the validation loader yielded no images; check the dataset folder")
    result = {"loss": total_loss / seen if loss_fn is not None else float("nan"), "acc": correct / seen, "images": seen}
    if return_outputs:
        result["outputs"] = torch.cat(all_outputs)
        result["targets"] = torch.cat(all_targets)
    return result


# --------------------------------------------------------------------------- the epoch loop

class FitHooks:
    """What a run spread over several processes changes inside ``fit`` (one process: nothing).

    ``tlcourse.distributed.Group.fit_hooks`` supplies them: the module each process evaluates (the
    plain module under the DDP wrapper that trains), the metrics summed over the processes, and the
    BatchNorm buffers made equal before evaluation. ``fit`` knows nothing else about processes.
    """

    eval_model: nn.Module | None = None        # evaluated instead of the module fed training batches

    def reduce_stats(self, stats: dict) -> dict:
        """The epoch's metrics over the whole run (here: this process's)."""
        return stats

    def after_train(self, model: nn.Module) -> None:
        """Called after each training epoch, before evaluating ``model``."""


def fit(model: nn.Module, train_loader, val_loader, optimizer, config: TrainConfig, *,
        scheduler=None, saver: CheckpointSaver | None = None, loss_fn: nn.Module | None = None,
        forward_model: nn.Module | None = None, start_epoch: int = 0, history: list[dict] | None = None,
        generator: torch.Generator | None = None, log: Callable[[str], None] = print,
        row_extra: dict | None = None, last: int | None = None, total: int | None = None,
        hooks: FitHooks | None = None) -> list[dict]:
    """Train epochs ``start_epoch+1 .. last``, validating after each; return the history.

    ``last`` defaults to ``config.epochs``; ``total`` is the run's epoch count (default ``last``):
    a run of several phases (``tlcourse.engine``) calls ``fit`` once per phase, and every line
    (``EPOCH k/total``, the resume hint after Ctrl-C) counts the run's epochs.
    From ``config`` it takes ``device``, ``amp``, ``channels_last``, ``max_batches``, ``label_smoothing``
    and ``progress``. With a ``saver`` every epoch is checkpointed (see ``CheckpointSaver``).
    ``loss_fn`` defaults to the loss that fits the model's head (with ``label_smoothing`` for
    training; validation reports the unsmoothed loss). ``forward_model`` (default:
    ``model``) is what the batches are fed to; ``model`` is what gets saved: the fast route trains
    only the head on cached features but saves the whole network. ``generator`` is the training
    loader's shuffling generator, saved for an exact resume. ``row_extra`` is added to every
    history row (``train`` records which route ran). ``hooks``: see :class:`FitHooks`.
    """
    cfg = config.resolved()
    last = cfg.epochs if last is None else last
    total = last if total is None else total
    hooks = hooks or FitHooks()
    device = select_device(cfg.device)
    forward_model = forward_model or model
    eval_model = hooks.eval_model or forward_model
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    val_loss_fn = loss_fn or loss_for_model(model)       # validation reports the plain loss, unsmoothed
    loss_fn = loss_fn or loss_for_model(model, cfg.label_smoothing)
    history = list(history or [])
    show_bar = cfg.progress == "bar" or (cfg.progress == "auto" and _interactive())
    quiet = cfg.progress == "none"
    scaler = torch.amp.GradScaler("cuda") if (cfg.amp and device.type == "cuda"
                                              and not torch.cuda.is_bf16_supported()) else None
    common = dict(amp=cfg.amp, channels_last=cfg.channels_last, max_batches=cfg.max_batches, show_bar=show_bar)

    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, last + 1):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            set_epoch(train_loader, epoch)
            train_stats = hooks.reduce_stats(train_one_epoch(
                forward_model, train_loader, optimizer, loss_fn, device, scaler=scaler,
                desc=f"epoch {epoch}/{total} train", **common))
            hooks.after_train(eval_model)
            val_stats = hooks.reduce_stats(evaluate(eval_model, val_loader, val_loss_fn, device,
                                                    desc=f"epoch {epoch}/{total} val", **common))
            if scheduler is not None:
                scheduler.step()
            row = {"epoch": epoch, "train_loss": train_stats["loss"], "train_acc": train_stats["acc"],
                   "val_loss": val_stats["loss"], "val_acc": val_stats["acc"], "lr": lr,
                   "seconds": time.perf_counter() - started, "train_images": train_stats["images"],
                   "val_images": val_stats["images"], **(row_extra or {})}
            history.append(row)
            best = best_from_history(history)
            marks = [f"best_{m}" for m in ("acc", "loss") if best[f"{m}_epoch"] == epoch]
            if saver is not None:
                saver.save(model, history=history, best=best, marks=marks, optimizer=optimizer,
                           scheduler=scheduler, rng=rng_state(generator))
            if not quiet:
                log(format_epoch(row, total, ("  *" + ",".join(marks)) if marks else ""))
    except KeyboardInterrupt:
        saved = saver.saved_epoch if saver is not None else None
        if saved:
            log(f"interrupted during epoch {epoch}/{total}; {saver.latest} holds epoch {saved}; resume with: "
                f"python -m tlcourse train --resume {saver.latest} --epochs {total}")
        else:
            log(f"interrupted during epoch {epoch}/{total}")
        raise
    return history

"""Training and validation: plain, explicit loops in the style of torchvision's reference script.

``train(TrainConfig(...))`` does a whole run (data, model, freezing, optimizer, run folder,
checkpoints); ``fit(...)`` is the epoch loop underneath for callers who build things themselves.
Each epoch prints one line::

    EPOCH 6/10  train_loss=0.1858 train_acc=1.0000  val_loss=0.2504 val_acc=1.0000  lr=0.001  time=4.2s
"""

from __future__ import annotations

import csv
import io
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import TLCourseError
from .checkpoints import (atomic_write, load_checkpoint, load_model_state, make_checkpoint, new_run_dir,
                          save_checkpoint_as, write_json)
from .data import IMAGENET_MEAN, IMAGENET_STD, Loaders, check_loader_params, make_loaders
from .device import seed_everything, select_device
from .fast import FAST_MODES, prepare as prepare_fast_path
from .freeze import PRESETS, apply_freeze
from .models import build_model, check_arch
from .optim import check_lr, make_optimizer, make_scheduler


# --------------------------------------------------------------------------- configuration

@dataclass
class TrainConfig:
    """Every knob of a run; saved as ``args.json`` and inside each checkpoint."""

    data_dir: str | None = None          # None: the course dataset in data/hymenoptera_data
    arch: str = "resnet18"
    weights: str | None = "DEFAULT"      # torchvision weights name, None, or a local file
    head: str = "linear"                 # linear | binary | mlp
    dropout: float = 0.4                 # mlp head only
    freeze: str = "head"                 # head | last_stage | all
    bn_eval: bool = True                 # frozen BatchNorm keeps its running statistics
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    head_lr_mult: float = 1.0            # e.g. 10: the new head learns 10x faster than the body
    weight_decay: float = 0.0
    optimizer: str = "adam"              # adam | adamw | sgd
    momentum: float = 0.9
    scheduler: str = "none"              # none | step | cosine
    step_size: int = 7
    gamma: float = 0.1
    image_size: int = 224
    augment: bool = True
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False                # torch.compile the trained part (opt-in; helps on GPU)
    fast: str = "auto"                   # auto | off | features | layer3 | decode (see tlcourse.fast)
    fast_views: int = 0                  # with augmentation: cache K augmented views per image
    fast_dtype: str = "float16"          # dtype of the cached layer3 activations (float16 | float32)
    subset: int | None = None            # at most this many images per split (smoke runs)
    max_batches: int | None = None       # at most this many batches per epoch (smoke runs)
    run_name: str | None = None          # default: "<arch>_<freeze>"
    output_dir: str | None = None        # default: checkpoints/
    progress: str = "auto"               # auto | bar | epoch | none

    def validate(self) -> "TrainConfig":
        check_arch(self.arch)
        if self.freeze not in PRESETS:
            raise TLCourseError(f"freeze={self.freeze!r} is not a preset; choose one of {', '.join(PRESETS)}")
        if self.epochs < 1:
            raise TLCourseError(f"epochs={self.epochs} must be >= 1")
        check_lr(self.lr)
        check_loader_params(self.image_size, self.batch_size, self.num_workers, self.subset, "error", True)
        if self.max_batches is not None and self.max_batches < 1:
            raise TLCourseError(f"max_batches={self.max_batches} must be >= 1 (or None for whole epochs)")
        if self.fast not in FAST_MODES:
            raise TLCourseError(f"fast={self.fast!r}: choose one of {', '.join(FAST_MODES)}")
        if self.fast_views < 0:
            raise TLCourseError(f"fast_views={self.fast_views} must be >= 0 (0: no cached augmented views)")
        if self.fast_dtype not in ("float16", "float32"):
            raise TLCourseError(f"fast_dtype={self.fast_dtype!r}: choose float16 or float32")
        if self.progress not in ("auto", "bar", "epoch", "none"):
            raise TLCourseError(f"progress={self.progress!r}: choose auto, bar, epoch or none")
        return self

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# --------------------------------------------------------------------------- small helpers

def loss_for_head(head: str) -> nn.Module:
    """CrossEntropy on N logits; BCEWithLogits on the single logit of a binary head."""
    return nn.BCEWithLogitsLoss() if head == "binary" else nn.CrossEntropyLoss()


def _is_binary(outputs: torch.Tensor) -> bool:
    return outputs.ndim == 2 and outputs.shape[1] == 1


def compute_loss(loss_fn: nn.Module, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if _is_binary(outputs):
        return loss_fn(outputs.squeeze(1), targets.float())
    return loss_fn(outputs, targets)


def predictions(outputs: torch.Tensor) -> torch.Tensor:
    """Class indices: argmax of N logits, or ``logit > 0`` (sigmoid > 0.5) for a single logit."""
    if _is_binary(outputs):
        return (outputs.squeeze(1) > 0).long()
    return outputs.argmax(dim=1)


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
            if index >= total:
                break
            yield bar, batch
            bar.update(1)


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return nullcontext()
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def rng_state(generator: torch.Generator | None = None) -> dict:
    """The random state that decides the next epoch (shuffling, augmentation, dropout)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if generator is not None:
        state["loader"] = generator.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, generator: torch.Generator | None = None) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if generator is not None and "loader" in state:
        generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- one epoch

def train_one_epoch(model: nn.Module, loader, optimizer, loss_fn, device: torch.device, *,
                    amp: bool = False, channels_last: bool = False, max_batches: int | None = None,
                    show_bar: bool = False, desc: str = "train", scaler=None) -> dict:
    """One pass over ``loader`` updating ``model``; returns mean loss and accuracy."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
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
            raise TLCourseError(f"the training loss became {loss.item()}; lower lr (now {optimizer.param_groups[0]['lr']})")
        total_loss += loss.item() * targets.size(0)
        correct += (predictions(outputs) == targets).sum().item()
        seen += targets.size(0)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}")
    if seen == 0:
        raise TLCourseError("the training loader yielded no images; check the dataset folder")
    return {"loss": total_loss / seen, "acc": correct / seen, "images": seen}


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


# --------------------------------------------------------------------------- history

def best_from_history(history: list[dict]) -> dict:
    """Best validation accuracy and loss and their epochs (the first epoch wins a tie)."""
    if not history:
        return {"acc": None, "acc_epoch": None, "loss": None, "loss_epoch": None}
    by_acc = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))
    by_loss = min(history, key=lambda r: (r["val_loss"], r["epoch"]))
    return {"acc": by_acc["val_acc"], "acc_epoch": by_acc["epoch"],
            "loss": by_loss["val_loss"], "loss_epoch": by_loss["epoch"]}


HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def write_history(history: list[dict], run_dir: Path) -> None:
    """``history.json`` and ``history.csv`` side by side, both written atomically."""
    write_json(history, run_dir / "history.json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(run_dir / "history.csv", lambda fh: fh.write(buffer.getvalue().encode()))


def format_epoch(row: dict, epochs: int, marks: str = "") -> str:
    return (f"EPOCH {row['epoch']}/{epochs}  train_loss={row['train_loss']:.4f} train_acc={row['train_acc']:.4f}  "
            f"val_loss={row['val_loss']:.4f} val_acc={row['val_acc']:.4f}  lr={row['lr']:.3g}  "
            f"time={row['seconds']:.1f}s{marks}")


# --------------------------------------------------------------------------- the epoch loop

def fit(model: nn.Module, train_loader, val_loader, optimizer, *, epochs: int,
        loss_fn: nn.Module | None = None, scheduler=None, device: str | torch.device = "auto",
        run_dir: str | Path | None = None, checkpoint_meta: dict | None = None,
        start_epoch: int = 0, history: list[dict] | None = None,
        generator: torch.Generator | None = None, forward_model: nn.Module | None = None,
        amp: bool = False, channels_last: bool = False, max_batches: int | None = None,
        progress: str = "auto", log: Callable[[str], None] = print, row_extra: dict | None = None) -> list[dict]:
    """Train for epochs ``start_epoch+1 .. epochs``, validating after each; return the history.

    With ``run_dir`` it writes ``latest.pt`` every epoch, ``best_acc.pt``/``best_loss.pt`` when
    validation improves, and the history files, each atomically. ``forward_model`` (default:
    ``model``) is what the batches are fed to; ``model`` is what gets saved: the fast path
    trains only the head on cached features but saves the whole network. ``row_extra`` is
    added to every history row (``train`` records which path ran).
    """
    device = select_device(device)
    forward_model = forward_model or model
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    history = list(history or [])
    show_bar = progress == "bar" or (progress == "auto" and _interactive())
    quiet = progress == "none"
    scaler = torch.amp.GradScaler("cuda") if (amp and device.type == "cuda"
                                              and not torch.cuda.is_bf16_supported()) else None
    run_dir = Path(run_dir) if run_dir is not None else None
    meta = checkpoint_meta or {}

    epoch = saved = start_epoch  # saved: the epoch latest.pt holds
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_stats = train_one_epoch(forward_model, train_loader, optimizer, loss_fn, device, amp=amp,
                                          channels_last=channels_last, max_batches=max_batches,
                                          show_bar=show_bar, desc=f"epoch {epoch}/{epochs} train", scaler=scaler)
            val_stats = evaluate(forward_model, val_loader, loss_fn, device, amp=amp, channels_last=channels_last,
                                 max_batches=max_batches, show_bar=show_bar, desc=f"epoch {epoch}/{epochs} val")
            if scheduler is not None:
                scheduler.step()
            row = {"epoch": epoch, "train_loss": train_stats["loss"], "train_acc": train_stats["acc"],
                   "val_loss": val_stats["loss"], "val_acc": val_stats["acc"], "lr": lr,
                   "seconds": time.perf_counter() - started, **(row_extra or {})}
            history.append(row)
            best = best_from_history(history)
            marks = [f"best_{m}" for m in ("acc", "loss") if best[f"{m}_epoch"] == epoch]
            if run_dir is not None:
                _save_epoch(run_dir, model, optimizer, scheduler, epoch, history, best, marks, meta, generator)
                saved = epoch
            if not quiet:
                log(format_epoch(row, epochs, ("  *" + ",".join(marks)) if marks else ""))
    except KeyboardInterrupt:
        resumable = run_dir is not None and saved > 0
        where = f"; {run_dir}/latest.pt holds epoch {saved}" if resumable else ""
        how = (f"; resume with: python -m tlcourse train --resume {run_dir / 'latest.pt'} --epochs {epochs}"
               if resumable else "")
        log(f"interrupted during epoch {epoch}/{epochs}{where}{how}")
        raise
    return history


def _save_epoch(run_dir, model, optimizer, scheduler, epoch, history, best, marks, meta, generator) -> None:
    metrics = {k: history[-1][k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
    checkpoint = make_checkpoint(
        model, epoch=epoch, class_names=meta.get("class_names", []), spec=meta["spec"],
        freeze=meta.get("freeze", "custom"), image_size=meta.get("image_size", 224),
        mean=meta.get("mean", IMAGENET_MEAN), std=meta.get("std", IMAGENET_STD), metrics=metrics,
        optimizer=optimizer, scheduler=scheduler, history=history, best=best,
        config=meta.get("config"), rng=rng_state(generator))
    # Best files first, latest last: if the process dies in between, latest.pt is the older one
    # and a resume simply repeats this epoch.
    write_history(history, run_dir)
    save_checkpoint_as(checkpoint, [run_dir / f"{mark}.pt" for mark in marks] + [run_dir / "latest.pt"])


# --------------------------------------------------------------------------- a whole run

@dataclass
class RunResult:
    model: nn.Module
    history: list[dict]
    run_dir: Path
    class_names: list[str]
    best: dict = field(default_factory=dict)
    config: TrainConfig | None = None
    path: str = "plain"                   # which training path ran, in words (printable)
    fast_path: str = "plain"              # its short name: plain | features | layer3 | views | decode
    cache_seconds: float = 0.0            # one-time work of a fast path (decoding, backbone pass)

    @property
    def best_acc_path(self) -> Path:
        return self.run_dir / "best_acc.pt"

    @property
    def best_loss_path(self) -> Path:
        return self.run_dir / "best_loss.pt"

    @property
    def latest_path(self) -> Path:
        return self.run_dir / "latest.pt"

    @property
    def seconds(self) -> float:
        """Training time end to end: the epochs plus any one-time caching before them."""
        return self.cache_seconds + sum(row["seconds"] for row in self.history)

    def summary(self) -> str:
        return (f"best val_acc {self.best['acc']:.4f} at epoch {self.best['acc_epoch']}, "
                f"best val_loss {self.best['loss']:.4f} at epoch {self.best['loss_epoch']}, "
                f"last val_acc {self.history[-1]['val_acc']:.4f}; {self.seconds:.1f}s; run folder {self.run_dir}")


def train(config: TrainConfig | None = None, *, resume: str | Path | None = None,
          loaders: Loaders | None = None, **overrides) -> RunResult:
    """A whole training run from a config (keyword arguments override its fields).

    ``resume`` continues a run from its ``latest.pt`` (same folder, same random state), up to
    ``epochs``; on the CPU the result equals an uninterrupted run with the same seed.
    """
    checkpoint = load_checkpoint(resume) if resume is not None else None
    if config is None:
        config = TrainConfig.from_dict(checkpoint["config"]) if checkpoint else TrainConfig()
    cfg = replace(config, **overrides).validate()
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    loaders = loaders or make_loaders(cfg.data_dir, image_size=cfg.image_size, batch_size=cfg.batch_size,
                                      num_workers=cfg.num_workers, seed=cfg.seed, augment=cfg.augment,
                                      subset=cfg.subset)
    if checkpoint is not None:
        if checkpoint["class_names"] != loaders.class_names:
            raise TLCourseError(f"{resume} was trained on classes {checkpoint['class_names']}, "
                                f"but {loaders.data_dir} has {loaders.class_names}; resume on the same dataset")
        model = build_model(checkpoint["arch"], checkpoint["num_classes"], weights=None, head=checkpoint["head"],
                            **checkpoint.get("head_kwargs", {}))
        model.tlcourse_spec["weights"] = checkpoint.get("weights")
        load_model_state(model, checkpoint["model"], str(resume))
        apply_freeze(model, checkpoint["freeze"], bn_eval=cfg.bn_eval)
    else:
        model = build_model(cfg.arch, len(loaders.class_names), weights=cfg.weights, head=cfg.head,
                            **({"dropout": cfg.dropout} if cfg.head == "mlp" else {}))
        apply_freeze(model, cfg.freeze, bn_eval=cfg.bn_eval)
    model.to(device)
    # Which path runs (plain loop, cached features/activations, decoded images) and its caches.
    fast = prepare_fast_path(model, loaders, cfg, device, start_epoch=checkpoint["epoch"] if checkpoint else 0,
                             log=(lambda line: None) if cfg.progress == "none" else print)
    forward_model = fast.forward_model
    if cfg.compile:
        forward_model = torch.compile(forward_model or model)
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, weight_decay=cfg.weight_decay,
                               momentum=cfg.momentum, head_lr_mult=cfg.head_lr_mult)
    scheduler = make_scheduler(optimizer, cfg.scheduler, epochs=cfg.epochs, step_size=cfg.step_size, gamma=cfg.gamma)

    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None and checkpoint.get("scheduler"):
            scheduler.load_state_dict(checkpoint["scheduler"])
        run_dir = Path(resume).resolve().parent
        start_epoch, history = checkpoint["epoch"], checkpoint["history"]
        restore_rng_state(checkpoint["rng"], loaders.train.generator)
        if start_epoch >= cfg.epochs:
            print(f"{resume} already finished epoch {start_epoch} of {cfg.epochs}; pass a larger epochs to continue")
    else:
        run_dir = new_run_dir(cfg.run_name or f"{cfg.arch}_{cfg.freeze}", cfg.output_dir)
        write_json(asdict(cfg) | {"class_names": loaders.class_names, "fast_path": fast.name,
                                  "fast_path_description": fast.description}, run_dir / "args.json")
        start_epoch, history = 0, []

    meta = {"spec": model.tlcourse_spec, "freeze": cfg.freeze if checkpoint is None else checkpoint["freeze"],
            "class_names": loaders.class_names, "image_size": cfg.image_size,
            "config": asdict(cfg) | {"fast_path": fast.name}}
    history = fit(model, fast.train_loader, fast.val_loader, optimizer, epochs=cfg.epochs,
                  loss_fn=loss_for_head(model.tlcourse_spec["head"]), scheduler=scheduler, device=device,
                  run_dir=run_dir, checkpoint_meta=meta, start_epoch=start_epoch, history=history,
                  generator=loaders.train.generator, amp=cfg.amp, channels_last=cfg.channels_last,
                  max_batches=cfg.max_batches, progress=cfg.progress, forward_model=forward_model,
                  row_extra={"path": fast.name})
    return RunResult(model, history, run_dir, loaders.class_names, best_from_history(history), cfg,
                     path=fast.description, fast_path=fast.name, cache_seconds=fast.seconds)

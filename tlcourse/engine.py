"""A whole training run: ``train(TrainConfig(...))`` builds the data, the model, the freezing, the
training route, the optimizer and the run folder, then calls ``tlcourse.loops.fit``.

``train(resume="checkpoints/<run>/latest.pt")`` continues a run in its own folder with the
saved random state; on the CPU the result equals an uninterrupted run with the same seed.
The pieces live in their own modules: ``config`` (the settings), ``loops`` (the epoch loops),
``fast`` (the cached routes), ``checkpoints`` (files), ``history`` (the per-epoch record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import TLCourseError
from .checkpoints import (
    ARGS_JSON,
    BEST_ACC,
    BEST_LOSS,
    LATEST,
    CheckpointSaver,
    load_checkpoint,
    model_from_checkpoint,
    new_run_dir,
)
from .config import TrainConfig
from .data import Loaders, make_loaders
from .device import restore_rng_state, seed_everything, select_device
from .fast import prepare as prepare_fast_path
from .files import write_json
from .freeze import apply_freeze
from .heads import compute_loss, loss_for_head, loss_for_model, predictions
from .history import best_from_history, format_epoch, write_history
from .loops import evaluate, fit, train_one_epoch
from .models import build_model
from .optim import make_optimizer, make_scheduler

# What notebooks and learners import from here: the run, and the pieces they look at.
__all__ = ["RunResult", "TrainConfig", "best_from_history", "compute_loss", "evaluate", "fit", "format_epoch",
           "loss_for_head", "loss_for_model", "predictions", "train", "train_one_epoch", "write_history"]


@dataclass
class RunResult:
    model: nn.Module
    history: list[dict]
    run_dir: Path
    class_names: list[str]
    best: dict = field(default_factory=dict)
    config: TrainConfig | None = None
    route: str = "plain"                  # which training route ran, in words (printable)
    fast_path: str = "plain"              # its short name: plain | features | layer3 | views | decode
    cache_seconds: float = 0.0            # one-time work of a fast route (decoding, backbone pass)
    fast: object = field(default=None, repr=False)   # the FastSetup trained on (its caches, for interpret)

    @property
    def best_acc_path(self) -> Path:
        return self.run_dir / BEST_ACC

    @property
    def best_loss_path(self) -> Path:
        return self.run_dir / BEST_LOSS

    @property
    def latest_path(self) -> Path:
        return self.run_dir / LATEST

    @property
    def seconds(self) -> float:
        """Training time end to end: the epochs plus any one-time caching before them."""
        return self.cache_seconds + sum(row["seconds"] for row in self.history)

    def summary(self) -> str:
        return (f"best val_acc {self.best['acc']:.4f} at epoch {self.best['acc_epoch']}, "
                f"best val_loss {self.best['loss']:.4f} at epoch {self.best['loss_epoch']}, "
                f"last val_acc {self.history[-1]['val_acc']:.4f}; {self.seconds:.1f}s; run folder {self.run_dir}")


def _new_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    model = build_model(cfg.arch, num_classes, weights=cfg.weights, head=cfg.head,
                        **({"dropout": cfg.dropout} if cfg.head == "mlp" else {}))
    return apply_freeze(model, cfg.freeze, bn_eval=cfg.bn_eval)


def train(config: TrainConfig | None = None, *, resume: str | Path | None = None,
          loaders: Loaders | None = None, **overrides) -> RunResult:
    """A whole training run from a config (keyword arguments override its fields).

    ``resume`` continues a run from its ``latest.pt`` (same folder, same random state), up to
    ``epochs``; on the CPU the result equals an uninterrupted run with the same seed.
    """
    checkpoint = load_checkpoint(resume) if resume is not None else None
    if config is None:
        config = TrainConfig.from_dict(checkpoint["config"]) if checkpoint else TrainConfig()
    cfg = config.replace(**overrides).validate()
    if cfg.recipe == "fine_tune":   # two phases in one run folder: tlcourse.recipes
        from .recipes import fine_tune

        return fine_tune(cfg, resume=resume, checkpoint=checkpoint, loaders=loaders)
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    loaders = loaders or make_loaders(cfg.data_dir, image_size=cfg.image_size, batch_size=cfg.batch_size,
                                      num_workers=cfg.num_workers, seed=cfg.seed, augment=cfg.augment,
                                      subset=cfg.subset)
    if checkpoint is not None:
        if checkpoint["class_names"] != loaders.class_names:
            raise TLCourseError(f"{resume} was trained on classes {checkpoint['class_names']}, "
                                f"but {loaders.data_dir} has {loaders.class_names}; resume on the same dataset")
        model = apply_freeze(model_from_checkpoint(checkpoint, source=str(resume)), checkpoint["freeze"],
                             bn_eval=cfg.bn_eval)
        freeze = checkpoint["freeze"]
    else:
        model = _new_model(cfg, len(loaders.class_names))
        freeze = cfg.freeze
    model.to(device)
    # Which route runs (plain loop, cached features/activations, decoded images) and its caches.
    fast = prepare_fast_path(model, loaders, cfg, device,
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
        write_json(cfg.to_dict() | {"class_names": loaders.class_names, "fast_path": fast.name,
                                    "fast_path_description": fast.description}, run_dir / ARGS_JSON)
        start_epoch, history = 0, []

    saver = CheckpointSaver(run_dir, class_names=loaders.class_names, freeze=freeze, image_size=cfg.image_size,
                            config=cfg.to_dict() | {"fast_path": fast.name})
    saver.saved_epoch = start_epoch or None
    history = fit(model, fast.train_loader, fast.val_loader, optimizer, cfg, scheduler=scheduler, saver=saver,
                  forward_model=forward_model, start_epoch=start_epoch, history=history,
                  generator=loaders.train.generator, row_extra={"path": fast.name})
    return RunResult(model, history, run_dir, loaders.class_names, best_from_history(history), cfg,
                     route=fast.description, fast_path=fast.name, cache_seconds=fast.seconds, fast=fast)

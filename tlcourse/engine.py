"""A whole training run: ``train(TrainConfig(...))`` builds the data, the model, the freezing, the
training route, the optimizer and the run folder, then calls ``tlcourse.loops.fit``.

``train(resume="checkpoints/<run>/latest.pt")`` continues a run in its own folder with the
saved random state; on the CPU the result equals an uninterrupted run with the same seed.
Started by ``torchrun`` (``python -m tlcourse train --nproc-per-node N``), every process runs
``train`` and ``tlcourse.distributed`` makes them one data-parallel run.
The pieces live in their own modules: ``config`` (the settings), ``loops`` (the epoch loops),
``fast`` (the cached routes), ``checkpoints`` (files), ``history`` (the per-epoch record).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import TLCourseError, distributed
from .checkpoints import (
    ARGS_JSON,
    BEST_ACC,
    BEST_LOSS,
    LATEST,
    OUTPUT_DIR_FIX,
    CheckpointSaver,
    load_checkpoint,
    model_from_checkpoint,
    new_run_dir,
)
from .config import TrainConfig
from .data import Loaders, loaders_for
from .device import seed_everything, select_device
from .fast import prepare as prepare_fast_path
from .feature_cache import FeatureCache
from .files import ensure_writable, write_json
from .freeze import apply_freeze
from .heads import compute_loss, loss_for_head, loss_for_model, predictions
from .history import best_from_history, format_epoch, write_history
from .loops import evaluate, fit, train_one_epoch
from .models import model_for
from .optim import make_optimizer, make_scheduler
from .probe import ProbeResult, baseline
from .resume import check_classes, plan_resume, restore_state, resume_folder
from .settings import checkpoints_root

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
    probe: ProbeResult | None = None      # the linear-probe baseline (head-only and last_stage runs)
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
        probe = f" (linear probe {self.probe.val_acc:.4f})" if self.probe else ""
        return (f"best val_acc {self.best['acc']:.4f} at epoch {self.best['acc_epoch']}{probe}, "
                f"best val_loss {self.best['loss']:.4f} at epoch {self.best['loss_epoch']}, "
                f"last val_acc {self.history[-1]['val_acc']:.4f}; {self.seconds:.1f}s; run folder {self.run_dir}")

    def versus_probe(self) -> str:
        """One line: the final and the best epoch against the linear-probe baseline, in images.

        Facts, no verdict: a gap of a few images is noise, and the best epoch is chosen on the very
        images it is scored on. ``tlcourse.compare.versus_probe`` runs the paired test.
        """
        if self.probe is None:
            return ""
        probe, n = self.probe.val_acc, self.probe.val_images
        last = self.history[-1]

        def gap(acc: float, images: int) -> str:
            if images != n:                           # validated on fewer images (max_batches)
                return f"{acc - probe:+.4f}"
            d = round(acc * n) - round(probe * n)
            side = "above" if d > 0 else "below"
            return "level with it" if d == 0 else f"{abs(d)} image{'s' if abs(d) != 1 else ''} {side}"

        images = int(last.get("val_images", n))
        return (f"linear probe {probe:.4f} on {n} val images; final epoch {last['val_acc']:.4f}: "
                f"{gap(last['val_acc'], images)}; best epoch ({self.best['acc_epoch']}, chosen on these same images) "
                f"{self.best['acc']:.4f}: {gap(self.best['acc'], images)}; paired test: "
                "tlcourse.compare.versus_probe")


def train(config: TrainConfig | None = None, *, resume: str | Path | None = None,
          loaders: Loaders | None = None, **overrides) -> RunResult:
    """A whole training run from a config (keyword arguments override its fields).

    ``resume`` continues a run from its ``latest.pt`` (same folder, same random state), up to
    ``epochs``; on the CPU the result equals an uninterrupted run with the same seed. An older
    checkpoint continues in a new run folder; settings that define the model cannot change, the
    others (epochs, lr...) apply and are recorded (see ``tlcourse.resume``).
    In a process started by torchrun it trains one rank of a DistributedDataParallel run
    (``tlcourse.distributed``) and always leaves the process group when it returns or raises.
    """
    with distributed.session() as group:
        return _train(config, resume=resume, loaders=loaders, group=group, **overrides)


def _quiet(line: str) -> None:
    pass


def _train(config: TrainConfig | None, *, resume: str | Path | None, loaders: Loaders | None,
           group: distributed.Group | None, **overrides) -> RunResult:
    checkpoint = load_checkpoint(resume) if resume is not None else None
    if checkpoint is not None:  # what may change, where it continues, writable: see tlcourse.resume
        plan = plan_resume(resume, checkpoint, config, overrides)
        cfg = plan.config.resolved()
    else:   # fields left at None take the freeze preset's recipe (config.PRESET_DEFAULTS)
        cfg = (config or TrainConfig()).replace(**overrides).validate().resolved()
        ensure_writable(cfg.output_dir or checkpoints_root(), OUTPUT_DIR_FIX)  # before any work
    if cfg.recipe == "fine_tune":   # two phases in one run folder: tlcourse.recipes
        if group is not None:
            raise TLCourseError("recipe='fine_tune' runs in one process; leave out --nproc-per-node")
        from .recipes import fine_tune

        return fine_tune(cfg, resume=resume, checkpoint=checkpoint, loaders=loaders,
                         in_place=checkpoint is None or plan.in_place)
    device = group.start(cfg.device) if group else select_device(cfg.device)
    say = print if group is None or group.is_main else _quiet
    seed_everything(cfg.seed)
    loaders = loaders or loaders_for(cfg)
    if checkpoint is not None:
        check_classes(checkpoint, loaders.class_names, loaders.data_dir, resume)
        model = apply_freeze(model_from_checkpoint(checkpoint, source=str(resume)), checkpoint["freeze"],
                             bn_eval=cfg.bn_eval)
        freeze = checkpoint["freeze"]
    else:
        model = apply_freeze(model_for(cfg, len(loaders.class_names)), cfg.freeze, bn_eval=cfg.bn_eval)
        freeze = cfg.freeze
    model.to(device)
    if group is not None:
        bn = group.prepare_model(model, cfg.sync_bn)
        if cfg.progress != "none":
            say(f"{group.describe(cfg.batch_size)}; {bn}")
    log = _quiet if cfg.progress == "none" else say
    # Which route runs (plain loop, cached features/activations, decoded images) and its caches;
    # for a new head-only or last_stage run also the frozen features of the linear-probe baseline.
    want_probe = cfg.probe and freeze in ("head", "last_stage") and checkpoint is None
    cache = FeatureCache(cfg.cache_dir, enabled=cfg.cache)

    fast = prepare_fast_path(model, loaders, cfg, device, log=log, probe=want_probe, cache=cache,
                             **(group.fast_hooks() if group else {}))
    probe = None
    if fast.probe_data is not None:
        probe = baseline(fast.probe_data, num_classes=len(loaders.class_names), seed=cfg.seed, cache=cache)
        log(probe.line())
    elif checkpoint is not None and checkpoint["config"].get("probe_result"):
        probe = ProbeResult.from_dict(checkpoint["config"]["probe_result"])   # measured when the run started
    forward_model = fast.forward_model
    if cfg.compile:
        forward_model = torch.compile(forward_model or model)
    # A resume builds the optimizer as it was saved (same groups), then applies the changed settings.
    base = plan.saved if checkpoint is not None else cfg
    optimizer = make_optimizer(model, cfg.optimizer, base.lr, weight_decay=base.weight_decay,
                               momentum=base.momentum, head_lr_mult=base.head_lr_mult)
    scheduler = make_scheduler(optimizer, cfg.scheduler, epochs=base.epochs, step_size=base.step_size,
                               gamma=base.gamma)
    probe_dict = probe.as_dict() if probe else None
    args = cfg.to_dict() | {"class_names": loaders.class_names, "fast_path": fast.name,
                            "fast_path_description": fast.description, "probe_result": probe_dict}
    train_loader, val_loader, eval_model, fit_cfg = fast.train_loader, fast.val_loader, None, cfg
    if group is not None:   # DDP trains through the wrapper; each rank evaluates its val share on the plain module
        train_loader, val_loader = group.shard_loaders(train_loader, val_loader, cfg.seed)
        eval_model = forward_model or model
        forward_model = group.wrap(eval_model)
        fit_cfg = group.fit_config(cfg)

    if checkpoint is not None:   # every rank restores the state; one rank writes the folder
        restore_state(plan, model, optimizer, scheduler, loaders.train.generator, log=say)
        run_dir = (group.on_main(lambda: resume_folder(plan, args, log=say), "prepare the run folder") if group
                   else resume_folder(plan, args, log=say))
        start_epoch, history = plan.epoch, list(checkpoint["history"])
        if start_epoch >= cfg.epochs:
            say(f"{resume} already finished epoch {start_epoch} of {cfg.epochs}; pass a larger epochs to continue")
    else:
        def create_run_dir() -> Path:
            run_dir = new_run_dir(cfg.run_name or f"{cfg.arch}_{cfg.freeze}", cfg.output_dir)
            write_json(args, run_dir / ARGS_JSON)
            return run_dir

        run_dir = group.on_main(create_run_dir, "create the run folder") if group else create_run_dir()
        start_epoch, history = 0, []

    saver = CheckpointSaver(run_dir, class_names=loaders.class_names, freeze=freeze, image_size=cfg.image_size,
                            config=cfg.to_dict() | {"fast_path": fast.name, "probe_result": probe_dict})
    saver.saved_epoch = start_epoch if (run_dir / LATEST).is_file() and start_epoch else None
    history = fit(model, train_loader, val_loader, optimizer, fit_cfg, scheduler=scheduler,
                  saver=distributed.MainOnlySaver(saver, group) if group else saver,
                  forward_model=forward_model, start_epoch=start_epoch, history=history,
                  generator=loaders.train.generator, log=say, eval_model=eval_model, distributed=group,
                  row_extra={"path": fast.name, **({"processes": group.world} if group else {})})
    result = RunResult(model, history, run_dir, loaders.class_names, best_from_history(history), cfg,
                       route=fast.description, fast_path=fast.name, cache_seconds=fast.seconds, probe=probe,
                       fast=fast)
    if probe is not None:
        log(result.versus_probe())
    return result

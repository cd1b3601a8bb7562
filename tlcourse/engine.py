"""A whole training run: ``train(TrainConfig(...))`` builds the data, the model and the run folder,
then runs the run's phases (``tlcourse.recipes``: one for a single preset, two for ``fine_tune``),
each with its freezing, training route, optimizer and schedule, through ``tlcourse.loops.fit``.

``train(resume="checkpoints/<run>/latest.pt")`` continues a run in its own folder with the
saved random state; on the CPU the result equals an uninterrupted run with the same seed.
Started by ``torchrun`` (``python -m tlcourse train --nproc-per-node N``), every process runs
``train`` and ``tlcourse.distributed`` makes them one data-parallel run.
The pieces live in their own modules: ``config`` (the settings), ``recipes`` (the phases),
``loops`` (the epoch loops), ``fast`` (the cached routes), ``checkpoints`` (files), ``resume``
(what a resume may change), ``history`` (the per-epoch record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import distributed
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
from .fast import prepare as prepare_route
from .feature_cache import FeatureCache
from .files import ensure_writable, write_json
from .freeze import apply_freeze
from .heads import compute_loss, loss_for_head, loss_for_model, predictions
from .history import best_from_history, format_epoch, route_of, upgrade_rows, write_history
from .loops import evaluate, fit, train_one_epoch
from .models import model_for
from .probe import ProbeResult, baseline
from .recipes import Phase, run_phases
from .resume import ResumePlan, changed_line, check_classes, plan_resume, restore_random, resume_folder
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
    route: str = "plain"                  # the training route that ran: plain | features | layer3 | views | decode
    route_description: str = "plain"      # the same in words, with its caches (printable)
    cache_seconds: float = 0.0            # one-time work of a fast route (decoding, backbone pass)
    probe: ProbeResult | None = None      # the linear-probe baseline (head-only and last_stage runs)
    fast: object = field(default=None, repr=False)   # the FastSetup trained on (its caches, for interpret)

    @property
    def fast_path(self) -> str:
        """The old name of :attr:`route` (kept for code written before the rename)."""
        return self.route

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
    ``epochs``, in whichever phase it stopped; on the CPU the result equals an uninterrupted run
    with the same seed. An older checkpoint continues in a new run folder; settings that define
    the model cannot change, the others (epochs, lr...) apply and are recorded (see ``tlcourse.resume``).
    In a process started by torchrun it trains one rank of a DistributedDataParallel run
    (``tlcourse.distributed``) and always leaves the process group when it returns or raises.
    """
    with distributed.session() as group:
        return _run(config, resume=resume, loaders=loaders, group=group, **overrides)


def _quiet(line: str) -> None:
    pass


def _run(config: TrainConfig | None, *, resume: str | Path | None, loaders: Loaders | None,
         group: distributed.Group | None, **overrides) -> RunResult:
    """Settings, phases, data, model; then each phase that is left (:meth:`_Run.phase`); then the result."""
    plan = None
    if resume is not None:   # what may change, where it continues, writable: see tlcourse.resume
        plan = plan_resume(resume, load_checkpoint(resume), config, overrides)
        cfg = plan.config.resolved()
    else:   # fields left at None take the freeze preset's recipe (config.PRESET_DEFAULTS)
        cfg = (config or TrainConfig()).replace(**overrides).validate().resolved()
        ensure_writable(cfg.output_dir or checkpoints_root(), OUTPUT_DIR_FIX)  # before any work
    phases = run_phases(cfg, plan)   # a single preset: one phase; fine_tune: head, then unfreeze
    device = group.start(cfg.device) if group else select_device(cfg.device)
    say = print if group is None or group.is_main else _quiet
    seed_everything(cfg.seed)
    loaders = loaders or loaders_for(cfg)
    if plan is not None:
        check_classes(plan.checkpoint, loaders.class_names, loaders.data_dir, resume)
        model, start_epoch, history = model_from_checkpoint(plan.checkpoint, source=str(resume)), plan.epoch, \
            upgrade_rows(plan.checkpoint["history"])
        if start_epoch >= cfg.epochs:
            say(f"{resume} already finished epoch {start_epoch} of {cfg.epochs}; pass a larger epochs to continue")
            return _finished(plan, model, loaders, cfg)
        if plan.changed:
            say(changed_line(plan))
    else:
        model, start_epoch, history = model_for(cfg, len(loaders.class_names)), 0, []
    model.to(device)
    run = _Run(cfg, phases, loaders, device, group, say, plan, FeatureCache(cfg.cache_dir, enabled=cfg.cache))
    if plan is not None and plan.checkpoint["config"].get("probe_result"):
        run.probe = ProbeResult.from_dict(plan.checkpoint["config"]["probe_result"])   # measured when it started
    for number, phase in enumerate(phases, 1):
        if start_epoch < phase.last:
            history = run.phase(number, phase, model, start_epoch, history)
            start_epoch = phase.last
    return run.result(model, history)


@dataclass
class _Run:
    """What the phases of one run share: settings, data, device, process group, run folder, probe, routes."""

    cfg: TrainConfig
    phases: list[Phase]
    loaders: Loaders
    device: torch.device
    group: distributed.Group | None
    say: Callable[[str], None]
    plan: ResumePlan | None
    cache: FeatureCache
    run_dir: Path | None = None
    probe: ProbeResult | None = None
    setups: list = field(default_factory=list)   # (phase, FastSetup) of each phase that ran

    @property
    def log(self):
        return _quiet if self.cfg.progress == "none" else self.say

    def phase(self, number: int, phase: Phase, model: nn.Module, start_epoch: int, history: list[dict]) -> list[dict]:
        """One phase: freeze, choose the route, optimizer and schedule, (resume,) then ``fit`` its epochs."""
        cfg, group, loaders, log = self.cfg, self.group, self.loaders, self.log
        apply_freeze(model, phase.preset, bn_eval=cfg.bn_eval)
        if group is not None:
            bn = group.prepare_model(model, cfg.sync_bn)
            if cfg.progress != "none":
                self.say(f"{group.describe(cfg.batch_size)}; {bn}")
        # Which route runs (plain loop, cached features/activations, decoded images) and its caches;
        # for a new run starting head-only or last_stage also the frozen features of the linear probe.
        want_probe = (cfg.probe and self.plan is None and phase is self.phases[0]
                      and phase.preset in ("head", "last_stage"))
        fast = prepare_route(model, loaders, cfg.replace(freeze=phase.preset, recipe="single"), self.device,
                             log=log, probe=want_probe, cache=self.cache, **(group.fast_hooks() if group else {}))
        self.setups.append((phase, fast))
        if fast.probe_data is not None:
            self.probe = baseline(fast.probe_data, num_classes=len(loaders.class_names), seed=cfg.seed,
                                  cache=self.cache)
            log(self.probe.line())
        train_loader, val_loader = fast.train_loader, fast.val_loader
        if group is not None:   # each rank trains on its shuffled shard and evaluates its val share
            train_loader, val_loader = group.shard_loaders(train_loader, val_loader, cfg.seed)
        batches = min(len(train_loader), cfg.max_batches or len(train_loader))
        # A resume builds the optimizer as it was saved (same groups), then applies the changed settings.
        optimizer, scheduler = phase.build(model, cfg, batches, saved=self.plan.saved if self.plan else None)
        if self.plan is not None and phase.first <= start_epoch:   # resuming inside this phase
            phase.restore(self.plan, model, optimizer, scheduler)
        if self.plan is not None and len(self.setups) == 1:   # once, right before the first epoch that runs
            restore_random(self.plan, loaders.train.generator)
        if self.run_dir is None:
            self.run_dir = self._folder(fast)
        forward_model, hooks = fast.forward_model, None
        if cfg.compile:
            forward_model = torch.compile(forward_model or model)
        if group is not None:   # DDP trains through the wrapper; each rank evaluates the plain module
            hooks = group.fit_hooks(forward_model or model)
            forward_model = group.wrap(forward_model or model)
        line = phase.announce(number, len(self.phases), model, cfg)
        if line:
            log(line)
        saver = CheckpointSaver(self.run_dir, class_names=loaders.class_names, freeze=phase.preset,
                                image_size=cfg.image_size, config=cfg.to_dict() | {
                                    "route": fast.name, "probe_result": self.probe and self.probe.as_dict()})
        saver.saved_epoch = start_epoch if (self.run_dir / LATEST).is_file() and start_epoch else None
        try:
            return fit(model, train_loader, val_loader, optimizer, group.fit_config(cfg) if group else cfg,
                       scheduler=scheduler, saver=distributed.MainOnlySaver(saver, group) if group else saver,
                       forward_model=forward_model, start_epoch=max(start_epoch, phase.first - 1), last=phase.last,
                       total=cfg.epochs, history=history, generator=loaders.train.generator, log=self.say,
                       hooks=hooks, row_extra={"route": fast.name, **phase.row,
                                               **({"processes": group.world} if group else {})})
        finally:
            phase.close(scheduler)

    def _folder(self, fast) -> Path:
        """The run folder and its ``args.json`` (one rank writes, every rank learns where it is)."""
        cfg = self.cfg
        args = cfg.to_dict() | {"class_names": self.loaders.class_names, "probe_result": self.probe and
                                self.probe.as_dict()}
        if cfg.recipe == "fine_tune":
            args["phases"] = [p.__dict__ for p in self.phases]
        else:
            args |= {"route": fast.name, "route_description": fast.description}

        def create() -> Path:
            if self.plan is not None:
                return resume_folder(self.plan, args, log=self.say)
            run_dir = new_run_dir(cfg.run_name or f"{cfg.arch}_{_kind(cfg)}", cfg.output_dir)
            write_json(args, run_dir / ARGS_JSON)
            return run_dir

        return self.group.on_main(create, "prepare the run folder") if self.group else create()

    def result(self, model: nn.Module, history: list[dict]) -> RunResult:
        if self.cfg.recipe == "fine_tune":   # the details of each route were logged when it was chosen
            words = "; ".join(f"{p.preset}: {fast.description.split(' (')[0]}" for p, fast in self.setups)
            setup = None
        else:
            words, setup = self.setups[0][1].description, self.setups[0][1]
        result = RunResult(model, history, self.run_dir, self.loaders.class_names, best_from_history(history),
                           self.cfg, route="+".join(fast.name for _, fast in self.setups) or "none",
                           route_description=words or "nothing left to train", probe=self.probe, fast=setup,
                           cache_seconds=sum(fast.seconds for _, fast in self.setups))
        if self.probe is not None:
            self.log(result.versus_probe())
        return result


def _kind(cfg: TrainConfig) -> str:
    return "fine_tune" if cfg.recipe == "fine_tune" else cfg.freeze


def _finished(plan: ResumePlan, model: nn.Module, loaders: Loaders, cfg: TrainConfig) -> RunResult:
    """A resume with nothing left to train: the run as its checkpoint holds it."""
    history, saved = upgrade_rows(plan.checkpoint["history"]), plan.checkpoint["config"]
    probe = ProbeResult.from_dict(saved["probe_result"]) if saved.get("probe_result") else None
    name = route_of(saved)
    return RunResult(model, history, plan.run_dir, loaders.class_names, best_from_history(history), cfg,
                     route=name, route_description=name, probe=probe)

"""``fine_tune``: fastai's two-phase transfer-learning recipe, in one run folder.

``train(recipe="fine_tune", freeze_epochs=1, epochs=E)`` (``--recipe fine_tune`` on the command
line) runs, as fastai's ``Learner.fine_tune`` does:

1. **head only** for ``freeze_epochs`` epochs, one-cycle schedule warming up to ``lr`` over the
   whole phase (``pct_start=0.99``). The backbone is frozen, so this runs on the fast path
   (cached pooled features) whenever ``tlcourse.fast.prepare`` allows it;
2. **unfreeze** ``unfreeze`` (``last_stage`` or ``all``) for the remaining ``E - freeze_epochs``
   epochs with a fresh optimizer, per-block learning rates spread like fastai's
   ``slice(lr / 2 / lr_mult, lr / 2)`` (the head at ``lr / 2``, the first unfrozen block ``lr_mult``
   times lower, geometric in between, see :func:`spread_lrs`) and a one-cycle schedule
   (``pct_start=0.3``, starting at a fifth of the peak). ``phase_schedule="cosine"`` anneals
   each phase from its peak to zero instead.

``freeze``, ``scheduler`` and ``head_lr_mult`` belong to the single-phase recipe: here
``unfreeze``, ``phase_schedule`` and ``lr_mult`` decide them (setting both is an error).
Schedules step every batch (an optimizer step hook, :class:`BatchSchedule`), which ``fit`` saves
and restores like an epoch scheduler. Epochs are numbered across both phases: one history, one
set of checkpoints, and ``train(resume=".../latest.pt")`` continues in whichever phase the
checkpoint was written, including exactly at the boundary (on the CPU the resumed history equals
the uninterrupted one).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import TLCourseError
from .checkpoints import ARGS_JSON, CheckpointSaver, model_from_checkpoint, new_run_dir
from .config import TrainConfig
from .data import Loaders, loaders_for
from .device import restore_rng_state, seed_everything, select_device
from .fast import prepare
from .files import write_json
from .freeze import apply_freeze, preset_blocks
from .history import best_from_history
from .loops import fit
from .models import model_for
from .optim import make_optimizer
from .resume import check_classes

__all__ = ["BatchSchedule", "Phase", "fine_tune", "one_cycle", "phases", "spread_lrs"]

#: fastai's fine_tune: phase 1 warms up for 99 % of its steps; phase 2 peaks after 30 %, from peak / 5.
PHASE1_PCT_START, PHASE2_PCT_START, PHASE2_DIV = 0.99, 0.3, 5.0
ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV = 25.0, 1e5


@dataclass(frozen=True)
class Phase:
    preset: str         # what learns: "head", "last_stage" or "all"
    first: int          # first epoch (1-based, counted across the run)
    last: int           # last epoch
    lr: float           # the head's peak learning rate

    @property
    def epochs(self) -> int:
        return self.last - self.first + 1


def phases(cfg: TrainConfig) -> list[Phase]:
    """The phases of a fine_tune config; a ``TLCourseError`` when there is nothing to unfreeze into."""
    cfg = cfg.resolved()   # None: fine_tune's own defaults (config.RECIPE_DEFAULTS)
    if cfg.freeze_epochs >= cfg.epochs:
        raise TLCourseError(f"freeze_epochs={cfg.freeze_epochs} must be smaller than epochs={cfg.epochs}: fine_tune "
                            f"trains the head for freeze_epochs, then {cfg.unfreeze} for the rest of the epochs")
    for name, single_only, instead in (("freeze", "head", "unfreeze"), ("scheduler", "none", "phase_schedule"),
                                       ("head_lr_mult", 1.0, "lr_mult")):
        if getattr(cfg, name) not in (single_only, None):
            raise TLCourseError(f"{name}={getattr(cfg, name)!r} belongs to recipe='single'; fine_tune decides it per "
                                f"phase: set {instead} instead (and leave {name} at {single_only!r})")
    if cfg.fast in ("features", "layer3"):
        raise TLCourseError(f"fast={cfg.fast!r} cannot hold for both phases of fine_tune; use fast='auto' (each phase "
                            "caches what its frozen part allows), 'decode' or 'off'")
    out = [Phase("head", 1, cfg.freeze_epochs, cfg.lr)] if cfg.freeze_epochs else []
    return out + [Phase(cfg.unfreeze, cfg.freeze_epochs + 1, cfg.epochs, cfg.lr / 2)]


def spread_lrs(blocks: list[str], top: float, lr_mult: float) -> dict[str, float]:
    """``{block: lr}``, the last block (the head) at ``top``, the first at ``top / lr_mult``, geometric between.

    fastai's ``slice(top / lr_mult, top)`` does this over its layer groups; here every block of
    ``tlcourse.archs`` is a group, so e.g. MobileNetV2's last stage gets five rates, not one.
    """
    if len(blocks) == 1:
        return {blocks[0]: top}
    n = len(blocks) - 1
    return {name: top / lr_mult ** ((n - i) / n) for i, name in enumerate(blocks)}


def _cos(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))) / 2


def one_cycle(total: int, pct_start: float = 0.25, div: float = ONE_CYCLE_DIV,
              final_div: float = ONE_CYCLE_FINAL_DIV) -> Callable[[int], float]:
    """Multiplier of the peak rate at batch ``t``: cosine up from ``1/div``, then down to ``1/final_div``."""
    def factor(t: int) -> float:
        pct = t / max(1, total)
        if pct < pct_start:
            return _cos(1 / div, 1.0, pct / pct_start)
        return _cos(1.0, 1 / final_div, (pct - pct_start) / max(1e-12, 1 - pct_start))
    return factor


def cosine(total: int) -> Callable[[int], float]:
    """Multiplier at batch ``t``: cosine from 1 down to 0 over ``total`` batches."""
    def factor(t: int) -> float:
        return _cos(1.0, 0.0, t / max(1, total))
    return factor


class BatchSchedule:
    """A per-batch learning-rate schedule that ``fit`` can hold like an epoch scheduler.

    ``LambdaLR`` is stepped by an optimizer step hook after every batch, so the loops stay as
    they are; ``fit``'s once-per-epoch ``step()`` does nothing, and ``state_dict`` (the batch
    count) goes into every checkpoint. The multiplier is recomputed from the batch count, so a
    resumed run continues on the same curve. Call :meth:`close` when the phase ends.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float]):
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        self._hook = optimizer.register_step_post_hook(lambda *_: self.scheduler.step())

    def step(self) -> None:
        """Called by ``fit`` once per epoch: the schedule already stepped with every batch."""

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)

    def close(self) -> None:
        self._hook.remove()


def _schedule(optimizer, cfg: TrainConfig, phase: Phase, second: bool, batches: int) -> BatchSchedule:
    total = phase.epochs * batches
    if cfg.phase_schedule == "cosine":
        return BatchSchedule(optimizer, cosine(total))
    if second:
        return BatchSchedule(optimizer, one_cycle(total, PHASE2_PCT_START, PHASE2_DIV))
    return BatchSchedule(optimizer, one_cycle(total, PHASE1_PCT_START))


def _phase_log(phase: Phase, total: int, log: Callable[[str], None]) -> Callable[[str], None]:
    """``fit`` numbers epochs up to the phase's last; the learner wants the run's (and its resume hint)."""
    pattern = re.compile(rf"^(EPOCH \d+|interrupted during epoch \d+)/{phase.last}\b")

    def rewrite(line: str) -> None:
        line = pattern.sub(rf"\g<1>/{total}", line).replace(f"--epochs {phase.last}", f"--epochs {total}")
        log(line)
    return rewrite


def _check_resume(checkpoint: dict, cfg: TrainConfig, plan: list[Phase], source) -> None:
    saved = checkpoint.get("config") or {}
    epoch = checkpoint["epoch"]
    inside = next((p for p in plan if p.first <= epoch < p.last), None)
    boundary = next((p for p in plan if p.last == epoch), None)
    expected = (inside or boundary).preset if (inside or boundary) else None
    if expected is not None and checkpoint["freeze"] != expected:
        if saved.get("freeze_epochs") == cfg.freeze_epochs and saved.get("unfreeze") != cfg.unfreeze:
            setting = f"unfreeze={saved.get('unfreeze')!r}"             # the phase's preset changed, not its length
        else:
            setting = f"freeze_epochs={saved.get('freeze_epochs')}"
        raise TLCourseError(f"{source} holds epoch {epoch} trained with freeze={checkpoint['freeze']!r}, but with "
                            f"freeze_epochs={cfg.freeze_epochs} and unfreeze={cfg.unfreeze!r} epoch {epoch} belongs "
                            f"to the {expected!r} phase; resume with the run's {setting}")
    if inside is not None and saved.get("epochs") != cfg.epochs:
        raise TLCourseError(f"{source} is inside the {inside.preset!r} phase, whose schedule spans epochs "
                            f"{inside.first}-{saved.get('epochs')}; resume with epochs={saved.get('epochs')} "
                            "(a finished run can be fine-tuned further as a new run)")


def _restore(optimizer, schedule: BatchSchedule, checkpoint: dict) -> None:
    """Load the optimizer and schedule state, keeping this session's rates and decay.

    The saved state holds the interrupted session's peak rates; a resume with another ``lr``
    or ``lr_mult`` (or weight decay, momentum) must train with what this session's config, and so
    every checkpoint it writes, records. The schedule's position is kept: the rate at the next
    batch is the new peak times the same multiplier the uninterrupted run would use there.
    """
    fresh = [{k: g[k] for k in ("initial_lr", "weight_decay", "momentum") if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(checkpoint["optimizer"])
    schedule.load_state_dict(checkpoint["scheduler"])
    scheduler = schedule.scheduler
    if all(g.get(k) == f[k] for g, f in zip(optimizer.param_groups, fresh) for k in f):
        return                                              # nothing changed: bit-identical continuation
    for group, values in zip(optimizer.param_groups, fresh):
        group.update(values)
    scheduler.base_lrs = [values["initial_lr"] for values in fresh]
    lrs = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def fine_tune(cfg: TrainConfig, *, resume: str | Path | None = None, checkpoint: dict | None = None,
              loaders: Loaders | None = None, log: Callable[[str], None] = print, in_place: bool = True):
    """Run (or resume) a fine_tune config; returns a ``RunResult`` spanning both phases.

    ``in_place``: the checkpoint is its run's newest (``tlcourse.resume``); an older one is refused,
    since continuing it would overwrite the run's later checkpoints.
    """
    from .engine import RunResult

    cfg = cfg.resolved()
    if checkpoint is not None and (checkpoint.get("config") or {}).get("recipe", "single") != "fine_tune":
        recipe = (checkpoint.get("config") or {}).get("recipe", "single")
        raise TLCourseError(f"{resume} was trained with recipe={recipe!r}; resume it without --recipe fine_tune "
                            "(or start a new fine_tune run)")
    plan = phases(cfg)
    if checkpoint is not None and not in_place:
        raise TLCourseError(f"{resume} is not the newest checkpoint of its fine_tune run; resume from the run's "
                            "latest.pt (continuing an older one would overwrite the later epochs)")
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    loaders = loaders or loaders_for(cfg)
    quiet = cfg.progress == "none"
    say = (lambda line: None) if quiet else log
    if checkpoint is not None:
        _check_resume(checkpoint, cfg, plan, resume)
        check_classes(checkpoint, loaders.class_names, loaders.data_dir, resume)
        model = model_from_checkpoint(checkpoint, source=str(resume))
        run_dir = Path(resume).resolve().parent
        start_epoch, history = checkpoint["epoch"], list(checkpoint["history"])
        if start_epoch >= cfg.epochs:
            say(f"{resume} already finished epoch {start_epoch} of {cfg.epochs}; pass a larger epochs to continue")
    else:
        model = model_for(cfg, len(loaders.class_names))
        run_dir = new_run_dir(cfg.run_name or f"{cfg.arch}_fine_tune", cfg.output_dir)
        write_json(cfg.to_dict() | {"class_names": loaders.class_names,
                                    "phases": [p.__dict__ for p in plan]}, run_dir / ARGS_JSON)
        start_epoch, history = 0, []
    model.to(device)

    routes, names, cache_seconds, restored = [], [], 0.0, False
    for number, phase in enumerate(plan, 1):
        if start_epoch >= phase.last:
            continue
        second = phase.preset != "head"
        apply_freeze(model, phase.preset, bn_eval=cfg.bn_eval)
        # The phase's own preset decides its route and cached views (fast_views None: the preset's default).
        fast = prepare(model, loaders, cfg.replace(freeze=phase.preset, recipe="single"), device, log=say)
        rates = spread_lrs(preset_blocks(model, phase.preset), phase.lr, cfg.lr_mult) if second else None
        optimizer = make_optimizer(model, cfg.optimizer, phase.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, block_lrs=rates)
        optimizer.param_groups.reverse()   # the head's group first: the history's lr column is the head's
        batches = min(len(fast.train_loader), cfg.max_batches or len(fast.train_loader))
        schedule = _schedule(optimizer, cfg, phase, second, batches)
        if checkpoint is not None and phase.first <= start_epoch:   # resuming inside this phase
            _restore(optimizer, schedule, checkpoint)
        if checkpoint is not None and not restored:   # once, right before the first epoch that runs
            restore_rng_state(checkpoint["rng"], loaders.train.generator)
            restored = True
        spread = (f"{min(rates.values()):.3g} ({next(iter(rates))}) .. {phase.lr:.3g} (head)" if rates
                  else f"{phase.lr:.3g}")
        say(f"phase {number}/{len(plan)}: {phase.preset}, epochs {phase.first}-{phase.last} of {cfg.epochs}, "
            f"peak lr {spread}, {cfg.phase_schedule} per batch")
        saver = CheckpointSaver(run_dir, class_names=loaders.class_names, freeze=phase.preset,
                                image_size=cfg.image_size, config=cfg.to_dict() | {"fast_path": fast.name})
        saver.saved_epoch = start_epoch or None
        forward_model = torch.compile(fast.forward_model or model) if cfg.compile else fast.forward_model
        try:
            history = fit(model, fast.train_loader, fast.val_loader, optimizer, cfg.replace(epochs=phase.last),
                          scheduler=schedule, saver=saver, forward_model=forward_model,
                          start_epoch=max(start_epoch, phase.first - 1), history=history,
                          generator=loaders.train.generator, log=_phase_log(phase, cfg.epochs, log),
                          row_extra={"path": fast.name, "phase": phase.preset})
        finally:
            schedule.close()
        start_epoch = phase.last
        routes.append(f"{phase.preset}: {fast.description.split(' (')[0]}")   # the details were logged above
        names.append(fast.name)
        cache_seconds += fast.seconds
    return RunResult(model, history, run_dir, loaders.class_names, best_from_history(history), cfg,
                     route="; ".join(routes) or "nothing left to train", fast_path="+".join(names) or "none",
                     cache_seconds=cache_seconds)

"""A run's phases: what learns when, at which rates, on which schedule (``tlcourse.engine`` runs them).

A single preset (``recipe="single"``) is one phase: ``freeze`` for ``epochs`` epochs, the
optimizer and epoch scheduler of the config. ``fine_tune`` is fastai's two-phase recipe, in one run folder.

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
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import TLCourseError
from .config import TrainConfig
from .freeze import preset_blocks
from .optim import make_optimizer, make_scheduler
from .resume import ResumePlan, restore_optimizer

__all__ = ["BatchSchedule", "Phase", "one_cycle", "phases", "run_phases", "spread_lrs"]

#: fastai's fine_tune: phase 1 warms up for 99 % of its steps; phase 2 peaks after 30 %, from peak / 5.
PHASE1_PCT_START, PHASE2_PCT_START, PHASE2_DIV = 0.99, 0.3, 5.0
ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV = 25.0, 1e5


@dataclass(frozen=True)
class Phase:
    """Epochs ``first..last`` of a run (1-based, counted across the run) with ``preset`` learning.

    ``recipe`` says how the phase builds its optimizer and schedule: ``"single"`` as the config
    says (one epoch scheduler), ``"fine_tune"`` per-block rates and a per-batch schedule.
    """

    preset: str         # what learns: "head", "last_stage" or "all"
    first: int          # first epoch (1-based, counted across the run)
    last: int           # last epoch
    lr: float           # the head's peak learning rate
    recipe: str = "fine_tune"

    @property
    def epochs(self) -> int:
        return self.last - self.first + 1

    @property
    def row(self) -> dict:
        """Added to each history row: which phase trained the epoch (a single preset adds nothing)."""
        return {} if self.recipe == "single" else {"phase": self.preset}

    def build(self, model, cfg: TrainConfig, batches: int, saved: TrainConfig | None = None):
        """``(optimizer, scheduler)`` for this phase; ``batches``: optimizer steps per epoch.

        ``saved``: a resumed single-preset run's settings as saved, so the optimizer has the saved
        groups (``restore`` then applies what changed, see ``tlcourse.resume``).
        """
        if self.recipe == "single":
            base = saved or cfg
            optimizer = make_optimizer(model, cfg.optimizer, base.lr, weight_decay=base.weight_decay,
                                       momentum=base.momentum, head_lr_mult=base.head_lr_mult)
            return optimizer, make_scheduler(optimizer, cfg.scheduler, epochs=base.epochs,
                                             step_size=base.step_size, gamma=base.gamma)
        rates = self.block_lrs(model, cfg)
        optimizer = make_optimizer(model, cfg.optimizer, self.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, block_lrs=rates)
        optimizer.param_groups.reverse()   # the head's group first: the history's lr column is the head's
        return optimizer, _schedule(optimizer, cfg, self, self.preset != "head", batches)

    def block_lrs(self, model, cfg: TrainConfig) -> dict[str, float] | None:
        """fine_tune's unfrozen phase: a rate per block (:func:`spread_lrs`); otherwise one rate."""
        if self.recipe == "single" or self.preset == "head":
            return None
        return spread_lrs(preset_blocks(model, self.preset), self.lr, cfg.lr_mult)

    def restore(self, plan: ResumePlan, model, optimizer, scheduler) -> None:
        """Continue inside this phase: the saved optimizer and schedule, with this session's settings."""
        if self.recipe == "single":
            restore_optimizer(plan, model, optimizer, scheduler)
        else:
            _restore(optimizer, scheduler, plan.checkpoint)

    def announce(self, number: int, count: int, model, cfg: TrainConfig) -> str | None:
        """The line printed when a fine_tune phase starts (a single preset prints none)."""
        if self.recipe == "single":
            return None
        rates = self.block_lrs(model, cfg)
        spread = (f"{min(rates.values()):.3g} ({next(iter(rates))}) .. {self.lr:.3g} (head)" if rates
                  else f"{self.lr:.3g}")
        return (f"phase {number}/{count}: {self.preset}, epochs {self.first}-{self.last} of {cfg.epochs}, "
                f"peak lr {spread}, {cfg.phase_schedule} per batch")

    @staticmethod
    def close(scheduler) -> None:
        """Remove a per-batch schedule's hook from the optimizer when the phase ends."""
        if isinstance(scheduler, BatchSchedule):
            scheduler.close()


def run_phases(cfg: TrainConfig, resume: ResumePlan | None = None) -> list[Phase]:
    """The phases of a run (its config resolved), checked against the checkpoint it resumes."""
    if cfg.recipe != "fine_tune":
        return [Phase(cfg.freeze, 1, cfg.epochs, cfg.lr, recipe="single")]
    if resume is not None and _saved_recipe(resume) != "fine_tune":
        raise TLCourseError(f"{resume.path} was trained with recipe={_saved_recipe(resume)!r}; resume it without "
                            "--recipe fine_tune (or start a new fine_tune run)")
    plan = phases(cfg)
    if resume is not None:
        if not resume.in_place:
            raise TLCourseError(f"{resume.path} is not the newest checkpoint of its fine_tune run; resume from the "
                                "run's latest.pt (continuing an older one would overwrite the later epochs)")
        _check_resume(resume.checkpoint, cfg, plan, resume.path)
    return plan


def _saved_recipe(resume: ResumePlan) -> str:
    return (resume.checkpoint.get("config") or {}).get("recipe", "single")


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

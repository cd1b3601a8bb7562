"""Resuming a run: which settings may change, where the run continues, and restoring its state.

The policy, so that a checkpoint never records something that did not happen:

* **Where.** Resuming from the run folder's newest checkpoint (its ``latest.pt``, or a file that
  holds the same epoch) continues in that folder. Resuming from an older one (``best_acc.pt`` of
  epoch 4 when ``latest.pt`` holds epoch 6) starts a *new* run folder next to the old one, with
  the old history up to epoch 4: the old run is never rewound or truncated.
* **What may change.** Settings that define the saved model or the run's random stream
  (:data:`FIXED`: arch, weights, head, freeze, image size, optimizer and scheduler kind, seed,
  run name and folder) are refused with one line. The others (epochs, lr, batch size, data
  folder…) apply from the next epoch; the learning rate, weight decay and momentum are written
  into the restored optimizer (and the scheduler's base rates), so ``--lr 0.5`` really trains at
  0.5 and the saved config says so.
* **Before any work.** The folder the run will write to must be writable, and the data folder
  must exist (``--data-dir`` points a resume at a moved dataset).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from . import TLCourseError
from .checkpoints import (
    ARGS_JSON,
    LATEST,
    OUTPUT_DIR_FIX,
    check_resumable,
    load_checkpoint,
    new_run_dir,
)
from .config import PRESET_DEFAULTS, TrainConfig
from .data import resolve_data_dir
from .device import restore_rng_state
from .files import ensure_writable, write_json
from .optim import param_groups
from .settings import checkpoints_root

#: Settings a resume cannot change: they define the saved model, its folder or its random stream.
FIXED = ("arch", "weights", "head", "dropout", "freeze", "image_size", "optimizer", "scheduler", "seed",
         "run_name", "output_dir")
#: Settings written into the restored optimizer (and scheduler) when they change.
OPTIMIZER = ("lr", "head_lr_mult", "weight_decay", "momentum")
SCHEDULE = ("epochs", "step_size", "gamma")


@dataclass
class ResumePlan:
    path: Path
    checkpoint: dict
    saved: TrainConfig                  # the run's settings as its checkpoint recorded them
    config: TrainConfig                 # the settings this session trains with
    changed: dict[str, tuple]           # name -> (saved value, new value)
    run_dir: Path                       # the checkpoint's folder
    in_place: bool                      # continue there (else: a new run folder beside it)

    @property
    def epoch(self) -> int:
        return self.checkpoint["epoch"]


def plan_resume(path: str | Path, checkpoint: dict, config: TrainConfig | None = None,
                overrides: dict | None = None) -> ResumePlan:
    """Check everything a resume needs before any data is loaded or any epoch is trained."""
    path = Path(path)
    check_resumable(checkpoint, path)
    try:
        saved = TrainConfig.from_dict(checkpoint["config"]).validate().resolved()
    except TLCourseError as exc:
        raise TLCourseError(f"checkpoint {path} holds invalid settings ({exc}); the file is damaged") from None
    cfg = (config or saved).replace(**(overrides or {})).validate()
    # A recipe field left at None means "as the run had it", not the preset's default of today.
    recipe = {name for values in PRESET_DEFAULTS.values() for name in values}
    cfg = cfg.replace(**{name: getattr(saved, name) for name in recipe if getattr(cfg, name) is None}).resolved()
    changed = {f.name: (getattr(saved, f.name), getattr(cfg, f.name)) for f in fields(TrainConfig)
               if getattr(saved, f.name) != getattr(cfg, f.name)}
    fixed = [f"{name}={new!r} (the run has {old!r})" for name, (old, new) in changed.items() if name in FIXED]
    if fixed:
        raise TLCourseError(f"cannot change on resume: {', '.join(fixed)}; they define the saved model and its run, "
                            "so leave them out to continue it, or start a new run without --resume")
    data = resolve_data_dir(cfg.data_dir)
    if not data.exists():
        raise TLCourseError(f"{data}: the run's data folder does not exist any more; to resume on the same dataset "
                            "in its new place pass --data-dir NEW_FOLDER (data_dir=...)")
    run_dir = path.resolve().parent
    in_place = _is_newest(path, run_dir / LATEST, checkpoint["epoch"])
    if in_place:
        ensure_writable(run_dir, f"the resumed epochs could not be saved there; make it writable, or copy the run "
                                 f"folder somewhere writable and resume from the copy's {LATEST}")
    else:
        if cfg.epochs <= checkpoint["epoch"]:
            raise TLCourseError(f"{path} holds epoch {checkpoint['epoch']} and epochs={cfg.epochs}: nothing to train; "
                                "pass a larger --epochs (epochs=...)")
        ensure_writable(_branch_root(run_dir, cfg), OUTPUT_DIR_FIX)
    return ResumePlan(path, checkpoint, saved, cfg, changed, run_dir, in_place)


def _is_newest(path: Path, latest: Path, epoch: int) -> bool:
    if not latest.is_file():
        return False
    if path.resolve() == latest.resolve() or path.samefile(latest):
        return True
    try:
        return load_checkpoint(latest)["epoch"] == epoch
    except TLCourseError:  # a damaged latest.pt: do not write into that run
        return False


def _branch_root(run_dir: Path, cfg: TrainConfig) -> Path:
    """Where the new run folder of a resume from an older checkpoint goes: beside its run folder."""
    if (run_dir / ARGS_JSON).is_file():
        return run_dir.parent
    return Path(cfg.output_dir).expanduser() if cfg.output_dir else checkpoints_root()


def restore_state(plan: ResumePlan, model, optimizer, scheduler, generator, log=print) -> None:
    """Load the optimizer, scheduler and random state, then apply the changed settings.

    Every process of a run does this; only one writes the folder (:func:`resume_folder`).
    """
    restore_optimizer(plan, model, optimizer, scheduler)
    restore_random(plan, generator)
    if plan.changed:
        log(changed_line(plan))


def restore_optimizer(plan: ResumePlan, model, optimizer, scheduler) -> None:
    """The saved optimizer and scheduler state, then the settings this session changed (:func:`apply_changes`)."""
    ckpt = plan.checkpoint
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError, IndexError, TypeError, RuntimeError) as exc:
        raise _damaged(plan, exc) from None
    apply_changes(plan, model, optimizer, scheduler)


def restore_random(plan: ResumePlan, generator) -> None:
    """The random state the checkpoint saved (Python, torch, the training loader's shuffle)."""
    try:
        restore_rng_state(plan.checkpoint["rng"], generator)
    except (ValueError, KeyError, IndexError, TypeError, RuntimeError) as exc:
        raise _damaged(plan, exc) from None


def changed_line(plan: ResumePlan) -> str:
    return "resuming with changed settings: " + ", ".join(f"{name} {old!r} -> {new!r}"
                                                          for name, (old, new) in plan.changed.items())


def _damaged(plan: ResumePlan, exc: BaseException) -> TLCourseError:
    return TLCourseError(f"checkpoint {plan.path}: its optimizer or random state does not fit the model "
                         f"({type(exc).__name__}); the file is damaged, use another checkpoint")


def resume_folder(plan: ResumePlan, args: dict, log=print) -> Path:
    """The folder the resumed run writes to (its own, or a new one for an older checkpoint).

    ``args`` is what ``args.json`` of a new run holds; a resume in place appends to the old one.
    """
    record = {"from": str(plan.path), "epoch": plan.epoch,
              "changed": {name: new for name, (_, new) in plan.changed.items()}}
    if plan.in_place:
        run_dir = plan.run_dir
        try:
            previous = json.loads((run_dir / ARGS_JSON).read_text())
        except (OSError, ValueError):
            previous = dict(args)
        write_json(previous | {"resumed": [*previous.get("resumed", []), record]}, run_dir / ARGS_JSON)
        return run_dir
    cfg = plan.config
    run_dir = new_run_dir(cfg.run_name or f"{cfg.arch}_{cfg.freeze}", _branch_root(plan.run_dir, cfg))
    write_json(args | {"resumed": [record]}, run_dir / ARGS_JSON)
    log(f"{plan.path} holds epoch {plan.epoch}, not the newest of {plan.run_dir}: continuing in a new run folder "
        f"{run_dir}; the old run is left as it is")
    return run_dir


def apply_changes(plan: ResumePlan, model, optimizer, scheduler) -> None:
    """Write changed lr / weight decay / momentum / schedule settings into the restored objects.

    ``optimizer.load_state_dict`` brings back the saved hyperparameters; without this a resume
    with ``lr=0.5`` would train at the old rate while its checkpoints claim 0.5.
    """
    changed = set(plan.changed) & set(OPTIMIZER + SCHEDULE)
    if not changed:
        return  # nothing touched: the resumed run equals an uninterrupted one bit for bit
    cfg = plan.config
    if changed & {"lr", "head_lr_mult"}:
        fresh = param_groups(model, cfg.lr, head_lr_mult=cfg.head_lr_mult)
        rate = {id(p): group["lr"] for group in fresh for p in group["params"]}
        for group in optimizer.param_groups:
            rates = {rate[id(p)] for p in group["params"] if id(p) in rate}
            if len(rates) != 1:
                raise TLCourseError(f"head_lr_mult={cfg.head_lr_mult} cannot change on this resume: the run trains "
                                    f"the head and the body in one optimizer group (head_lr_mult="
                                    f"{plan.saved.head_lr_mult}); leave it out or start a new run")
            group["lr"] = group["initial_lr"] = rates.pop()
    for group in optimizer.param_groups:
        if "weight_decay" in changed:
            group["weight_decay"] = cfg.weight_decay
        if "momentum" in changed and "momentum" in group:
            group["momentum"] = cfg.momentum
    cosine = hasattr(scheduler, "T_max")
    if scheduler is not None and changed & {"lr", "head_lr_mult", *(("epochs",) if cosine else ("step_size", "gamma"))}:
        if cosine:
            scheduler.T_max = max(1, cfg.epochs)  # "anneal to 0 over epochs": the new number of epochs
        else:
            scheduler.step_size, scheduler.gamma = cfg.step_size, cfg.gamma
        scheduler.base_lrs = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
        lrs = scheduled_lrs(scheduler)
        for group, lr in zip(optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs


def scheduled_lrs(scheduler) -> list[float]:
    """The rates the schedule gives after ``scheduler.last_epoch`` steps, from its base rates."""
    steps = scheduler.last_epoch
    if hasattr(scheduler, "T_max"):  # CosineAnnealingLR
        eta = scheduler.eta_min
        return [eta + (base - eta) * (1 + math.cos(math.pi * min(steps, scheduler.T_max) / scheduler.T_max)) / 2
                for base in scheduler.base_lrs]
    return [base * scheduler.gamma ** (steps // scheduler.step_size) for base in scheduler.base_lrs]


def check_classes(checkpoint: dict, class_names: list[str], data_dir, source) -> None:
    """A run resumes only on the classes it was trained on."""
    if checkpoint["class_names"] != class_names:
        raise TLCourseError(f"{source} was trained on classes {checkpoint['class_names']}, "
                            f"but {data_dir} has {class_names}; resume on the same dataset")

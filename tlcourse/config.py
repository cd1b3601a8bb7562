"""``TrainConfig``: every knob of a training run, declared once.

Each field carries its command-line help, its group and its bounds in ``metadata``. From that
one declaration come the validation (:meth:`TrainConfig.validate`: type, range, finiteness,
choices), the ``python -m tlcourse train`` options (:func:`add_config_arguments`, grouped like
timm's ``train.py``), ``args.json`` and the config stored in every checkpoint, so a new field
can never be missing from one of them. This module imports no torch: the CLI starts at once.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from . import TLCourseError
from .archs import ARCHS

HEADS = ("linear", "binary", "mlp")
PRESETS = ("head", "last_stage", "all")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "step", "cosine")
FAST_MODES = ("auto", "off", "features", "layer3", "decode")
FAST_DTYPES = ("float16", "float32")
PROGRESS = ("auto", "bar", "epoch", "none")
BAD_IMAGE_POLICIES = ("error", "skip")
RECIPES = ("single", "fine_tune")
UNFREEZE = ("last_stage", "all")
PHASE_SCHEDULES = ("one_cycle", "cosine")
#: What ``epochs``, ``lr``, ``scheduler``, ``label_smoothing`` and ``fast_views`` left at None mean:
#: the default recipe of each freeze preset, chosen from measurements on ants/bees and generated
#: datasets (``benchmarks/recipes.py``; README, "Defaults"). A head on cached features trains in a
#: fraction of a second per epoch, so it gets many epochs; ``all`` keeps the earlier defaults.
PRESET_DEFAULTS = {
    "head": {"epochs": 15, "lr": 3e-3, "scheduler": "cosine", "label_smoothing": 0.1, "fast_views": 1},
    "last_stage": {"epochs": 5, "lr": 3e-4, "scheduler": "cosine", "label_smoothing": 0.1, "fast_views": 4},
    "all": {"epochs": 5, "lr": 1e-3, "scheduler": "none", "label_smoothing": 0.0, "fast_views": 4},
}
#: The same for ``recipe="fine_tune"`` (``tlcourse.recipes``): its phases schedule themselves, and
#: ``fast_views`` stays None so that each phase takes its own preset's number of cached views.
RECIPE_DEFAULTS = {"fine_tune": {"epochs": 15, "lr": 1e-3, "scheduler": "none", "label_smoothing": 0.1}}

#: Largest square image side accepted: 1024 px already needs ~20x the memory of 224 px.
MAX_IMAGE_SIZE = 1024
#: Smallest ``image_size``: the networks downsample by 32, so below that the last stage sees
#: less than one pixel of the input.
MIN_IMAGE_SIZE = 32
MAX_RUN_NAME = 100
#: Most classes a head may have: ImageNet-21k has 21,841; a linear head of 100,000 classes on
#: ResNet-50's 2048 features already holds 205 M weights (820 MB).
MAX_CLASSES = 100_000
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def option(default: Any, help: str, group: str, *, choices=None, low: float | None = None,
           high: float | None = None, low_open: bool = False, high_open: bool = False, kind: type | None = None,
           optional: bool = False, check=None, cli: bool = True, hint: str = "") -> Any:
    """A dataclass field with what validation and the CLI need to know about it.

    ``low``/``high`` are inclusive unless ``low_open``/``high_open``; ``optional`` admits None;
    ``check(value)`` returns an error text or None; ``hint`` is appended to range errors.
    """
    meta = dict(help=help, group=group, choices=choices, low=low, high=high, low_open=low_open,
                high_open=high_open, kind=kind if kind is not None else type(default), optional=optional,
                check=check, cli=cli, hint=hint)
    return field(default=default, metadata=meta)


def _check_device(value: str) -> str | None:
    if not _DEVICE.match(value):
        return "is not a device name; use auto, cpu, cuda, cuda:N or mps"
    return None


def _check_run_name(value: str) -> str | None:
    if not value or any(c in value for c in "/\\\0") or value.startswith(".") or value in ("..",):
        return "must be a plain folder name such as 'resnet18_head'"
    if len(value) > MAX_RUN_NAME:
        return f"is {len(value)} characters long; use at most {MAX_RUN_NAME}"
    return None


def _check_image_size(value: int) -> str | None:
    if value < MIN_IMAGE_SIZE:
        return (f"is too small for the network: it downsamples by 32, use at least {MIN_IMAGE_SIZE} "
                "(the pretrained weights saw 224)")
    if value > MAX_IMAGE_SIZE:
        return (f"is too large: use at most {MAX_IMAGE_SIZE} (memory grows with the square of the side; "
                "the pretrained weights saw 224)")
    return None


def _check_text(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


def _check_output_dir(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        return "is a file; give a folder to hold the run folders"
    return None


def _check_weights(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if Path(value).expanduser().is_dir():
        return "is a folder; give a weights file (.pth), a torchvision weights name, or none"
    return None


@dataclass
class TrainConfig:
    """Every knob of a run; saved as ``args.json`` and inside each checkpoint."""

    # --- data
    data_dir: str | None = option(None, "ImageFolder root with train/ and val/ (default: data/hymenoptera_data)",
                                  "data", kind=str, optional=True, check=_check_text)
    bad_images: str = option("error", "unreadable images: error (stop, naming them) or skip (leave them out, "
                             "with one warning)", "data", choices=BAD_IMAGE_POLICIES)
    image_size: int = option(224, "square crop side in pixels (the pretrained weights saw 224)", "data",
                             check=_check_image_size)
    augment: bool = option(True, "random crops/flips/rotation for training (--no-augment: evaluation transforms)",
                           "data")
    batch_size: int = option(32, "images per batch (per process with --nproc-per-node)", "data", low=1, high=4096,
                             hint=" (typical: 16-64; lower it if memory runs out)")
    num_workers: int = option(0, "DataLoader worker processes", "data", low=0, high=64,
                              hint=" (0 loads in the main process)")
    subset: int | None = option(None, "at most N images per split (quick runs)", "data", kind=int, optional=True,
                                low=1, hint=" for all images")
    # --- model
    arch: str = option("resnet18", "torchvision architecture", "model", choices=ARCHS)  # live: the table
    weights: str | None = option("DEFAULT", "torchvision weights name (DEFAULT, IMAGENET1K_V1...), none, or a "
                                 "local .pth file", "model", kind=str, optional=True, check=_check_weights)
    head: str = option("linear", "new classifier head", "model", choices=HEADS)
    dropout: float = option(0.4, "dropout of the mlp head", "model", low=0, high=1, high_open=True)
    freeze: str = option("head", "what learns: head (feature extraction), last_stage (last stage + head), all",
                         "model", choices=PRESETS)
    bn_eval: bool = option(True, "frozen BatchNorm keeps its pretrained running statistics", "model")
    sync_bn: bool = option(False, "with several processes (torchrun): BatchNorm layers that train normalise over "
                           "the whole step's batch (SyncBatchNorm), not each process's share", "model")
    # --- optimizer and schedule
    epochs: int | None = option(None, "number of epochs", "optimizer", kind=int, optional=True, low=1, high=10_000)
    lr: float | None = option(None, "learning rate", "optimizer", kind=float, optional=True, low=0, low_open=True,
                              high=10,
                       hint=" (typical: 1e-3 for a new head, 1e-4 for fine-tuning)")
    head_lr_mult: float = option(1.0, "learning-rate multiplier for the new head (e.g. 10)", "optimizer",
                                 low=0, low_open=True, high=10_000)
    weight_decay: float = option(0.0, "weight decay (L2 penalty)", "optimizer", low=0, high=1)
    optimizer: str = option("adam", "optimizer", "optimizer", choices=OPTIMIZERS)
    momentum: float = option(0.9, "SGD momentum", "optimizer", low=0, high=1, high_open=True)
    scheduler: str | None = option(None, "learning-rate schedule", "optimizer", kind=str, optional=True,
                                   choices=SCHEDULERS)
    step_size: int = option(7, "epochs between StepLR decays (--scheduler step)", "optimizer", low=1, high=10_000)
    gamma: float = option(0.1, "StepLR decay factor (--scheduler step)", "optimizer", low=0, low_open=True,
                          high=1)
    label_smoothing: float | None = option(None, "label smoothing of the training loss", "optimizer", kind=float,
                                           optional=True, low=0, high=1, high_open=True)
    # --- the fine_tune recipe (tlcourse.recipes)
    recipe: str = option("single", "single: one phase with --freeze; fine_tune: the head alone for --freeze-epochs, "
                         "then --unfreeze with per-block learning rates (one run folder)", "optimizer",
                         choices=RECIPES)
    freeze_epochs: int = option(10, "fine_tune: epochs of head-only training before unfreezing (of --epochs in all)",
                                "optimizer", low=0, high=10_000)
    unfreeze: str = option("last_stage", "fine_tune: what learns after the head-only epochs", "optimizer",
                           choices=UNFREEZE)
    lr_mult: float = option(3.0, "fine_tune: the first unfrozen block learns lr_mult times slower than the head, "
                            "the blocks between spread geometrically (fastai's slice)", "optimizer", low=1, high=1e6)
    phase_schedule: str = option("one_cycle", "fine_tune: learning-rate schedule of each phase, stepped every batch",
                                 "optimizer", choices=PHASE_SCHEDULES)
    # --- speed
    fast: str = option("auto", "training path: auto picks a cached path when the frozen part allows it",
                       "speed", choices=FAST_MODES)
    fast_views: int | None = option(None, "with augmentation: cache K views per training image, the "
                                    "un-augmented one and K-1 augmented ones; epoch e trains on view (e-1) mod K "
                                    "(0: the plain loop)", "speed", kind=int, optional=True, low=0, high=64)
    fast_dtype: str = option("float16", "dtype of cached last-stage inputs", "speed", choices=FAST_DTYPES)
    cache: bool = option(True, "keep what the frozen layers compute on disk and reuse it in later runs "
                         "(--no-cache: compute it in memory for this run only)", "speed")
    cache_dir: str | None = option(None, "feature cache folder; None: $TLCOURSE_CACHE_DIR, else data/cache",
                                   "speed", kind=str, optional=True, check=_check_text)
    cache_workers: int | None = option(None, "DataLoader workers of the one-time caching pass; None: one per "
                                       "CPU core, at most 4", "speed", kind=int, optional=True, low=0, high=64)
    device: str = option("auto", "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps", "speed",
                         check=_check_device)
    amp: bool = option(False, "mixed precision (autocast; for GPUs)", "speed")
    channels_last: bool = option(False, "channels-last memory format (for GPUs)", "speed")
    compile: bool = option(False, "torch.compile the trained part (helps on GPUs)", "speed")
    # --- run
    seed: int = option(0, "random seed (shuffling, augmentation, head init)", "run", low=0, high=2**63 - 1)
    max_batches: int | None = option(None, "at most N batches per epoch (quick runs)", "run", kind=int,
                                     optional=True, low=1)
    run_name: str | None = option(None, "run folder prefix (default: <arch>_<freeze>)", "run", kind=str,
                                  optional=True, check=_check_run_name)
    output_dir: str | None = option(None, "where run folders go (default: checkpoints/)", "run", kind=str,
                                    optional=True, check=_check_output_dir)
    progress: str = option("auto", "auto, bar (progress bars), epoch (one line per epoch) or none", "run",
                           choices=PROGRESS)
    probe: bool = option(True, "fit a linear-probe baseline (logistic regression on the frozen pooled features) "
                         "and print it beside head-only and last_stage results", "run")

    def resolved(self) -> TrainConfig:
        """This config with the fields left at None taken from ``PRESET_DEFAULTS[freeze]``
        (or ``RECIPE_DEFAULTS[recipe]`` for a multi-phase recipe)."""
        table = RECIPE_DEFAULTS.get(self.recipe) or PRESET_DEFAULTS[self.freeze]
        missing = {k: v for k, v in table.items() if getattr(self, k) is None}
        return replace(self, **missing) if missing else self

    def validate(self) -> TrainConfig:
        """Check every field against its declaration; a ``TLCourseError`` names the first bad one."""
        for f in fields(self):
            check_field(f.name, getattr(self, f.name))
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """A config from a saved dict; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def replace(self, **changes) -> TrainConfig:
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TLCourseError(f"unknown setting(s) {', '.join(unknown)}; TrainConfig has "
                                f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **changes)


FIELDS = {f.name: f for f in fields(TrainConfig)}


# --------------------------------------------------------------------------- validation

def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + "..." + text[-12:]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _range(meta) -> str:
    parts = []
    if meta["low"] is not None:
        parts.append(f"{'>' if meta['low_open'] else '>='} {meta['low']}")
    if meta["high"] is not None:
        parts.append(f"{'<' if meta['high_open'] else '<='} {meta['high']}")
    return " and ".join(parts)


def _in_range(value, meta) -> bool:
    low, high = meta["low"], meta["high"]
    if low is not None and (value <= low if meta["low_open"] else value < low):
        return False
    return high is None or (value < high if meta["high_open"] else value <= high)


def check_field(name: str, value: Any) -> Any:
    """Validate one ``TrainConfig`` value against its declaration; return it or raise one line."""
    meta = FIELDS[name].metadata
    kind, hint = meta["kind"], meta["hint"]
    if value is None:
        if meta["optional"]:
            return value
        raise TLCourseError(f"{name}=None is not allowed; give a {kind.__name__}{hint}")
    if kind is bool:
        if not isinstance(value, bool):
            raise TLCourseError(f"{name}={_show(value)} must be True or False")
        return value
    if kind is int:
        if not _is_int(value) or not _in_range(value, meta):
            bounds = f" {_range(meta)}" if _range(meta) else ""
            raise TLCourseError(f"{name}={_show(value)} must be an integer{bounds}"
                                f"{', or None' if meta['optional'] else ''}{hint}")
    elif kind is float:
        if not (_is_int(value) or isinstance(value, float)):
            raise TLCourseError(f"{name}={_show(value)} must be a number {_range(meta)}{hint}")
        if not math.isfinite(value):
            raise TLCourseError(f"{name}={_show(value)} must be a finite number {_range(meta)}{hint}")
        if not _in_range(value, meta):
            raise TLCourseError(f"{name}={_show(value)} must be {_range(meta)}{hint}")
    elif kind is str and not isinstance(value, str):
        raise TLCourseError(f"{name}={_show(value)} must be a string")
    if meta["choices"] is not None and value not in meta["choices"]:
        verb = "is not a preset" if name == "freeze" else "is not supported"
        raise TLCourseError(f"{name}={_show(value)} {verb}; choose one of {', '.join(meta['choices'])}")
    if meta["check"] is not None:
        problem = meta["check"](value)
        if problem:
            raise TLCourseError(f"{name}={_show(value)} {problem}")
    return value


# --------------------------------------------------------------------------- the command line

#: What ``--weights none`` parses to, so that "given as None" differs from "not given".
NONE_GIVEN = type("NoneGiven", (), {"__repr__": lambda self: "None"})()

GROUPS = {"data": "data", "model": "model and freezing", "optimizer": "optimizer and schedule",
          "speed": "speed and device", "run": "run folder and output"}


def _converter(name: str):
    """argparse ``type=``: text → value, checked by :func:`check_field` (one-line argparse error)."""
    meta = FIELDS[name].metadata

    def convert(text: str):
        kind = meta["kind"]
        if kind is str and meta["optional"] and text.lower() == "none" and "none" not in (meta["choices"] or ()):
            return NONE_GIVEN  # "--weights none": None is a value, not "not given" ("--scheduler none": a choice)
        elif kind is int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name}={text!r} must be an integer") from None
        elif kind is float:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name}={text!r} must be a number") from None
        else:
            value = text
        try:
            return check_field(name, value)
        except TLCourseError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per ``TrainConfig`` field, grouped; every default is None (= not given)."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in fields(TrainConfig):
        meta = f.metadata
        if not meta["cli"]:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if default is None and f.name in PRESET_DEFAULTS["head"]:
            default = ", ".join(f"{preset} {values[f.name]}" for preset, values in PRESET_DEFAULTS.items())
        help_text = f"{meta['help']} (default: {default})"
        group = groups[meta["group"]]
        if meta["kind"] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=_converter(f.name), default=None, help=help_text,
                               choices=None, metavar=("{" + ",".join(meta["choices"]) + "}") if meta["choices"]
                               else f.name.upper())


def config_overrides(args: argparse.Namespace) -> dict:
    """The ``TrainConfig`` fields the user typed on the command line."""
    typed = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig) if f.metadata["cli"]}
    return {name: (None if value is NONE_GIVEN else value) for name, value in typed.items() if value is not None}


def config_arguments(overrides: dict) -> list[str]:
    """The ``train`` options that give ``overrides`` back (the inverse of :func:`config_overrides`).

    ``python -m tlcourse train --nproc-per-node N`` passes a run's settings on to its workers so.
    """
    argv: list[str] = []
    for name, value in overrides.items():
        flag, kind = "--" + name.replace("_", "-"), FIELDS[name].metadata["kind"]
        if kind is bool:
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is None:
            if kind is str:                  # "--weights none"; an int left at None is its default
                argv.append(f"{flag}=none")
        else:                                # --flag=value: a value may start with "-"
            argv.append(f"{flag}={repr(value) if isinstance(value, float) else value}")
    return argv

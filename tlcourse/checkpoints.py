"""Run folders and checkpoints: atomic saves, safe loads, and the three ways to save a model.

A checkpoint is a plain dict of tensors and simple values, so ``torch.load(weights_only=True)``
(the safe loader, PyTorch's default since 2.6) can read it: it cannot run code from the file.
The full-model pickle (``torch.save(model)``) is kept only as the course's "brittle" example and
needs an explicit ``trust=True`` to load.
"""

from __future__ import annotations

import math
import pickle
from datetime import datetime
from pathlib import Path

import torch
import torchvision
from torch import nn

from . import TLCourseError, __version__
from .archs import ARCHS
from .config import HEADS, MAX_CLASSES, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from .files import (
    DISK_FULL_ERRNOS,
    NOT_WRITABLE_ERRNOS,
    atomic_write,
    ensure_writable,
    link_or_copy_into_place,
    os_error_in,
    remove_stale_temp,
)
from .history import write_history
from .settings import checkpoints_root

FORMAT = "tlcourse-checkpoint"
FORMAT_VERSION = 1
#: The files of a run folder; every module takes the names from here.
LATEST, BEST_ACC, BEST_LOSS = "latest.pt", "best_acc.pt", "best_loss.pt"
CHECKPOINT_FILES = (LATEST, BEST_ACC, BEST_LOSS)
#: Which file each "best" mark of an epoch goes to.
BEST_FILES = {"best_acc": BEST_ACC, "best_loss": BEST_LOSS}
ARGS_JSON = "args.json"
OUTPUT_DIR_FIX = "choose a folder you can write to for the run folders (--output-dir, output_dir=...)"


# --------------------------------------------------------------------------- run folders

def new_run_dir(run_name: str, root: str | Path | None = None, *, now: datetime | None = None) -> Path:
    """Create ``<root>/<run_name>_<YYYYmmdd-HHMMSS>/``; never reuse an existing folder.

    If two runs start in the same second the second gets a ``-2`` suffix: an earlier run is
    never overwritten silently.
    """
    root = Path(root) if root is not None else checkpoints_root()
    if not run_name or any(c in run_name for c in "/\\") or run_name.startswith("."):
        raise TLCourseError(f"run_name={run_name!r} must be a plain folder name such as 'resnet18_head'")
    ensure_writable(root, OUTPUT_DIR_FIX)
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        suffix = "" if attempt == 1 else f"-{attempt}"
        path = root / f"{run_name}_{stamp}{suffix}"
        try:
            path.mkdir()  # atomic: fails if another run already created it
            return path
        except FileExistsError:
            continue
    raise TLCourseError(f"could not create a new run folder for {run_name!r} in {root}")


# --------------------------------------------------------------------------- atomic saves

def save_checkpoint(checkpoint: dict, path: str | Path) -> Path:
    return atomic_write(path, lambda fh: torch.save(checkpoint, fh))


def save_checkpoint_as(checkpoint: dict, paths: list[Path]) -> None:
    """Serialise ``checkpoint`` once and place it at every path in order, each atomically.

    An epoch that is both the best and the latest would otherwise be written up to three times
    (~45 MB each for ResNet-18). The extra names are hard links (a copy where links are not
    supported); replacing one file later never changes the others.
    """
    first, *rest = [Path(p) for p in paths]
    save_checkpoint(checkpoint, first)
    for path in rest:
        link_or_copy_into_place(first, path)


# --------------------------------------------------------------------------- building checkpoints

def versions() -> dict[str, str]:
    # str(): torch.__version__ is a TorchVersion object, which the safe loader does not accept.
    return {"torch": str(torch.__version__), "torchvision": str(torchvision.__version__), "tlcourse": __version__}


def make_checkpoint(model: nn.Module, *, epoch: int, class_names: list[str], spec: dict, freeze: str,
                    image_size: int, mean, std, metrics: dict, optimizer=None, scheduler=None,
                    history: list | None = None, best: dict | None = None, config: dict | None = None,
                    rng: dict | None = None) -> dict:
    """Everything needed to rebuild the model for inference, and to resume training."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "class_names": list(class_names),
        "arch": spec["arch"],
        "head": spec["head"],
        "head_kwargs": dict(spec.get("head_kwargs") or {}),
        "num_classes": spec["num_classes"],
        "weights": spec.get("weights"),
        "freeze": freeze,
        "image_size": image_size,
        "normalization": {"mean": list(mean), "std": list(std)},
        "metrics": dict(metrics),
        "best": dict(best or {}),
        "history": list(history or []),
        "config": dict(config or {}),
        "rng": rng or {},
        "versions": versions(),
    }


class CheckpointSaver:
    """Writes a run folder after each epoch, as timm's ``CheckpointSaver`` does.

    ``latest.pt`` every epoch; ``best_acc.pt`` / ``best_loss.pt`` when the epoch is the best
    so far by that measure (one serialisation, hard links for the other names); then the history
    files, so the history never lists an epoch whose checkpoint was not written. ``meta`` holds
    what the checkpoint records besides the model: ``class_names``, ``freeze``, ``image_size``,
    ``config`` (and optionally ``mean``/``std``).
    """

    def __init__(self, run_dir: str | Path, *, class_names: list[str], freeze: str, image_size: int,
                 config: dict | None = None, mean=None, std=None):
        from .data import IMAGENET_MEAN, IMAGENET_STD

        self.run_dir = Path(run_dir)
        self.class_names = list(class_names)
        self.freeze, self.image_size, self.config = freeze, image_size, dict(config or {})
        self.mean, self.std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
        self.saved_epoch: int | None = None   # the epoch latest.pt holds
        remove_stale_temp(self.run_dir)        # ".latest.pt.tmp-<pid>" of a killed earlier run

    @property
    def latest(self) -> Path:
        return self.run_dir / LATEST

    def save(self, model: nn.Module, *, history: list[dict], best: dict, marks: list[str], optimizer=None,
             scheduler=None, rng: dict | None = None) -> None:
        """Save the last epoch of ``history``; ``marks`` are its ``best_acc``/``best_loss`` titles."""
        row = history[-1]
        spec = getattr(model, "tlcourse_spec", None)
        if not isinstance(spec, dict) or "arch" not in spec:
            raise TLCourseError("the model has no tlcourse_spec (arch, head, classes); build it with "
                                "tlcourse.models.build_model so that its checkpoints can be rebuilt")
        metrics = {k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")}
        checkpoint = make_checkpoint(
            model, epoch=row["epoch"], class_names=self.class_names, spec=spec, freeze=self.freeze,
            image_size=self.image_size, mean=self.mean, std=self.std, metrics=metrics, optimizer=optimizer,
            scheduler=scheduler, history=history, best=best, config=self.config, rng=rng)
        # Best files first, latest last: if the process dies in between, latest.pt is the older
        # one and a resume simply repeats this epoch.
        try:
            save_checkpoint_as(checkpoint, [self.run_dir / BEST_FILES[m] for m in marks] + [self.latest])
            self.saved_epoch = row["epoch"]
            write_history(history, self.run_dir)
        except Exception as exc:
            error = self._save_failed(row["epoch"], exc)
            if error is None:
                raise
            raise error from exc

    def _save_failed(self, epoch: int, exc: Exception) -> TLCourseError | None:
        """A one-line error for a full disk or a folder that became read-only; None for other failures."""
        full, locked = os_error_in(exc, DISK_FULL_ERRNOS), os_error_in(exc, NOT_WRITABLE_ERRNOS)
        if full is None and locked is None:
            return None
        what = "disk full" if full is not None else f"cannot write ({locked.strerror})"
        fix = "free some space" if full is not None else "make the folder writable"
        if self.saved_epoch:
            epochs = self.config.get("epochs", self.saved_epoch + 1)
            kept = (f"nothing saved is lost: {self.latest} holds epoch {self.saved_epoch}; {fix} and resume with: "
                    f"python -m tlcourse train --resume {self.latest} --epochs {epochs}")
        else:
            kept = f"nothing was saved yet; {fix} and run again"
        return TLCourseError(f"{what} while saving epoch {epoch} in {self.run_dir}; {kept}")


# --------------------------------------------------------------------------- loading

def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a tlcourse checkpoint dict with the safe loader (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        raise TLCourseError(f"{path} is a folder; pass a file such as {path / 'best_acc.pt'}")
    if not path.is_file():
        raise TLCourseError(f"checkpoint {path} does not exist; look in checkpoints/<run>/ for best_acc.pt")
    if path.stat().st_size == 0:
        raise TLCourseError(f"checkpoint {path} is empty (0 bytes): it was never fully written; use another checkpoint")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TLCourseError(
            f"checkpoint {path} holds Python objects, not just tensors (a full-model pickle, or a file "
            "that would run code), so the safe loader refused it; if you made it yourself, use "
            "tlcourse.checkpoints.load_full_model(path, trust=True)"
        ) from exc
    except Exception as exc:  # RuntimeError, EOFError, BadZipFile, IndexError...: any damage
        raise TLCourseError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}); use another checkpoint "
            "from the run folder (latest.pt / best_acc.pt / best_loss.pt)"
        ) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise TLCourseError(
                f"{path} is a bare state_dict, not a checkpoint dict; rebuild the model with "
                "build_model(...) and call model.load_state_dict(torch.load(path, weights_only=True))"
            )
        raise TLCourseError(f"{path} is not a tlcourse checkpoint (no 'format': {FORMAT!r} entry)")
    check_checkpoint(obj, path)
    return obj


# --------------------------------------------------------------------------- what a checkpoint must hold

#: Keys every checkpoint needs to be rebuilt for inference, and their types.
REQUIRED = {"format_version": int, "model": dict, "epoch": int, "class_names": list, "arch": str, "head": str,
            "num_classes": int, "image_size": int}
#: Keys a resume needs besides those.
FOR_RESUME = {"optimizer": dict, "history": list, "rng": dict, "config": dict, "freeze": str}
#: Head options a checkpoint may carry (``make_head``'s keywords) and their bounds.
HEAD_KWARGS = {"dropout": (0.0, 1.0), "hidden": (1, 65_536)}


def _kind(value) -> str:
    return type(value).__name__


def check_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> dict:
    """Check the contents against what tlcourse writes, with a one-line error for the first gap.

    A crafted or damaged file must not reach ``build_model`` with a missing arch, nor report
    accuracy against class names that do not match the head's outputs.
    """
    where = f"checkpoint {path}"
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise TLCourseError(f"{where} lacks {', '.join(map(repr, missing))}: it was not written by tlcourse's "
                            "CheckpointSaver (or is damaged); use a checkpoint from a run folder")
    for key, kind in REQUIRED.items():
        value = ckpt[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TLCourseError(f"{where}: {key!r} is a {_kind(value)}, expected {kind.__name__}; "
                                "the file is damaged")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise TLCourseError(f"{where} has format version {ckpt['format_version']}, newer than this tlcourse "
                            f"({__version__}, version {FORMAT_VERSION}); upgrade tlcourse")
    if ckpt["arch"] not in ARCHS:
        raise TLCourseError(f"{where}: arch {ckpt['arch']!r} is not one tlcourse builds ({', '.join(ARCHS)})")
    if ckpt["head"] not in HEADS:
        raise TLCourseError(f"{where}: head {ckpt['head']!r} is not one of {', '.join(HEADS)}")
    names, n = ckpt["class_names"], ckpt["num_classes"]
    if not 2 <= n <= MAX_CLASSES:
        raise TLCourseError(f"{where}: num_classes={n} is outside 2..{MAX_CLASSES:,}; the file is damaged")
    if not all(isinstance(c, str) for c in names) or len(set(names)) != len(names):
        raise TLCourseError(f"{where}: class_names must be distinct strings; the file is damaged")
    if len(names) != n:
        raise TLCourseError(f"{where} lists {len(names)} class names for a head of {n} classes; predictions "
                            "would be named wrongly: use the checkpoint the run folder wrote")
    if not MIN_IMAGE_SIZE <= ckpt["image_size"] <= MAX_IMAGE_SIZE:
        raise TLCourseError(f"{where}: image_size={ckpt['image_size']} is outside "
                            f"{MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}; the file is damaged")
    if ckpt["epoch"] < 0:
        raise TLCourseError(f"{where}: epoch={ckpt['epoch']} is negative; the file is damaged")
    state = ckpt["model"]
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise TLCourseError(f"{where}: 'model' is not a state_dict of tensors; the file is damaged")
    head = ARCHS[ckpt["arch"]].head + "."
    weights = [v for k, v in state.items() if k.startswith(head) and k.endswith(".weight") and v.ndim == 2]
    outputs = weights[-1].shape[0] if weights else None
    expected = 1 if ckpt["head"] == "binary" else n
    if outputs != expected:
        raise TLCourseError(f"{where}: its {ckpt['head']} head has {outputs} outputs, but the checkpoint says "
                            f"{n} classes; the file is damaged or was edited")
    kwargs = ckpt.get("head_kwargs", {})
    if not isinstance(kwargs, dict) or any(
            k not in HEAD_KWARGS or isinstance(v, bool) or not isinstance(v, int if k == "hidden" else (int, float))
            or not math.isfinite(v) or not HEAD_KWARGS[k][0] <= v <= HEAD_KWARGS[k][1] for k, v in kwargs.items()):
        raise TLCourseError(f"{where}: head_kwargs {kwargs!r} are not options tlcourse's heads take; "
                            "the file is damaged")
    return ckpt


def check_resumable(ckpt: dict, path: str | Path = "checkpoint") -> dict:
    """Also the training state (optimizer, history, random state, config) a resume needs."""
    missing = [k for k, kind in FOR_RESUME.items() if not isinstance(ckpt.get(k), kind)]
    if missing:
        raise TLCourseError(f"checkpoint {path} cannot be resumed: it lacks {', '.join(map(repr, missing))} "
                            "(saved for inference only, or damaged); it still works for predict")
    history = ckpt["history"]
    wanted = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")
    if [r.get("epoch") if isinstance(r, dict) else None for r in history] != list(range(1, ckpt["epoch"] + 1)) \
            or not all(isinstance(r.get(k), (int, float)) for r in history for k in wanted):
        raise TLCourseError(f"checkpoint {path} cannot be resumed: its history does not list epochs "
                            f"1..{ckpt['epoch']} with their losses and accuracies; the file is damaged")
    return ckpt


def load_model_state(model: nn.Module, state: dict, source: str = "checkpoint") -> nn.Module:
    """``load_state_dict`` with a one-line explanation when the architecture does not match."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        detail = (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} of another shape"
                  f" (first: {(mismatched or missing or unexpected)[0]}")
        if mismatched:
            k = mismatched[0]
            detail += f" {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        raise TLCourseError(
            f"{source} does not fit this model: {detail}); build the model with the checkpoint's own "
            "arch, head and number of classes (model_from_checkpoint does this)"
        )
    model.load_state_dict(state)
    return model


def model_from_checkpoint(checkpoint: dict | str | Path, device: str | torch.device = "cpu", *,
                          source: str | None = None) -> nn.Module:
    """Rebuild the exact model a checkpoint was trained as (no download needed) in eval mode.

    ``predict``, ``interpret`` and resuming in ``engine.train`` all rebuild models here.
    """
    from .models import build_model

    source = source or (str(checkpoint) if not isinstance(checkpoint, dict) else "checkpoint")
    ckpt = check_checkpoint(checkpoint, source) if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
    model = build_model(ckpt["arch"], ckpt["num_classes"], weights=None, head=ckpt["head"],
                        **ckpt.get("head_kwargs", {}))
    load_model_state(model, ckpt["model"], source)
    model.tlcourse_spec["weights"] = ckpt.get("weights")
    return model.to(device).eval()


# --------------------------------------------------------------------------- the other two ways

def save_state_dict(model: nn.Module, path: str | Path) -> Path:
    """Weights only: the smallest, most portable file; the code must rebuild the architecture."""
    return atomic_write(path, lambda fh: torch.save(model.state_dict(), fh))


def save_full_model(model: nn.Module, path: str | Path) -> Path:
    """The brittle way: pickles the model object, so loading needs the same classes and code."""
    return atomic_write(path, lambda fh: torch.save(model, fh))


def load_full_model(path: str | Path, *, trust: bool = False, map_location: str | torch.device = "cpu") -> nn.Module:
    """Unpickle a whole model object. Unpickling can execute arbitrary code, hence ``trust``."""
    if not trust:
        raise TLCourseError(
            f"{path} would be loaded with pickle, which can run arbitrary code; pass trust=True only "
            "for files you created yourself (prefer state_dicts or checkpoint dicts)"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError as exc:
        raise TLCourseError(f"model file {path} does not exist") from exc
    except (AttributeError, ModuleNotFoundError) as exc:
        raise TLCourseError(
            f"{path} was pickled with code that is not importable here ({exc}); this is why full-model "
            "pickles are brittle: save a state_dict or checkpoint dict instead"
        ) from exc

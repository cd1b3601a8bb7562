"""Pick a device (CUDA, then Apple MPS, then CPU), seed every random number generator, and
save and restore their state (so a resumed run draws the same numbers as an uninterrupted one)."""

from __future__ import annotations

import os
import random

import torch

from . import TLCourseError


def select_device(preferred: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` picks CUDA, then MPS, then CPU; anything else is taken as asked.

    Asking for a device that is not there is an error rather than a silent fall-back, so a
    learner who typed ``cuda`` learns that their GPU is not visible.
    """
    if preferred is None or str(preferred) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preferred)
    except (RuntimeError, TypeError) as exc:
        raise TLCourseError(
            f"device={preferred!r} is not a device name; use auto, cpu, cuda, cuda:N or mps"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TLCourseError("device='cuda' was asked for but no CUDA GPU is visible; use device='auto' or 'cpu'")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise TLCourseError("device='mps' was asked for but Apple MPS is not available; use device='auto' or 'cpu'")
    return device


def seed_everything(seed: int, deterministic: bool = True) -> torch.Generator:
    """Seed Python, torch (CPU and CUDA) and return a torch Generator for data shuffling.

    With ``deterministic`` the CPU path gives bit-identical runs for the same seed; cuDNN is
    told to prefer deterministic kernels too (slower, and still not guaranteed on every GPU op).
    """
    random.seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:  # numpy comes with torch's extras, but is not required
        pass
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


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

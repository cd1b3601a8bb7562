"""Where this process stands: started by torchrun or not, its rank, the collectives' timeout, seeds per rank."""

from __future__ import annotations

import hashlib
import os
import random

import torch

from .. import TLCourseError
from ..settings import DIST_TIMEOUT_DEFAULT, ENV_DIST_TIMEOUT

#: Set by :func:`launch` for its workers: they leave printing their error to the launcher.
ENV_LAUNCHED = "TLCOURSE_LAUNCHED"


def under_torchrun() -> bool:
    """True in a process started by torchrun (or with ``RANK``/``WORLD_SIZE`` set by hand)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def process_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints and writes files."""
    return process_rank() == 0


def timeout_seconds() -> int:
    text = os.environ.get(ENV_DIST_TIMEOUT, "").strip()
    if not text:
        return DIST_TIMEOUT_DEFAULT
    if not text.isdigit() or int(text) < 1:
        raise TLCourseError(f"{ENV_DIST_TIMEOUT}={text!r} must be a whole number of seconds >= 1")
    return int(text)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A seed for (run seed, epoch, rank): different on every rank, the same when resumed."""
    digest = hashlib.sha256(f"tlcourse:{seed}:{epoch}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_process(value: int) -> None:
    torch.manual_seed(value)
    random.seed(value)

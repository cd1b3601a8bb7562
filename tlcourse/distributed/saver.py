"""Checkpoints with several processes: rank 0 writes, every rank learns whether it worked."""

from __future__ import annotations

from torch import nn

from .. import TLCourseError
from .group import Group


class MainOnlySaver:
    """A ``CheckpointSaver`` for several processes: rank 0 writes, then every rank learns whether it worked.

    The agreement is an all-reduce that also acts as the barrier after each write: no rank starts
    the next epoch before ``latest.pt`` is complete, and a failed write stops every rank.
    """

    def __init__(self, saver, group: Group):
        self.saver, self.group = saver, group

    def __getattr__(self, name):
        return getattr(self.saver, name)

    def save(self, model: nn.Module, **kwargs) -> None:
        error = None
        if self.group.is_main:
            try:
                self.saver.save(model, **kwargs)
            except Exception as exc:
                error = exc
        ok = self.group.agree(error is None)
        if error is not None:
            raise error
        epoch = kwargs["history"][-1]["epoch"]
        if not ok:
            raise TLCourseError(f"rank 0 could not write the checkpoint of epoch {epoch} in {self.saver.run_dir}")
        self.saver.saved_epoch = epoch

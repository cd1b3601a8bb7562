"""The process group: join and leave it, the few collectives training needs, and what DDP changes in a run."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from .. import TLCourseError
from ..loops import FitHooks
from .batchnorm import CPUSyncBatchNorm, training_batchnorms
from .errors import describe_error
from .process import timeout_seconds, under_torchrun
from .samplers import EvalShard, ShuffledShards, loader_with

#: Largest piece of a cache all-gathered at once (bounds the extra memory, e.g. on a GPU).
GATHER_BYTES = 256 * 1024**2


class Group:
    """This process's place among the ranks, and the few collectives training needs."""

    def __init__(self, rank: int, world: int, local_rank: int):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device: torch.device | None = None
        self.backend: str | None = None
        self.owns_group = False
        self._swapped: list[tuple[nn.Module, type]] = []

    @classmethod
    def from_env(cls) -> Group:
        try:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise TLCourseError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers; start the processes "
                                "with torchrun (or python -m tlcourse train --nproc-per-node N)") from None
        return cls(rank, world, local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where collective tensors must live: the GPU for nccl, the CPU for gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    # -------------------------------------------------------------- start / stop

    def device_for(self, name: str) -> torch.device:
        """One device per process: ``cuda:LOCAL_RANK`` with CUDA, else the CPU."""
        name = str(name)
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cpu":
            return torch.device("cpu")
        if name == "cuda":
            if not torch.cuda.is_available():
                raise TLCourseError("device='cuda' was asked for but no CUDA GPU is visible; use --device cpu "
                                    "(gloo) or auto")
            if self.local_rank >= torch.cuda.device_count():
                raise TLCourseError(f"process LOCAL_RANK={self.local_rank} needs its own GPU but only "
                                    f"{torch.cuda.device_count()} are visible; start at most "
                                    f"{torch.cuda.device_count()} processes per machine (--nproc-per-node)")
            return torch.device("cuda", self.local_rank)
        if name.startswith("cuda:"):
            raise TLCourseError(f"device={name!r} names one GPU, but with several processes each one uses "
                                "cuda:LOCAL_RANK; pass --device cuda (or auto)")
        raise TLCourseError(f"device={name!r} has no distributed backend; several processes run on CUDA GPUs "
                            "(nccl) or on the CPU (gloo): pass --device cuda or cpu")

    def start(self, device_name: str) -> torch.device:
        """Join the process group (``nccl`` for CUDA, ``gloo`` for the CPU) and return this rank's device."""
        device = self.device_for(device_name)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if dist.is_initialized():
            # Someone (a user script) set the group up: use it as it is, and leave it to them.
            if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.world):
                raise TLCourseError("the process group does not match RANK/WORLD_SIZE of this process")
            backend = dist.get_backend()
        else:
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds()),
                                    device_id=device if device.type == "cuda" else None)
            self.owns_group = True
        self.device, self.backend = device, backend
        if not self.is_main:
            warnings.simplefilter("ignore")   # rank 0 shows each warning once
        return device

    def close(self) -> None:
        """Give back the BatchNorm classes swapped by :meth:`prepare_model`; leave the group we joined."""
        for module, cls in reversed(self._swapped):
            module.__class__ = cls
        self._swapped.clear()
        if self.owns_group and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:   # a peer already gone: nothing left to tear down cleanly
                pass
        self.owns_group = False

    # -------------------------------------------------------------- collectives

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def agree(self, ok: bool) -> bool:
        """True on every rank if ``ok`` was true on every rank (a barrier that carries a verdict)."""
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=self.comm_device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def on_main(self, fn: Callable, what: str, *, share: bool = True):
        """Run ``fn`` on rank 0 only; every rank gets its result (None elsewhere unless ``share``).

        If it fails, every rank raises: rank 0 its own error, the others one line with its reason.
        """
        box, error, result = [None], None, None
        if self.is_main:
            try:
                result = fn()
                box = [("ok", result if share else None)]
            except Exception as exc:
                error = exc
                box = [("error", describe_error(exc)[0])]
        dist.broadcast_object_list(box, src=0, device=self.comm_device)
        if error is not None:
            raise error
        kind, value = box[0]
        if kind == "error":
            raise TLCourseError(f"rank 0 could not {what}: {value}")
        return result if self.is_main else value

    def reduce_stats(self, stats: dict) -> dict:
        """Mean loss and accuracy over every rank's images, from each rank's sums (each image once)."""
        n = stats["images"]
        sums = torch.tensor([stats["loss"] * n, round(stats["acc"] * n), n, stats.get("batches", 0)],
                            dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(sums)
        loss_sum, correct, images, batches = sums.tolist()
        out = dict(stats, loss=loss_sum / images, acc=correct / images, images=round(images))
        if "batches" in stats:
            out["batches"] = round(batches)
        return out

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) everywhere, so every rank evaluates rank 0's model."""
        for buffer in module.buffers():
            if self.backend == "nccl" and buffer.device != self.device:
                continue
            dist.broadcast(buffer.data, src=0)

    def gather_rows(self, part: torch.Tensor, total: int) -> torch.Tensor:
        """Rows ``r, r + W, ...`` held by each rank ``r`` -> the whole ``(total, ...)`` tensor, on every rank."""
        per = -(-total // self.world)
        padded = torch.zeros((per, *part.shape[1:]), dtype=part.dtype)
        padded[:len(part)] = part
        row_bytes = max(1, padded[0].numel() * padded.element_size() * self.world)
        step = max(1, GATHER_BYTES // row_bytes)
        full = torch.empty((total, *part.shape[1:]), dtype=part.dtype)
        for start in range(0, per, step):
            piece = padded[start:start + step].to(self.comm_device)
            pieces = [torch.empty_like(piece) for _ in range(self.world)]
            dist.all_gather(pieces, piece)
            for r, got in enumerate(pieces):
                rows = full[r::self.world][start:start + step]
                rows.copy_(got[:len(rows)].cpu())
        return full

    def gather_items(self, part: list, total: int, chunk: int = 64) -> list:
        """Like :meth:`gather_rows` for a list of Python objects (e.g. decoded images of any size)."""
        out: list = [None] * total
        per = -(-total // self.world)
        for start in range(0, per, chunk):
            got: list = [None] * self.world
            dist.all_gather_object(got, part[start:start + chunk])
            for r, items in enumerate(got):
                for j, item in enumerate(items):
                    out[r + self.world * (start + j)] = item
        return out

    # -------------------------------------------------------------- training pieces

    def _need(self, count: int, what: str) -> None:
        if count < self.world:
            raise TLCourseError(f"{count} {what} cannot be shared by {self.world} processes (each needs at least "
                                "one); use fewer processes or more images")

    def decode_images(self, samples: list[tuple[str, int]], image_size: int, augment: bool = False,
                      draft: int | None = None):
        """``fast.DecodedImages`` split over the ranks: each decodes its share once, then all gather."""
        from ..fast import DecodedImages

        self._need(len(samples), "images to decode")
        images = DecodedImages(samples[self.rank::self.world], image_size, augment=augment, draft=draft)
        images.images = self.gather_items(images.images, len(samples))
        images.paths = [Path(p) for p, _ in samples]
        images.targets = [t for _, t in samples]
        return images

    def fast_hooks(self) -> dict:
        """How ``fast.prepare`` works with several processes: decoding split, the feature cache filled by rank 0."""
        return {"decode": self.decode_images, "first": lambda work: self.main_first(work, "cache the frozen outputs")}

    def main_first(self, fn: Callable, what: str):
        """Run ``fn`` on rank 0, then, once it has succeeded, on every other rank; each returns its own result.

        For the cached routes: rank 0 computes the frozen outputs and writes them to the persistent
        feature cache, the other ranks then read them from it instead of recomputing (with the cache
        off each rank computes them itself: the same numbers, every augmentation is seeded per image).
        If rank 0 fails, every rank raises with its one-line reason.
        """
        result = self.on_main(fn, what, share=False)   # results can be large (tensors): not broadcast
        return result if self.is_main else fn()

    def prepare_model(self, model: nn.Module, sync_bn: bool) -> str:
        """Swap BatchNorm layers that train to synchronised ones if asked; say what happens to BatchNorm."""
        training = training_batchnorms(model)
        if not training:
            return "BatchNorm: every layer is frozen (bn_eval), so nothing to synchronise"
        if not sync_bn or self.world == 1:
            return (f"BatchNorm: {len(training)} layers train, each on its own process's share of a step "
                    "(--sync-bn: statistics over the whole step, as one process would compute them)")
        target = nn.SyncBatchNorm if self.device.type == "cuda" else CPUSyncBatchNorm
        for _, module in training:
            self._swapped.append((module, type(module)))
            module.__class__ = target
            if target is nn.SyncBatchNorm:
                module.process_group = None
        return f"BatchNorm: {len(training)} training layers use {target.__name__} (statistics over the whole step)"

    def describe(self, batch_size: int) -> str:
        where = f"{self.device.type}, {self.backend}"
        return (f"distributed: {self.world} processes ({where}); batch {batch_size} per process = "
                f"{batch_size * self.world} images per optimizer step")

    def shard_loaders(self, train: DataLoader, val: DataLoader, seed: int) -> tuple[DataLoader, DataLoader]:
        """The training loader shuffled across ranks (:class:`ShuffledShards`); validation split unpadded."""
        self._need(len(train.dataset), "training images")
        self._need(len(val.dataset), "validation images")
        train_sampler = ShuffledShards(train.dataset, num_replicas=self.world, rank=self.rank,
                                       generator=train.generator, seed=seed)
        val_sampler = EvalShard(len(val.dataset), num_replicas=self.world, rank=self.rank)
        return loader_with(train, train_sampler, self.rank), loader_with(val, val_sampler, self.rank)

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around what is fed batches; rank 0's weights are broadcast to every rank here."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers are made equal once per epoch before evaluation (sync_buffers), not on every step.
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)

    def fit_hooks(self, eval_model: nn.Module) -> FitHooks:
        """What ``loops.fit`` does differently here: each rank evaluates ``eval_model`` (the module DDP
        wraps) on its share, with rank 0's buffers, and the metrics are summed over the ranks."""
        return _GroupHooks(self, eval_model)

    def fit_config(self, cfg):
        """The config ``loops.fit`` runs with here: this rank's device; progress output on rank 0 only."""
        return cfg.replace(device=str(self.device), progress=cfg.progress if self.is_main else "none")


class _GroupHooks(FitHooks):
    def __init__(self, group: Group, eval_model: nn.Module):
        self.group, self.eval_model = group, eval_model

    def reduce_stats(self, stats: dict) -> dict:
        return self.group.reduce_stats(stats)

    def after_train(self, model: nn.Module) -> None:
        self.group.sync_buffers(model)


@contextmanager


def session():
    """Inside torchrun: a :class:`Group` (not yet joined, see :meth:`Group.start`), left on every exit.

    Outside torchrun: ``None``, and training runs in this one process as usual.
    """
    if not under_torchrun():
        yield None
        return
    group = Group.from_env()
    try:
        yield group
    finally:
        group.close()

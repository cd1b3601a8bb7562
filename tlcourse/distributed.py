"""Data-parallel training on several processes: PyTorch's ``torch.distributed`` and
``DistributedDataParallel`` (DDP), started by ``torchrun`` (``torch.distributed.run``).

``torchrun --nproc-per-node 2 -m tlcourse train ...``, or ``python -m tlcourse train --nproc-per-node 2
...`` (which calls ``torch.distributed.run`` for you, see :func:`launch`), starts one process per
device. Every process runs the same ``tlcourse.engine.train``; this module holds what changes:

* **Process group**: ``nccl`` on CUDA (process ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``), ``gloo`` on
  the CPU. :func:`session` joins it and always leaves it (``destroy_process_group``), on success, error
  and Ctrl-C. Collectives give up after ``TLCOURSE_DIST_TIMEOUT`` seconds (``--dist-timeout``), so a
  process whose peer died cannot wait forever.
* **Batches**: ``batch_size`` is per process; one optimizer step sees ``batch_size x processes``
  images. :class:`ShuffledShards` is a ``DistributedSampler`` whose shuffle is the one-process
  shuffle (each epoch one ``randperm`` of the loader's seeded generator, as ``RandomSampler`` draws
  it), rank ``r`` taking positions ``r, r + W, ...``. So step ``k`` of ``W`` processes x batch ``b``
  sees exactly the images of step ``k`` of one process x batch ``W*b``; DDP averages the gradients,
  so both take the same step with the same learning rate, and a run can resume with another
  number of processes.
* **Metrics**: each rank evaluates its share of the validation set (``r, r + W, ...``, no padding)
  and the sums (loss x images, correct, images) are all-reduced: every image counts exactly once.
* **Files**: only rank 0 creates the run folder and writes checkpoints and history (atomically, as
  in one process); the others wait and learn whether it worked (:class:`MainOnlySaver`). DDP wraps
  only the module that is fed batches, so checkpoints hold the plain model (no ``module.`` prefix).
* **Caches** (``tlcourse.fast``): rank 0 runs the frozen prefix and writes the persistent feature
  cache; the other ranks wait, then read it (:meth:`Group.main_first`), so every rank holds the
  whole cache that its shuffled shards need. Decoded images (the ``decode`` route) are split: each
  rank decodes its share and the shares are all-gathered (:meth:`Group.decode_images`).
* **BatchNorm**: frozen BatchNorm (``bn_eval``) stays frozen. A BatchNorm layer that trains
  normalises each process's share of the batch, unless ``sync_bn``: then ``SyncBatchNorm`` on
  CUDA; on the CPU, where PyTorch's ``SyncBatchNorm`` is CUDA-only, :class:`CPUSyncBatchNorm` (the
  same statistics, all-reduced over gloo).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from . import TLCourseError
from .settings import DIST_TIMEOUT_DEFAULT, ENV_DIST_TIMEOUT

#: Set by :func:`launch` for its workers: they leave printing their error to the launcher.
ENV_LAUNCHED = "TLCOURSE_LAUNCHED"
#: Largest piece of a cache all-gathered at once (bounds the extra memory, e.g. on a GPU).
GATHER_BYTES = 256 * 1024**2


# --------------------------------------------------------------------------- where am I

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


# --------------------------------------------------------------------------- samplers

class ShuffledShards(DistributedSampler):
    """``DistributedSampler`` that splits the one-process shuffle across the ranks.

    Each epoch draws one ``randperm`` from ``generator`` (the training loader's seeded generator,
    the same on every rank), then a second one it discards, exactly as ``RandomSampler`` does, so
    the generator stays in step with a one-process run and its state in ``latest.pt`` resumes
    with any number of processes. Rank ``r`` takes positions ``r, r + W, ...`` of the permutation,
    padded as ``DistributedSampler`` pads (every rank the same number of batches). Without a
    generator it shuffles with ``seed + epoch`` as ``DistributedSampler`` does.

    :meth:`set_epoch` also reseeds this process's random numbers (augmentation, dropout) from
    (seed, epoch, rank): the ranks draw different augmentations, and a resumed run the same ones.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, generator: torch.Generator | None,
                 seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.generator = generator

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        seed_process(epoch_seed(self.seed, epoch, self.rank))

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.generator is not None:
            order = torch.randperm(n, generator=self.generator).tolist()
        else:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        padding = self.total_size - n
        if padding:
            order += (order * math.ceil(padding / n))[:padding]
        yield from order[self.rank:self.total_size:self.num_replicas]
        if self.generator is not None:
            torch.randperm(n, generator=self.generator)  # RandomSampler's second (empty) draw


class EvalShard(Sampler[int]):
    """Positions ``rank, rank + W, ...``: every item on exactly one rank, no padding (for metrics)."""

    def __init__(self, size: int, *, num_replicas: int, rank: int):
        self.indices = range(rank, size, num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _RankWorkerInit:
    """DataLoader workers of every rank start from the same base seed; make them differ by rank."""

    def __init__(self, rank: int, inner: Callable | None):
        self.rank, self.inner = rank, inner

    def __call__(self, worker_id: int) -> None:
        seed_process(epoch_seed(torch.initial_seed(), 0, self.rank))
        if self.inner is not None:
            self.inner(worker_id)


def _loader_with(loader: DataLoader, sampler: Sampler, rank: int) -> DataLoader:
    """``loader`` with another sampler: same dataset, batch size, workers and generator."""
    extra = {}
    if loader.num_workers > 0:
        extra = dict(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
                     multiprocessing_context=loader.multiprocessing_context)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      timeout=loader.timeout, worker_init_fn=_RankWorkerInit(rank, loader.worker_init_fn),
                      generator=loader.generator, **extra)


# --------------------------------------------------------------------------- BatchNorm across processes

class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum of every rank's gradient (of the sum of their losses)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the global batch, for CPU tensors over gloo.

    PyTorch's ``nn.SyncBatchNorm`` runs on CUDA only (and DDP refuses it in a CPU module). This is
    the same computation written with two differentiable all-reduces: mean, then biased variance
    over every rank's images; running statistics get the unbiased variance, as ``BatchNorm`` does.
    DDP averages the parameter gradients over ranks, so a step equals one process's step on the
    whole batch. In eval mode, or in one process, it is plain ``BatchNorm``.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() // input.size(1)], dtype=torch.float64)
        dist.all_reduce(count)
        n = count.item()
        # Sums in float64, as PyTorch's CPU BatchNorm accumulates: a float32 sum over a whole batch
        # loses enough digits to change the gradient of the first layers by ~1e-3.
        wide = input.double()
        mean = _AllReduceSum.apply(wide.sum(dims)) / n
        centred = wide - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        out = (centred * torch.rsqrt(var + self.eps).view(shape)).to(input.dtype)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                unbiased = var.detach() * (n / max(n - 1, 1))
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return out


def training_batchnorms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """BatchNorm layers that run in training mode after ``model.train()`` (frozen ones with bn_eval do not)."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        return [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm) and m.training]
    finally:
        for m, mode in modes.items():
            m.training = mode


# --------------------------------------------------------------------------- the process group

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
        from .fast import DecodedImages

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
        return _loader_with(train, train_sampler, self.rank), _loader_with(val, val_sampler, self.rank)

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP around what is fed batches; rank 0's weights are broadcast to every rank here."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers are made equal once per epoch before evaluation (sync_buffers), not on every step.
        return DistributedDataParallel(module, device_ids=ids, forward_sync_buffers=False)

    def fit_config(self, cfg):
        """The config ``loops.fit`` runs with here: this rank's device; progress output on rank 0 only."""
        return cfg.replace(device=str(self.device), progress=cfg.progress if self.is_main else "none")


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


# --------------------------------------------------------------------------- errors

def describe_error(exc: BaseException) -> tuple[str, int]:
    """(one line, exit status) for an error, as ``python -m tlcourse`` prints it."""
    if _is_peer_failure(exc):
        return (f"rank {process_rank()} stopped: another process of this run failed or was stopped "
                f"({_short(exc)}); its own error says why"), 1
    if isinstance(exc, TLCourseError):
        return str(exc), 2
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    from .cli import describe_unexpected

    return f"train failed: {describe_unexpected(exc)} (run with --debug for the traceback)", 1


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 120 else text[:117] + "..."


def _is_peer_failure(exc: BaseException) -> bool:
    """An error that only says another rank went away or did not answer (the cause is elsewhere)."""
    if isinstance(exc, TLCourseError):
        return False
    if isinstance(exc, dist.DistError):   # DistBackendError (incl. timeouts), DistNetworkError, DistStoreError
        return True
    return any(s in str(exc) for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def record_error(exc: BaseException) -> tuple[str, int]:
    """Write this worker's one-line error where torchrun collects it (``TORCHELASTIC_ERROR_FILE``)."""
    line, code = describe_error(exc)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        data = {"message": {"message": line, "extraInfo": {
            "py_callstack": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "timestamp": str(int(time.time())),
            "tlcourse": {"time": time.time(), "peer": _is_peer_failure(exc), "exitcode": code}}}}
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(data))
        except OSError:
            pass
    return line, code


@contextmanager
def report_errors(debug: bool = False):
    """In a torchrun worker: record a failure for the launcher (and for torchrun's own summary).

    Under :func:`launch` (and without ``--debug``) the worker then exits quietly with the error's
    status and the launcher prints the one line, once, for all ranks. Under a bare ``torchrun``
    the error propagates and ``python -m tlcourse`` prints it in each failing process.
    """
    if not under_torchrun():
        yield
        return
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:
        line, code = record_error(exc)
        if debug:
            raise
        if os.environ.get(ENV_LAUNCHED):
            raise SystemExit(code) from None
        if _is_peer_failure(exc):   # not the cause: one line, no traceback
            print(f"error: {line}", file=sys.stderr)
            raise SystemExit(code) from None
        raise


# --------------------------------------------------------------------------- the launcher

def _failure_detail(failure) -> dict:
    message = failure.error_file_data.get("message") if isinstance(failure.error_file_data, dict) else None
    if isinstance(message, dict):
        return {"line": message.get("message"), **message.get("extraInfo", {}).get("tlcourse", {})}
    return {"line": message if isinstance(message, str) and message not in ("", "<NONE>") else None}


def root_failure(failures: dict) -> tuple[int, str, int]:
    """(rank, one line, exit status) of the failure that caused the others.

    A rank's own error beats one that only reports a lost peer; among those the earliest (then the
    lowest rank) wins. Ranks stopped by torchrun after the first failure have no recorded line.
    """
    def key(item):
        rank, failure = item
        detail = _failure_detail(failure)
        return (detail["line"] is None, bool(detail.get("peer")), detail.get("time", failure.timestamp), rank)

    rank, failure = min(failures.items(), key=key)
    detail = _failure_detail(failure)
    line = detail["line"]
    if line is None:
        line = (f"killed by {failure.signal_name()}" if failure.exitcode < 0
                else f"exited with status {failure.exitcode} without a message")
    code = detail.get("exitcode") or (failure.exitcode if failure.exitcode > 0 else 1)
    return rank, line, code


def torchrun_arguments(worker: list[str], *, nproc_per_node: str | int = 1, nnodes: str | int = 1,
                       node_rank: int | None = None, master_addr: str | None = None, master_port: int | None = None,
                       rdzv_backend: str | None = None, rdzv_endpoint: str | None = None,
                       rdzv_id: str | None = None, script: str | None = None) -> list[str]:
    """The ``torchrun`` command line (without ``torchrun``) that starts ``python -m tlcourse <worker>``.

    One machine with no address given runs ``--standalone`` (a free local port, so several runs can
    share a machine); otherwise the rendezvous options are passed on as given.
    """
    argv = ["--nproc-per-node", str(nproc_per_node), "--nnodes", str(nnodes)]
    rendezvous = {"--node-rank": node_rank, "--master-addr": master_addr, "--master-port": master_port,
                  "--rdzv-backend": rdzv_backend, "--rdzv-endpoint": rdzv_endpoint, "--rdzv-id": rdzv_id}
    given = {flag: value for flag, value in rendezvous.items() if value is not None}
    if str(nnodes) in ("1", "1:1") and not set(given) - {"--node-rank"}:
        argv.append("--standalone")
    else:
        for flag, value in given.items():
            argv += [flag, str(value)]
    argv += ["--module", "tlcourse"] if script is None else [script]
    return argv + list(worker)


def launch(worker: list[str], *, debug: bool = False, **options) -> int:
    """Start the workers through ``torch.distributed.run`` (torchrun) and wait; return the exit status.

    ``worker`` is the command line of each process after ``python -m tlcourse`` (e.g. ``["train",
    "--epochs", "3"]``); ``options`` are :func:`torchrun_arguments`' rendezvous settings. When a rank
    fails, torchrun stops the others and this prints its one-line error once.
    """
    if under_torchrun():
        raise TLCourseError("this process was already started by torchrun; drop --nproc-per-node/--nnodes "
                            "(torchrun decides the processes)")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import get_args_parser, run

    from .launch_checks import bounded_rendezvous, check_process_count, rendezvous_failure, say, waiting_line

    nproc = str(options.get("nproc_per_node", 1))
    check_process_count(nproc)
    wait = timeout_seconds()
    argv = bounded_rendezvous(torchrun_arguments(worker, **options), wait)
    if waiting_line(options, wait):
        say(waiting_line(options, wait))
    if nproc.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        # torchrun would set 1 with a warning; share this machine's cores between its processes instead.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(nproc)))
    os.environ[ENV_LAUNCHED] = "1"
    if not debug:   # torchrun logs every stop and failure; the one line below says what matters
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as exc:
        rank, line, code = root_failure(exc.failures)
        others = "; the other processes were stopped" if len(exc.failures) > 1 or _world(options) > 1 else ""
        if code == 130:
            print("interrupted", file=sys.stderr)
        else:
            print(f"error: {line} (rank {rank}{others})", file=sys.stderr)
        return code
    except (KeyboardInterrupt, SignalException):
        print("interrupted", file=sys.stderr)
        return 130
    except (dist.DistError, RendezvousError, RuntimeError) as exc:   # the rendezvous: machines that never joined
        if waiting_line(options, wait) is None:
            raise
        say(rendezvous_failure(exc, options, wait))
        return 1
    return 0


def _world(options: dict) -> int:
    nproc, nnodes = str(options.get("nproc_per_node", 1)), str(options.get("nnodes", 1))
    return (int(nproc) if nproc.isdigit() else 2) * (int(nnodes) if nnodes.isdigit() else 2)

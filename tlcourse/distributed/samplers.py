"""Batches across processes: the one-process shuffle split over the ranks, validation shares without padding."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from .process import epoch_seed, seed_process


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


def loader_with(loader: DataLoader, sampler: Sampler, rank: int) -> DataLoader:
    """``loader`` with another sampler: same dataset, batch size, workers and generator."""
    extra = {}
    if loader.num_workers > 0:
        extra = dict(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers,
                     multiprocessing_context=loader.multiprocessing_context)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                      timeout=loader.timeout, worker_init_fn=_RankWorkerInit(rank, loader.worker_init_fn),
                      generator=loader.generator, **extra)

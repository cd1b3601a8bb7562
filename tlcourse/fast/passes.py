"""One pass of the frozen layers over the images, into memory or the feature cache.

This is where the time of a cached route goes: images are decoded (``SampleViews``, seeded
per image for augmented views) and run once through the frozen parts; each wanted output
goes to a ``Sink``. ``CachedTensors``/``CachedViews`` are what training then reads.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from .. import TLCourseError
from ..archs import ArchSpec, spec_of
from ..config import TrainConfig
from ..data import load_image
from ..feature_cache import FeatureCache, fingerprint_samples
from ..files import megabytes
from ..freeze import trunk
from .samples import base_dataset, draft_size
from .split import Pool

#: Largest in-memory copy the ``auto`` mode makes without being asked (decoded images, caches);
#: ``prepare`` reads it as ``tlcourse.fast.routes.AUTO_MEMORY_LIMIT`` (patch it there), ``Sink`` names it.
AUTO_MEMORY_LIMIT = 2 * 1024**3
#: A caching pass over fewer images runs in the main process: starting workers would cost more.
MIN_IMAGES_FOR_WORKERS = 256


def parts_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The trunk as two consecutive parts: up to the last stage, and the rest with pooling.

    ``[("layer3", ...), ("features", ...)]``: one pass can store the last stage's input, the
    pooled features, or both (the probe's features come almost free with a ``layer3`` pass).
    Run in sequence they compute exactly what ``split_model(model, "features").prefix`` does.
    """
    spec = spec_of(model)
    modules = trunk(model)
    cut = [n for n, _ in modules].index(spec.last_stage[0])
    return [("layer3", nn.Sequential(*(m for _, m in modules[:cut]))),
            ("features", nn.Sequential(*(m for _, m in modules[cut:]), Pool()))]


def view_seed(seed: int, view: int, index: int) -> int:
    """The seed of augmented view ``view`` of image ``index``: the same for any batch size or worker count."""
    digest = hashlib.blake2b(f"{seed}/{view}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SampleViews(Dataset):
    """An ImageFolder's images through ``transform``; with ``seed``, an augmented view seeded per image.

    Image ``index`` of view ``view`` draws its augmentation from ``view_seed(seed, view, index)``,
    so a view does not depend on batches, loader workers or which other views exist: each view
    is its own cache entry, and asking for more views later computes only the new ones.
    """

    def __init__(self, samples: list[tuple[str, int]], transform, *, draft: int | None = None,
                 seed: int | None = None, view: int = 0):
        self.samples, self.transform, self.draft, self.seed, self.view = samples, transform, draft, seed, view

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        if self.seed is not None:
            torch.manual_seed(view_seed(self.seed, self.view, index))
        return self.transform(load_image(path, self.draft)), target

    def identity(self) -> dict:
        """What the pixels fed to the network depend on (part of the feature cache key)."""
        return {"images": fingerprint_samples(self.samples), "count": len(self.samples),
                "transform": repr(self.transform), "draft": self.draft, "loader": "tlcourse.images.open_rgb",
                "view": self.view, "seed": self.seed}


def sample_views(samples: list[tuple[str, int]], source: Dataset, *, seed: int | None = None,
                 view: int = 0) -> SampleViews:
    """``samples`` read the way folder dataset ``source`` reads its images (its transform, its draft size).

    ``sample_views(folder_samples(ds), ds)`` is ``ds`` itself as a cacheable dataset; with another
    split's ``source`` the same images get that split's transform (view 0 of the training images
    is read through the validation transform).
    """
    return SampleViews(samples, base_dataset(source).transform, draft=draft_size(source), seed=seed, view=view)


class Sink:
    """Where one output of a pass goes: a tensor in memory, a cache file, or both.

    ``size`` items of ``dtype``; ``writer`` (from ``FeatureCache.writer``, or None) receives every
    batch, and ``finish`` commits it; ``in_memory=False`` keeps nothing in memory and returns the
    committed entry memory-mapped (needs a writer). A failed write falls back to memory or stops
    with one line saying how to free space.
    """

    def __init__(self, size: int, dtype: torch.dtype, writer, cache: FeatureCache | None, in_memory: bool):
        self.size, self.dtype, self.writer, self.cache, self.in_memory = size, dtype, writer, cache, in_memory
        self.tensor: torch.Tensor | None = None

    def add(self, at: int, batch: torch.Tensor) -> None:
        if self.in_memory:
            if self.tensor is None:
                self.tensor = torch.empty((self.size, *batch.shape[1:]), dtype=self.dtype)
            self.tensor[at:at + len(batch)] = batch
        if self.writer is not None:
            try:
                self.writer.write(batch)
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self.writer.abort()
        self.writer = None
        self.cache.fail(exc)
        if not self.in_memory:
            raise TLCourseError(f"the cache is larger than the in-memory limit ({megabytes(AUTO_MEMORY_LIMIT)}) and "
                                f"{self.cache.root} cannot be written ({exc.strerror}); free disk space, set "
                                "cache_dir to another folder, or use fast='off'") from None

    def finish(self, targets: torch.Tensor, key: dict | None) -> torch.Tensor:
        if self.writer is not None:
            try:
                self.cache.committed(self.writer.commit(targets.tolist()))
            except OSError as exc:
                self._failed(exc)
        if self.in_memory:
            return self.tensor
        tensor, _ = self.cache._read(self.cache.path(key), key, memory_limit=0)   # stays memory-mapped
        return tensor


def pass_workers(cfg: TrainConfig, dataset: Dataset, images: int | None = None) -> int:
    """Loader workers of a caching pass over ``images`` images: decoding runs beside the network."""
    if not isinstance(dataset, SampleViews):
        return cfg.num_workers            # any other dataset: the user's own choice
    if cfg.cache_workers is not None:
        return cfg.cache_workers
    if (images if images is not None else len(dataset)) < MIN_IMAGES_FOR_WORKERS:
        return 0                          # starting workers would cost more than it saves
    return min(4, os.cpu_count() or 1)


@torch.no_grad()
def run_passes(parts: list[tuple[str, nn.Module]], work: list[tuple[Dataset, dict[str, Sink]]], *,
               batch_size: int = 32, device="cpu", num_workers: int = 0, channels_last: bool = False,
               keep_rng: bool = True, report: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """Run the frozen ``parts`` once over each ``(dataset, sinks)`` of ``work``, in order.

    Each wanted output goes to its sink; parts after a dataset's last wanted output are not
    run. One DataLoader serves every dataset, so its workers start once (on macOS and Windows
    each start re-imports torch), and no batch mixes two datasets. Returns each dataset's
    targets. With ``keep_rng`` the global random state is left exactly as it was, so a seeded
    run that caches draws the same random numbers afterwards as one that does not.
    """
    device = torch.device(device)
    depth = [max(i for i, (name, _) in enumerate(parts) if name in sinks) for _, sinks in work]
    batches, owner, offset = [], [], 0
    for j, (dataset, _) in enumerate(work):
        if len(dataset) == 0:
            raise TLCourseError("the dataset to cache is empty; check the dataset folder")
        for start in range(0, len(dataset), batch_size):
            batches.append(list(range(offset + start, offset + min(start + batch_size, len(dataset)))))
            owner.append((j, start))
        offset += len(dataset)
    loader = DataLoader(ConcatDataset([d for d, _ in work]), batch_sampler=batches, num_workers=num_workers)
    used = parts[:max(depth) + 1]
    modes = {m: m.training for _, part in used for m in part.modules()}
    targets = [torch.empty(len(d), dtype=torch.long) for d, _ in work]
    done = 0
    try:
        for _, part in used:
            part.eval()
        with torch.random.fork_rng(devices=[]) if keep_rng else nullcontext():
            for (j, at), (inputs, labels) in zip(owner, loader):
                sinks = work[j][1]
                x = inputs.to(device)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                for name, part in parts[:depth[j] + 1]:
                    x = part(x)
                    if name in sinks:
                        sinks[name].add(at, x.to("cpu", sinks[name].dtype).contiguous())
                targets[j][at:at + len(labels)] = torch.as_tensor(labels)
                if report is not None:                 # a line per tenth of the images when piped
                    done += len(labels)
                    report(done)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return targets


def run_pass(parts: list[tuple[str, nn.Module]], dataset: Dataset, sinks: dict[str, Sink], **options) -> torch.Tensor:
    """:func:`run_passes` over one dataset; returns its targets."""
    return run_passes(parts, [(dataset, sinks)], **options)[0]


@torch.no_grad()
def compute_cache(prefix: nn.Module, dataset: Dataset, *, batch_size: int = 32, device="cpu",
                  dtype: torch.dtype = torch.float32, num_workers: int = 0,
                  channels_last: bool = False, keep_rng: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``prefix`` once over ``dataset`` in order; return (outputs as ``dtype``, targets), in memory."""
    sink = Sink(len(dataset), dtype, None, None, True)
    targets = run_pass([("out", prefix)], dataset, {"out": sink}, batch_size=batch_size, device=device,
                       num_workers=num_workers, channels_last=channels_last, keep_rng=keep_rng)
    return sink.finish(targets, None), targets


class CachedTensors(Dataset):
    """(cached tensor, target) pairs: a Dataset of what the frozen prefix produced."""

    def __init__(self, tensors: torch.Tensor, targets: torch.Tensor):
        self.tensors, self.targets = tensors, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.tensors[index], self.targets[index]


class CachedViews(Dataset):
    """``K`` cached views per image; epoch ``e`` (1-based) serves view ``(e - 1) mod K``.

    ``views`` is a sequence of ``K`` tensors of ``N`` items each (a ``(K, N, ...)`` tensor works
    too). The epoch is set explicitly with :meth:`set_epoch` (``fit`` calls it before every
    epoch, as timm does for its samplers), so an epoch cut short or a resumed run stays in step.
    """

    def __init__(self, views, targets: torch.Tensor):
        self.views, self.targets = views, targets
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def view(self) -> int:
        return (self.epoch - 1) % len(self.views)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.views[self.view][index], self.targets[index]


def cache_bytes_estimate(spec: ArchSpec, num_images: int, image_size: int, point: str,
                         dtype: torch.dtype = torch.float32, views: int = 1) -> int:
    """Memory a cache will take: pooled features, or the last stage's input at stride 16."""
    element = torch.empty((), dtype=dtype).element_size()
    if point == "features":
        return num_images * views * spec.feature_dim * element
    side = math.ceil(image_size / 16)
    return num_images * views * spec.cut_channels * side * side * element

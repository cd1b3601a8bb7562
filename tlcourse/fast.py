"""Fast paths for transfer learning on a CPU: compute what is frozen once, train only the rest.

When every layer in front of some point is frozen (no gradients, BatchNorm in eval mode), its
output for a given input image is a fixed function of that image. The plain loop recomputes it
every epoch anyway; the fast paths here compute it once and train the remaining layers on the
stored result:

* ``features``: pooled backbone features (one vector per image) for head-only training;
* ``layer3``: the input of the last stage (ResNet ``layer3`` output, MobileNetV2
  ``features.13`` output), stored as fp16, for ``last_stage`` training (layer4 + fc);
* ``views``: with augmentation on, ``K`` seeded augmented views per training image are
  cached, and epoch ``e`` uses view ``e mod K`` of every image;
* ``decode``: no caching of activations, but every image is decoded and resized once into
  uint8 tensors in memory instead of through PIL every epoch.

The trainable part runs the *real* model's submodules (shared parameters), so the checkpoint
``fit`` saves is the full, normal model. With augmentation off, cached and plain training follow
the same loss trajectory (``tests/test_fast.py`` checks it); the plain loop stays the reference.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from torchvision import transforms

from . import TLCourseError, backbone_runtime
from .archs import ArchSpec, spec_of
from .config import FAST_MODES, TrainConfig
from .data import IMAGENET_MEAN, IMAGENET_STD, Loaders, augmentations, load_image, resize_size
from .feature_cache import FeatureCache, fingerprint_module, fingerprint_samples
from .files import megabytes
from .freeze import trunk
from .images import open_rgb
from .pass_progress import pass_progress

__all__ = ["FAST_MODES", "CachedForward", "CachedTensors", "CachedViews", "DecodedImages", "FastSetup", "Split",
           "cache_bytes_estimate", "choose_path", "compute_cache", "prefix_problem", "prepare", "split_model"]

#: Largest in-memory copy the ``auto`` mode makes without being asked (decoded images, caches).
AUTO_MEMORY_LIMIT = 2 * 1024**3
#: Cut points: before the head (pooled features) and before the last stage.
CUT_POINTS = ("features", "layer3")
#: A caching pass over fewer images runs in the main process: starting workers would cost more.
MIN_IMAGES_FOR_WORKERS = 256


# --------------------------------------------------------------------------- splitting a model

class Pool(nn.Module):
    """Global average pooling + flatten, as at the end of ResNet and MobileNetV2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


@dataclass
class Split:
    """A model cut in two: ``prefix`` (frozen, computed once) and ``suffix`` (trained)."""

    prefix: nn.Module
    suffix: nn.Module
    point: str          # human name of what the prefix outputs, e.g. "layer3 activations"


def split_model(model: nn.Module, at: str) -> Split:
    """Cut a model before its head (``at="features"``) or before its last stage (``at="layer3"``).

    The cut points come from ``tlcourse.archs``: the trunk runs in order, then global average
    pooling, then the head. Both halves hold the model's own submodules (shared parameters).
    """
    if at not in CUT_POINTS:
        raise TLCourseError(f"cannot split at {at!r}; choose 'features' or 'layer3'")
    spec = spec_of(model)
    modules = trunk(model)
    head = model.get_submodule(spec.head)
    if at == "features":
        return Split(nn.Sequential(*(m for _, m in modules), Pool()), head, "pooled features")
    names = [n for n, _ in modules]
    cut = names.index(spec.last_stage[0])
    return Split(nn.Sequential(*(m for _, m in modules[:cut])),
                 nn.Sequential(*(m for _, m in modules[cut:]), Pool(), head),
                 f"{names[cut - 1]} activations")


def prefix_problem(prefix: nn.Module) -> str | None:
    """Why ``prefix`` is *not* a fixed function of its input during training, or None.

    It must have no trainable parameter, and nothing in it may change behaviour in training
    mode (BatchNorm updating running statistics, Dropout): both are checked after ``train()``.
    """
    trainable = [n for n, p in prefix.named_parameters() if p.requires_grad]
    if trainable:
        return f"the layers before the cut are not frozen ({trainable[0]} is trainable)"
    modes = {m: m.training for m in prefix.modules()}
    try:
        prefix.train()
        moving = [n for n, m in prefix.named_modules() if m.training and _is_random_layer(m)]
    finally:
        for m, mode in modes.items():
            m.training = mode
    if moving:
        return (f"frozen {moving[0]} would still run in training mode (bn_eval=False), so its "
                "output changes every step")
    return None


def _is_random_layer(module: nn.Module) -> bool:
    """Layers whose training-mode output is not a fixed function of the input."""
    from torchvision.ops import StochasticDepth

    return isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout, StochasticDepth))


class CachedForward(nn.Module):
    """What ``fit`` feeds cached tensors to: the trainable suffix of the real model."""

    def __init__(self, suffix: nn.Module):
        super().__init__()
        self.suffix = suffix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.suffix.parameters()).dtype
        return self.suffix(x.to(dtype))


# --------------------------------------------------------------------------- one pass over the images

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


class _Sink:
    """Where one output of a pass goes: a tensor in memory, a cache file, or both."""

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
def run_passes(parts: list[tuple[str, nn.Module]], work: list[tuple[Dataset, dict[str, _Sink]]], *,
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


def run_pass(parts: list[tuple[str, nn.Module]], dataset: Dataset, sinks: dict[str, _Sink], **options) -> torch.Tensor:
    """:func:`run_passes` over one dataset; returns its targets."""
    return run_passes(parts, [(dataset, sinks)], **options)[0]


@torch.no_grad()
def compute_cache(prefix: nn.Module, dataset: Dataset, *, batch_size: int = 32, device="cpu",
                  dtype: torch.dtype = torch.float32, num_workers: int = 0,
                  channels_last: bool = False, keep_rng: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``prefix`` once over ``dataset`` in order; return (outputs as ``dtype``, targets), in memory."""
    sink = _Sink(len(dataset), dtype, None, None, True)
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


# --------------------------------------------------------------------------- decode once

def _samples(dataset: Dataset) -> list[tuple[str, int]] | None:
    """(path, target) of every item of an ImageFolder or a Subset of one, else None."""
    if isinstance(dataset, Subset):
        inner = _samples(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    samples = getattr(dataset, "samples", None)
    return list(samples) if samples is not None else None


class DecodedImages(Dataset):
    """Images decoded and resized once into uint8 tensors; each epoch only does tensor ops.

    Without augmentation the stored tensor is already the evaluation centre crop, so items are
    bit-identical to ``eval_transforms`` on the PIL image. With augmentation the short side is
    kept at the evaluation resize (256 for 224 crops) and random crop/flip/rotation run on the
    tensor (same kinds and ranges as ``train_transforms``, from a smaller source image).
    """

    def __init__(self, samples: list[tuple[str, int]], image_size: int = 224, augment: bool = False,
                 draft: int | None = None):
        decode = [transforms.Resize(resize_size(image_size))] + ([] if augment else [transforms.CenterCrop(image_size)])
        decode = transforms.Compose([*decode, transforms.PILToTensor()])
        self.paths = [Path(p) for p, _ in samples]
        self.targets = [t for _, t in samples]
        self.images: list[torch.Tensor] = []
        for path in self.paths:
            try:
                self.images.append(decode(open_rgb(path, draft)))
            except OSError as exc:
                raise TLCourseError(f"image {path} cannot be read ({exc}); remove it or replace it") from None
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        if augment:
            self.transform = transforms.Compose([*augmentations(image_size),
                                                 transforms.ConvertImageDtype(torch.float32), normalize])
        else:
            self.transform = transforms.Compose([transforms.ConvertImageDtype(torch.float32), normalize])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), self.targets[index]


# --------------------------------------------------------------------------- choosing a path

@dataclass
class FastSetup:
    """Which training path runs, and what ``fit`` needs for it."""

    name: str                           # plain | features | layer3 | views | decode
    description: str                    # one human line, e.g. "cached pooled features (...)"
    train_loader: object
    val_loader: object
    forward_model: nn.Module | None = None
    cache_bytes: int = 0
    seconds: float = 0.0
    #: (train features, train targets, val features, val targets, their cache keys or None): the
    #: un-augmented pooled features of the frozen backbone, for the linear probe (None: not asked for).
    probe_data: tuple | None = None
    cache_line: str = ""                # what the feature cache did, in one line


def _inner(dataset: Dataset) -> Dataset:
    return _inner(dataset.dataset) if isinstance(dataset, Subset) else dataset


def _is_random(transform) -> bool:
    """True if a torchvision transform pipeline draws random numbers (Random*, ColorJitter...)."""
    if transform is None:
        return False
    parts = getattr(transform, "transforms", None)
    if parts is not None:
        return any(_is_random(t) for t in parts)
    name = type(transform).__name__
    return name.startswith("Random") or name in ("ColorJitter", "AutoAugment", "RandAugment",
                                                 "TrivialAugmentWide", "AugMix", "GaussianBlur")


def _loader_like(template: DataLoader, dataset: Dataset, *, shuffle: bool, num_workers: int = 0) -> DataLoader:
    """A DataLoader with ``template``'s batch size and generator, so batches come in the same order."""
    return DataLoader(dataset, batch_size=template.batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=template.generator if shuffle else None, pin_memory=template.pin_memory,
                      drop_last=template.drop_last)


def choose_path(model: nn.Module, cfg: TrainConfig, train_dataset: Dataset) -> tuple[str, str | None, str]:
    """(path, cut point or None, reason) for a config; raises if a forced path is impossible."""
    cfg = cfg.resolved()
    fast, freeze = cfg.fast, cfg.freeze
    augmented = cfg.augment or _is_random(getattr(_inner(train_dataset), "transform", None))
    if fast == "off":
        return "plain", None, "fast='off'"
    if fast == "decode":
        if _samples(train_dataset) is None:
            raise TLCourseError("fast='decode' needs an ImageFolder dataset (with .samples); use fast='off'")
        return "decode", None, "asked for"
    if fast in ("features", "layer3"):
        problem = prefix_problem(split_model(model, fast).prefix)
        if problem:
            raise TLCourseError(f"fast={fast!r} cannot cache: {problem}; use freeze="
                                f"{'head' if fast == 'features' else 'last_stage'} with bn_eval=True, or fast='off'")
        if augmented and cfg.fast_views < 1:
            raise TLCourseError(f"fast={fast!r} with augmentation needs fast_views=K (K augmented views per image "
                                "are cached); or set augment=False, or fast='auto'")
        return ("views" if augmented else fast), fast, "asked for"
    # auto: cache only where it is exactly what the plain loop computes (or the user asked for views)
    point = {"head": "features", "last_stage": "layer3"}.get(freeze)
    if point is None:
        if not augmented and _samples(train_dataset) is not None:
            return "decode", None, "nothing is frozen, but the images never change: decode them once"
        return "plain", None, "every layer learns and the images change each epoch, so nothing can be cached"
    problem = prefix_problem(split_model(model, point).prefix)
    if problem:
        return "plain", None, problem
    if augmented:
        if cfg.fast_views >= 1:
            return "views", point, f"fast_views={cfg.fast_views}"
        return "plain", None, ("augmentation makes every epoch's images new, so the frozen part must run "
                               "again (set fast_views=K to cache K augmented views, or augment=False)")
    exact = "exact" if point == "features" or cfg.fast_dtype == "float32" else "exact up to fp16 rounding"
    return point, point, f"frozen prefix and no augmentation: caching is {exact}"


# --------------------------------------------------------------------------- what to compute

@dataclass
class _Job:
    """One pass: the images of one split (one view of them), and the outputs wanted from it."""

    split: str                          # train | val
    view: int                           # 0: un-augmented; k >= 1: the k-th augmented view
    dataset: Dataset
    outputs: dict                       # output name ("layer3" | "features") -> stored dtype
    stream_seed: int | None = None      # a dataset that is not an image folder: seed its random stream


def _folder_samples(dataset: Dataset) -> list[tuple[str, int]] | None:
    """(path, target) of (a Subset of) tlcourse's ImageFolderRGB: images the cache can key on."""
    from .data import ImageFolderRGB

    return _samples(dataset) if isinstance(_inner(dataset), ImageFolderRGB) else None


def _draft(dataset: Dataset) -> int | None:
    return getattr(_inner(dataset), "draft", None)


def _plan(name: str, point: str, dtype: torch.dtype, loaders: Loaders, cfg: TrainConfig,
          probe: bool) -> list[_Job]:
    """The passes of a cached route (and the probe's pooled features when ``probe``).

    With augmentation (``views``) view 0 of a training image is its un-augmented view (the
    validation transform), views 1..K-1 are seeded augmentations: evaluation sees view 0's
    distribution, and the probe gets its training features without an extra pass.
    """
    train_set, val_set = loaders.train.dataset, loaders.val.dataset
    clean = {point: dtype} | ({"features": torch.float32} if probe else {})
    train_samples, val_samples = _folder_samples(train_set), _folder_samples(val_set)

    def folder(samples, source: Dataset, **seeding) -> SampleViews:
        return SampleViews(samples, _inner(source).transform, draft=_draft(source), **seeding)

    val_job = _Job("val", 0, folder(val_samples, val_set) if val_samples is not None else val_set, clean)
    if name != "views":
        train = folder(train_samples, train_set) if train_samples is not None else train_set
        return [_Job("train", 0, train, clean), val_job]
    if train_samples is not None and val_samples is not None:
        jobs = [_Job("train", 0, folder(train_samples, val_set), clean)]
        jobs += [_Job("train", v, folder(train_samples, train_set, seed=cfg.seed, view=v), {point: dtype})
                 for v in range(1, cfg.fast_views)]
    else:   # any other dataset: K passes of its own (random) transform, each from a seeded stream
        jobs = [_Job("train", v, train_set, {point: dtype}, stream_seed=view_seed(cfg.seed, v, -1))
                for v in range(cfg.fast_views)]
        val_job.outputs = {point: dtype}
    return jobs + [val_job]


def _estimate(jobs: list[_Job], spec: ArchSpec, image_size: int) -> int:
    return sum(cache_bytes_estimate(spec, len(job.dataset), image_size, out, dt)
               for job in jobs for out, dt in job.outputs.items())


_OUTPUT_NAMES = {"features": "pooled features", "layer3": "last-stage inputs"}


def _run_jobs(jobs: list[_Job], model: nn.Module, cfg: TrainConfig, device: torch.device, cache: FeatureCache,
              data_dir, *, stream: bool) -> tuple[dict, dict]:
    """Run (or read from the cache) every job; ``({(split, view): ({output: tensor}, targets)}, counts)``."""
    import torchvision

    parts = parts_of(model)
    spec = spec_of(model)
    size = cfg.image_size
    runtime, run_parts = backbone_runtime.frozen_parts(parts, cfg.backbone_runtime, device,
                                                       torch.zeros(1, 3, size, size), cache=cache, arch=spec.name,
                                                       images=sum(len(job.dataset) for job in jobs))
    fingerprints: dict[str, str] = {}
    if cache.enabled and any(isinstance(job.dataset, SampleViews) for job in jobs):
        fingerprints["layer3"] = fingerprint_module(parts[0][1])
        fingerprints["features"] = fingerprints["layer3"] + "+" + fingerprint_module(parts[1][1])
    results, counts = {}, {"passes": 0, "read": 0, "pass_seconds": 0.0, "images": 0, "runtime": runtime}
    todo = []                                   # (job, keys, sinks) still to compute
    for job in jobs:
        keys = {}
        for out, dt in job.outputs.items():
            keys[out] = None
            if fingerprints and isinstance(job.dataset, SampleViews):
                keys[out] = {"kind": "tlcourse.feature_cache", "arch": spec.name, "output": out,
                             "model": fingerprints[out], "dtype": str(dt).replace("torch.", ""),
                             **job.dataset.identity(), "torch": torch.__version__,
                             "torchvision": torchvision.__version__, "device": device.type,
                             "channels_last": cfg.channels_last, "runtime": runtime}
        got, targets = {}, None
        for out, key in keys.items():
            hit = cache.load(key, memory_limit=0 if stream else None) if key is not None else None
            if hit is not None:
                got[out], targets = hit
                counts["read"] += 1
        results[(job.split, job.view)] = (got, targets, keys)
        missing = {out: dt for out, dt in job.outputs.items() if out not in got}
        if missing:
            sinks = {}
            for out, dt in missing.items():
                kind = "un-augmented" if job.view == 0 and job.stream_seed is None else f"augmented, seed {cfg.seed}"
                what = (f"{spec.name} {_OUTPUT_NAMES[out]} ({str(dt).replace('torch.', '')}) | {job.split} view "
                        f"{job.view} ({kind}) | {len(job.dataset)} images | {data_dir}")
                writer = cache.writer(keys[out], what) if keys[out] is not None else None
                sinks[out] = _Sink(len(job.dataset), dt, writer, cache, in_memory=not (stream and writer))
            todo.append((job, keys, sinks))
    if not todo:
        return results, counts
    started = time.perf_counter()
    common = dict(batch_size=cfg.batch_size, device=device, channels_last=cfg.channels_last)
    together = [t for t in todo if t[0].stream_seed is None]     # image folders: one loader for all
    if together:
        images = sum(len(job.dataset) for job, _, _ in together)
        workers = pass_workers(cfg, together[0][0].dataset, images)
        if runtime != "torch" and workers and cfg.cache_workers is None:
            workers = backbone_runtime.decode_workers()         # the other cores run the session
        all_targets = run_passes(run_parts, [(job.dataset, sinks) for job, _, sinks in together],
                                 num_workers=workers, report=pass_progress(images, cfg.progress), **common)
        for (job, keys, sinks), targets in zip(together, all_targets):
            _finish(results, job, keys, sinks, targets)
    for job, keys, sinks in (t for t in todo if t[0].stream_seed is not None):
        with torch.random.fork_rng(devices=[]):                  # any other dataset: its own seeded stream
            torch.manual_seed(job.stream_seed)
            targets = run_pass(run_parts, job.dataset, sinks, num_workers=cfg.num_workers, keep_rng=False, **common)
        _finish(results, job, keys, sinks, targets)
    counts["passes"] = len(todo)
    counts["images"] = sum(len(job.dataset) for job, _, _ in todo)
    counts["pass_seconds"] = time.perf_counter() - started
    return results, counts


def _finish(results: dict, job: _Job, keys: dict, sinks: dict, targets: torch.Tensor) -> None:
    got = results[(job.split, job.view)][0]
    for out, sink in sinks.items():
        got[out] = sink.finish(targets, keys[out])
    results[(job.split, job.view)] = (got, targets, keys)


def frozen_features(model: nn.Module, loaders: Loaders, cfg: TrainConfig, device, *,
                    cache: FeatureCache | None = None) -> tuple | None:
    """The un-augmented pooled features of train and val (the probe's input), via the cache.

    None when the datasets are not image folders with a deterministic validation transform.
    """
    device = torch.device(device)
    cache = cache if cache is not None else FeatureCache(cfg.cache_dir, enabled=cfg.cache)
    if _folder_samples(loaders.train.dataset) is None or _folder_samples(loaders.val.dataset) is None:
        return None
    jobs = _plan("views", "features", torch.float32, loaders, cfg.replace(fast_views=1), probe=True)
    results, _ = _run_jobs(jobs, model, cfg, device, cache, loaders.data_dir, stream=False)
    return _probe_data(results)


def _probe_data(results: dict) -> tuple | None:
    """(train features, train targets, val features, val targets, (train key, val key) or None)."""
    (train, train_y, train_keys), (val, val_y, val_keys) = results[("train", 0)], results[("val", 0)]
    if "features" not in train or "features" not in val:
        return None
    keys = (train_keys["features"], val_keys["features"])
    return train["features"], train_y, val["features"], val_y, (keys if None not in keys else None)


# --------------------------------------------------------------------------- preparing a run

def _at_once(work: Callable):
    return work()


def prepare(model: nn.Module, loaders: Loaders, cfg: TrainConfig, device, *,
            log: Callable[[str], None] = print, cache: FeatureCache | None = None,
            probe: bool = False, decode: Callable = DecodedImages, first: Callable = _at_once) -> FastSetup:
    """Choose the training path for ``cfg`` and build its loaders (and caches); log what ran.

    ``cache``: the persistent feature cache (default: from ``cfg.cache`` / ``cfg.cache_dir``).
    ``probe``: also return the un-augmented pooled features (``FastSetup.probe_data``).
    With several processes ``tlcourse.distributed`` passes its own ``decode`` (each process
    decodes a share of the images, all at once) and ``first`` (runs the step that fills the
    feature cache on rank 0 before the others, which then read it).
    """
    device = torch.device(device)
    cfg = cfg.resolved()
    cache = cache if cache is not None else FeatureCache(cfg.cache_dir, enabled=cfg.cache)
    train_set, val_set = loaders.train.dataset, loaders.val.dataset
    name, point, reason = choose_path(model, cfg, train_set)
    started = time.perf_counter()
    workers = cfg.num_workers

    def plain(description: str) -> FastSetup:
        setup = FastSetup("plain", description, loaders.train, loaders.val)
        log(f"training path: {setup.description}")
        if probe:
            setup.probe_data = first(lambda: frozen_features(model, loaders, cfg, device, cache=cache))
            setup.seconds = time.perf_counter() - started
            setup.cache_line = cache.summary()
        return setup

    if name == "plain":
        return plain(f"plain loop (the whole network runs on every batch: {reason})")

    if name == "decode":
        augmented = cfg.augment or _is_random(getattr(_inner(train_set), "transform", None))
        size = loaders.image_size
        samples = {s: _samples(d) for s, d in (("train", train_set), ("val", val_set))}
        estimate = sum(len(v) for v in samples.values()) * 3 * resize_size(size) ** 2 * (2 if augmented else 1)
        if cfg.fast == "auto" and estimate > AUTO_MEMORY_LIMIT:
            return plain(f"plain loop (decoding all images would take ~{megabytes(estimate)} of memory)")
        train_d = decode(samples["train"], size, augment=augmented, draft=_draft(train_set))
        val_d = decode(samples["val"], size, augment=False, draft=_draft(val_set))
        seconds = time.perf_counter() - started
        total = len(train_d) + len(val_d)
        setup = FastSetup("decode", f"images decoded once into memory ({total} images, "
                                    f"{megabytes(train_d.nbytes + val_d.nbytes)}, {seconds:.1f} s; {reason})",
                          _loader_like(loaders.train, train_d, shuffle=True, num_workers=workers),
                          _loader_like(loaders.val, val_d, shuffle=False, num_workers=workers),
                          None, train_d.nbytes + val_d.nbytes, seconds)
        log(f"fast path: {setup.description}")
        return setup

    split = split_model(model, point)
    dtype = torch.float16 if (point == "layer3" and cfg.fast_dtype == "float16") else torch.float32
    jobs = _plan(name, point, dtype, loaders, cfg, probe)
    estimate = _estimate(jobs, spec_of(model), loaders.image_size)
    stream = False
    if estimate > AUTO_MEMORY_LIMIT:
        if cache.writable and all(isinstance(job.dataset, SampleViews) for job in jobs):
            stream = True         # written to disk as computed, trained on from memory-mapped files
        elif cfg.fast == "auto":
            return plain(f"plain loop (caching {split.point} would take ~{megabytes(estimate)} of memory, over the "
                         f"{megabytes(AUTO_MEMORY_LIMIT)} limit of fast='auto', and the feature cache is off)")
    results, counts = first(lambda: _run_jobs(jobs, model, cfg, device, cache, loaders.data_dir, stream=stream))
    (train_out, train_y, _), (val_out, val_y, _) = results[("train", 0)], results[("val", 0)]
    if name == "views":
        views = [results[("train", v)][0][point] for v in range(cfg.fast_views)]
        train_d: Dataset = CachedViews(views, train_y)
        train_bytes = sum(v.numel() * v.element_size() for v in views)
    else:
        train_d = CachedTensors(train_out[point], train_y)
        train_bytes = train_out[point].numel() * train_out[point].element_size()
    val_x = val_out[point]
    seconds = time.perf_counter() - started
    cache_bytes = train_bytes + val_x.numel() * val_x.element_size()
    what = split.point + (" (fp16)" if dtype == torch.float16 else "")
    where = "memory-mapped from the feature cache" if stream else megabytes(cache_bytes)
    done = []
    if counts["passes"]:
        done.append(f"{counts['passes']} pass(es) over {counts['images']} images computed in "
                    f"{counts['pass_seconds']:.1f} s ({counts['images'] / max(counts['pass_seconds'], 1e-9):.0f} "
                    f"images/s, {counts['runtime']})")
    if counts["read"]:
        done.append(f"{counts['read']} entr{'y' if counts['read'] == 1 else 'ies'} read from the feature cache")
    if name == "views" and cfg.fast_views == 1:
        description = (f"cached {what} of the un-augmented images (fast_views=1: no augmented views), "
                       f"{len(train_y)} train + {len(val_y)} val images, {where}; {'; '.join(done)}; {seconds:.1f} s")
    elif name == "views":
        description = (f"cached {what} of {cfg.fast_views} views per training image (the un-augmented one + "
                       f"{cfg.fast_views - 1} augmented; epoch e uses view (e-1) mod {cfg.fast_views}), "
                       f"{len(train_y)} train + {len(val_y)} val images, {where}; {'; '.join(done)}; "
                       f"{seconds:.1f} s")
    else:
        description = (f"cached {what}, {len(train_y)} train + {len(val_y)} val images, {where}; "
                       f"{'; '.join(done)}; {seconds:.1f} s")
    setup = FastSetup(name, description,
                      _loader_like(loaders.train, train_d, shuffle=True),
                      _loader_like(loaders.val, CachedTensors(val_x, val_y), shuffle=False),
                      CachedForward(split.suffix), cache_bytes, seconds,
                      probe_data=_probe_data(results) if probe else None, cache_line=cache.summary())
    log(f"fast path: {description}")
    log(setup.cache_line)
    return setup

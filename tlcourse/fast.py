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

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms

from . import TLCourseError
from .archs import ArchSpec, spec_of
from .config import FAST_MODES, TrainConfig
from .data import IMAGENET_MEAN, IMAGENET_STD, Loaders, augmentations, resize_size
from .freeze import trunk
from .images import open_rgb

__all__ = ["FAST_MODES", "CachedForward", "CachedTensors", "CachedViews", "DecodedImages", "FastSetup", "Split",
           "cache_bytes_estimate", "choose_path", "compute_cache", "prefix_problem", "prepare", "split_model"]

#: Largest in-memory copy the ``auto`` mode makes without being asked (decoded images, caches).
AUTO_MEMORY_LIMIT = 2 * 1024**3
#: Cut points: before the head (pooled features) and before the last stage.
CUT_POINTS = ("features", "layer3")


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


# --------------------------------------------------------------------------- caching

@torch.no_grad()
def compute_cache(prefix: nn.Module, dataset: Dataset, *, batch_size: int = 32, device="cpu",
                  dtype: torch.dtype = torch.float32, num_workers: int = 0,
                  channels_last: bool = False, keep_rng: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``prefix`` once over ``dataset`` in order; return (outputs as ``dtype``, targets).

    With ``keep_rng`` the global random state is left exactly as it was, so a seeded run that
    caches draws the same random numbers afterwards as one that does not.
    """

    device = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    modes = {m: m.training for m in prefix.modules()}
    prefix.eval()
    out, targets, at = None, torch.empty(len(dataset), dtype=torch.long), 0
    try:
        with torch.random.fork_rng(devices=[]) if keep_rng else nullcontext():
            for inputs, labels in loader:
                inputs = inputs.to(device)
                if channels_last:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                result = prefix(inputs).to("cpu", dtype).contiguous()
                if out is None:
                    out = torch.empty((len(dataset), *result.shape[1:]), dtype=dtype)
                out[at:at + len(result)] = result
                targets[at:at + len(result)] = torch.as_tensor(labels)
                at += len(result)
    finally:
        for m, mode in modes.items():
            m.training = mode
    if out is None:
        raise TLCourseError("the dataset to cache is empty; check the dataset folder")
    return out, targets


class CachedTensors(Dataset):
    """(cached tensor, target) pairs: a Dataset of what the frozen prefix produced."""

    def __init__(self, tensors: torch.Tensor, targets: torch.Tensor):
        self.tensors, self.targets = tensors, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.tensors[index], self.targets[index]


class CachedViews(Dataset):
    """``K`` cached augmented views per image; epoch ``e`` (1-based) serves view ``(e - 1) mod K``.

    The epoch is set explicitly with :meth:`set_epoch` (``fit`` calls it before every epoch,
    as timm does for its samplers), so an epoch cut short or a resumed run stays in step.
    """

    def __init__(self, views: torch.Tensor, targets: torch.Tensor):
        self.views, self.targets = views, targets          # views: (K, N, ...)
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def view(self) -> int:
        return (self.epoch - 1) % len(self.views)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.views[self.view, index], self.targets[index]


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

    def __init__(self, samples: list[tuple[str, int]], image_size: int = 224, augment: bool = False):
        decode = [transforms.Resize(resize_size(image_size))] + ([] if augment else [transforms.CenterCrop(image_size)])
        decode = transforms.Compose([*decode, transforms.PILToTensor()])
        self.paths = [Path(p) for p, _ in samples]
        self.targets = [t for _, t in samples]
        self.images: list[torch.Tensor] = []
        for path in self.paths:
            try:
                self.images.append(decode(open_rgb(path)))
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


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def choose_path(model: nn.Module, cfg: TrainConfig, train_dataset: Dataset) -> tuple[str, str | None, str]:
    """(path, cut point or None, reason) for a config; raises if a forced path is impossible."""
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


def prepare(model: nn.Module, loaders: Loaders, cfg: TrainConfig, device, *,
            log: Callable[[str], None] = print, compute: Callable = compute_cache,
            decode: Callable = DecodedImages) -> FastSetup:
    """Choose the training path for ``cfg`` and build its loaders (and caches); log one line.

    ``compute`` and ``decode`` build the caches (``compute_cache``, ``DecodedImages``); with several
    processes ``tlcourse.distributed`` passes versions that split the work across them.
    """
    device = torch.device(device)
    train_set, val_set = loaders.train.dataset, loaders.val.dataset
    name, point, reason = choose_path(model, cfg, train_set)
    started = time.perf_counter()
    workers = cfg.num_workers
    if name == "plain":
        setup = FastSetup("plain", f"plain loop (the whole network runs on every batch: {reason})",
                          loaders.train, loaders.val)
        log(f"training path: {setup.description}")
        return setup

    if name == "decode":
        augmented = cfg.augment or _is_random(getattr(_inner(train_set), "transform", None))
        size = loaders.image_size
        samples = {s: _samples(d) for s, d in (("train", train_set), ("val", val_set))}
        estimate = sum(len(v) for v in samples.values()) * 3 * resize_size(size) ** 2 * (2 if augmented else 1)
        if cfg.fast == "auto" and estimate > AUTO_MEMORY_LIMIT:
            setup = FastSetup("plain", f"plain loop (decoding all images would take ~{_mb(estimate)} of memory)",
                              loaders.train, loaders.val)
            log(f"training path: {setup.description}")
            return setup
        train_d = decode(samples["train"], size, augment=augmented)
        val_d = decode(samples["val"], size, augment=False)
        seconds = time.perf_counter() - started
        total = len(train_d) + len(val_d)
        setup = FastSetup("decode", f"images decoded once into memory ({total} images, "
                                    f"{_mb(train_d.nbytes + val_d.nbytes)}, {seconds:.1f} s; {reason})",
                          _loader_like(loaders.train, train_d, shuffle=True, num_workers=workers),
                          _loader_like(loaders.val, val_d, shuffle=False, num_workers=workers),
                          None, train_d.nbytes + val_d.nbytes, seconds)
        log(f"fast path: {setup.description}")
        return setup

    split = split_model(model, point)
    dtype = torch.float16 if (point == "layer3" and cfg.fast_dtype == "float16") else torch.float32
    views = cfg.fast_views if name == "views" else 1
    estimate = cache_bytes_estimate(spec_of(model), len(train_set) * views + len(val_set), loaders.image_size,
                                    point, dtype)
    if cfg.fast == "auto" and estimate > AUTO_MEMORY_LIMIT:
        setup = FastSetup("plain", f"plain loop (caching {split.point} would take ~{_mb(estimate)} of memory, "
                                   f"over the {_mb(AUTO_MEMORY_LIMIT)} limit of fast='auto')",
                          loaders.train, loaders.val)
        log(f"training path: {setup.description}")
        return setup
    common = dict(batch_size=loaders.train.batch_size, device=device, dtype=dtype, num_workers=workers,
                  channels_last=cfg.channels_last)
    val_x, val_y = compute(split.prefix, val_set, **common)
    if name == "views":
        cached = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)   # the augmentations drawn for the views are seeded
            for _ in range(cfg.fast_views):   # each view continues the seeded random stream
                x, train_y = compute(split.prefix, train_set, keep_rng=False, **common)
                cached.append(x)
        train_x = torch.stack(cached)
        train_d = CachedViews(train_x, train_y)
    else:
        train_x, train_y = compute(split.prefix, train_set, **common)
        train_d = CachedTensors(train_x, train_y)
    seconds = time.perf_counter() - started
    cache_bytes = train_x.numel() * train_x.element_size() + val_x.numel() * val_x.element_size()
    passes = cfg.fast_views if name == "views" else 1
    what = split.point + (" (fp16)" if dtype == torch.float16 else "")
    if name == "views":
        description = (f"cached {what} of {passes} augmented views per training image ({passes} backbone passes "
                       f"over {len(train_y)} train images + 1 over {len(val_y)} val, {_mb(cache_bytes)}, "
                       f"{seconds:.1f} s)")
    else:
        description = (f"cached {what} (1 backbone pass over {len(train_y) + len(val_y)} images, "
                       f"{_mb(cache_bytes)}, {seconds:.1f} s)")
    setup = FastSetup(name, description,
                      _loader_like(loaders.train, train_d, shuffle=True),
                      _loader_like(loaders.val, CachedTensors(val_x, val_y), shuffle=False),
                      CachedForward(split.suffix), cache_bytes, seconds)
    log(f"fast path: {description}")
    return setup

"""Choosing the training route for a config, and building what ``fit`` needs for it.

``prepare`` is the one entry point the engine, ``lr_find`` and the benchmarks call: it picks
plain, decode or a cached route (``choose_path``), runs the passes and returns a ``FastSetup``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import TLCourseError
from ..archs import spec_of
from ..config import TrainConfig
from ..data import Loaders, resize_size
from ..feature_cache import FeatureCache
from ..files import megabytes
from .decoded import DecodedImages
from .jobs import estimate_bytes, frozen_features, plan_jobs, probe_inputs, run_jobs
from .passes import AUTO_MEMORY_LIMIT, CachedTensors, CachedViews, SampleViews
from .samples import base_dataset, draft_size, is_random_transform, samples_of
from .split import CachedForward, prefix_problem, split_model


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

    def pooled_val_features(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(pooled features, targets) of the validation images this route trained on, or None.

        Only the ``features`` and ``views`` (of pooled features) routes hold them; ``interpret``
        reuses them instead of running the backbone again.
        """
        if self.name not in ("features", "views"):
            return None
        dataset = self.val_loader.dataset
        tensors, targets = getattr(dataset, "tensors", None), getattr(dataset, "targets", None)
        if tensors is None or targets is None or tensors.dim() != 2:   # last-stage inputs are not pooled
            return None
        return tensors, torch.as_tensor(targets)


def _loader_like(template: DataLoader, dataset: Dataset, *, shuffle: bool, num_workers: int = 0) -> DataLoader:
    """A DataLoader with ``template``'s batch size and generator, so batches come in the same order."""
    return DataLoader(dataset, batch_size=template.batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=template.generator if shuffle else None, pin_memory=template.pin_memory,
                      drop_last=template.drop_last)


def choose_path(model: nn.Module, cfg: TrainConfig, train_dataset: Dataset) -> tuple[str, str | None, str]:
    """(path, cut point or None, reason) for a config; raises if a forced path is impossible."""
    cfg = cfg.resolved()
    fast, freeze = cfg.fast, cfg.freeze
    augmented = cfg.augment or is_random_transform(getattr(base_dataset(train_dataset), "transform", None))
    if fast == "off":
        return "plain", None, "fast='off'"
    if fast == "decode":
        if samples_of(train_dataset) is None:
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
        if not augmented and samples_of(train_dataset) is not None:
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
        augmented = cfg.augment or is_random_transform(getattr(base_dataset(train_set), "transform", None))
        size = loaders.image_size
        samples = {s: samples_of(d) for s, d in (("train", train_set), ("val", val_set))}
        estimate = sum(len(v) for v in samples.values()) * 3 * resize_size(size) ** 2 * (2 if augmented else 1)
        if cfg.fast == "auto" and estimate > AUTO_MEMORY_LIMIT:
            return plain(f"plain loop (decoding all images would take ~{megabytes(estimate)} of memory)")
        train_d = decode(samples["train"], size, augment=augmented, draft=draft_size(train_set))
        val_d = decode(samples["val"], size, augment=False, draft=draft_size(val_set))
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
    jobs = plan_jobs(name, point, dtype, loaders, cfg, probe)
    estimate = estimate_bytes(jobs, spec_of(model), loaders.image_size)
    stream = False
    if estimate > AUTO_MEMORY_LIMIT:
        if cache.writable and all(isinstance(job.dataset, SampleViews) for job in jobs):
            stream = True         # written to disk as computed, trained on from memory-mapped files
        elif cfg.fast == "auto":
            return plain(f"plain loop (caching {split.point} would take ~{megabytes(estimate)} of memory, over the "
                         f"{megabytes(AUTO_MEMORY_LIMIT)} limit of fast='auto', and the feature cache is off)")
    results, counts = first(lambda: run_jobs(jobs, model, cfg, device, cache, loaders.data_dir, stream=stream))
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
                      probe_data=probe_inputs(results) if probe else None, cache_line=cache.summary())
    log(f"fast path: {description}")
    log(setup.cache_line)
    return setup

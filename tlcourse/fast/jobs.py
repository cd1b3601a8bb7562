"""Planning the passes of a cached route, keying them in the feature cache, and running them.

A route needs some outputs (last-stage inputs, pooled features) of some images (train, val, the
augmented views); each is one cache entry. This module decides which, reads the ones the cache
has and runs one pass for the rest; ``frozen_features`` is the same for the linear probe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from ..archs import ArchSpec, spec_of
from ..config import TrainConfig
from ..data import Loaders
from ..feature_cache import FeatureCache, fingerprint_module
from ..pass_progress import pass_progress
from . import runtime as backbone_runtime
from .passes import (
    SampleViews,
    Sink,
    cache_bytes_estimate,
    parts_of,
    pass_workers,
    run_pass,
    run_passes,
    sample_views,
    view_seed,
)
from .samples import folder_samples


@dataclass
class CacheJob:
    """One pass: the images of one split (one view of them), and the outputs wanted from it."""

    split: str                          # train | val
    view: int                           # 0: un-augmented; k >= 1: the k-th augmented view
    dataset: Dataset
    outputs: dict                       # output name ("layer3" | "features") -> stored dtype
    stream_seed: int | None = None      # a dataset that is not an image folder: seed its random stream


def plan_jobs(name: str, point: str, dtype: torch.dtype, loaders: Loaders, cfg: TrainConfig,
              probe: bool) -> list[CacheJob]:
    """The passes of a cached route (and the probe's pooled features when ``probe``).

    With augmentation (``views``) view 0 of a training image is its un-augmented view (the
    validation transform), views 1..K-1 are seeded augmentations: evaluation sees view 0's
    distribution, and the probe gets its training features without an extra pass.
    """
    train_set, val_set = loaders.train.dataset, loaders.val.dataset
    clean = {point: dtype} | ({"features": torch.float32} if probe else {})
    train_samples, val_samples = folder_samples(train_set), folder_samples(val_set)

    val_job = CacheJob("val", 0, sample_views(val_samples, val_set) if val_samples is not None else val_set, clean)
    if name != "views":
        train = sample_views(train_samples, train_set) if train_samples is not None else train_set
        return [CacheJob("train", 0, train, clean), val_job]
    if train_samples is not None and val_samples is not None:
        jobs = [CacheJob("train", 0, sample_views(train_samples, val_set), clean)]
        jobs += [CacheJob("train", v, sample_views(train_samples, train_set, seed=cfg.seed, view=v), {point: dtype})
                 for v in range(1, cfg.fast_views)]
    else:   # any other dataset: K passes of its own (random) transform, each from a seeded stream
        jobs = [CacheJob("train", v, train_set, {point: dtype}, stream_seed=view_seed(cfg.seed, v, -1))
                for v in range(cfg.fast_views)]
        val_job.outputs = {point: dtype}
    return jobs + [val_job]


def estimate_bytes(jobs: list[CacheJob], spec: ArchSpec, image_size: int) -> int:
    return sum(cache_bytes_estimate(spec, len(job.dataset), image_size, out, dt)
               for job in jobs for out, dt in job.outputs.items())


_OUTPUT_NAMES = {"features": "pooled features", "layer3": "last-stage inputs"}


def run_jobs(jobs: list[CacheJob], model: nn.Module, cfg: TrainConfig, device: torch.device, cache: FeatureCache,
              data_dir, *, stream: bool) -> tuple[dict, dict]:
    """Run (or read from the cache) every job; ``({(split, view): ({output: tensor}, targets, keys)}, counts)``.

    Image-folder jobs are keyed in ``cache`` (and read from it when there); the rest run in one
    pass over all images. ``stream``: entries are written as computed and come back memory-mapped.
    ``counts``: passes run, entries read, images and seconds of the pass.
    """
    import torchvision

    parts = parts_of(model)
    spec = spec_of(model)
    example = torch.zeros(1, 3, cfg.image_size, cfg.image_size)
    images = sum(len(job.dataset) for job in jobs)
    fingerprints: dict[str, str] = {}
    if cache.enabled and any(isinstance(job.dataset, SampleViews) for job in jobs):
        fingerprints["layer3"] = fingerprint_module(parts[0][1])
        fingerprints["features"] = fingerprints["layer3"] + "+" + fingerprint_module(parts[1][1])

    def look_up(runtime: str) -> tuple[dict, list]:
        """Every job's keys (which name ``runtime``) and cache hits; the jobs with outputs still missing."""
        results, missing, counts["read"] = {}, [], 0
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
            if any(out not in got for out in job.outputs):
                missing.append(job)
        return results, missing

    # Keyed by the runtime planned (nothing loaded), so a warm run starts no session; a fallback
    # when loading it (a failed export) keys and looks up again under the runtime that will run.
    runtime = backbone_runtime.planned_runtime(parts, cfg.backbone_runtime, device, example, cache=cache,
                                               images=images)[0]
    counts = {"passes": 0, "read": 0, "pass_seconds": 0.0, "images": 0, "runtime": runtime}
    results, missing = look_up(runtime)
    if missing:
        loaded, run_parts = backbone_runtime.frozen_parts(parts, cfg.backbone_runtime, device, example, cache=cache,
                                                          arch=spec.name, images=images)
        if loaded != runtime:
            counts["runtime"] = runtime = loaded
            results, missing = look_up(runtime)
    todo = []                                   # (job, keys, sinks) still to compute
    for job in missing:
        got, _, keys = results[(job.split, job.view)]
        sinks = {}
        for out, dt in job.outputs.items():
            if out in got:
                continue
            kind = "un-augmented" if job.view == 0 and job.stream_seed is None else f"augmented, seed {cfg.seed}"
            what = (f"{spec.name} {_OUTPUT_NAMES[out]} ({str(dt).replace('torch.', '')}) | {job.split} view "
                    f"{job.view} ({kind}) | {len(job.dataset)} images | {data_dir}")
            writer = cache.writer(keys[out], what) if keys[out] is not None else None
            sinks[out] = Sink(len(job.dataset), dt, writer, cache, in_memory=not (stream and writer))
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


def _finish(results: dict, job: CacheJob, keys: dict, sinks: dict, targets: torch.Tensor) -> None:
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
    if folder_samples(loaders.train.dataset) is None or folder_samples(loaders.val.dataset) is None:
        return None
    jobs = plan_jobs("views", "features", torch.float32, loaders, cfg.replace(fast_views=1), probe=True)
    results, _ = run_jobs(jobs, model, cfg, device, cache, loaders.data_dir, stream=False)
    return probe_inputs(results)


def probe_inputs(results: dict) -> tuple | None:
    """(train features, train targets, val features, val targets, (train key, val key) or None)."""
    (train, train_y, train_keys), (val, val_y, val_keys) = results[("train", 0)], results[("val", 0)]
    if "features" not in train or "features" not in val:
        return None
    keys = (train_keys["features"], val_keys["features"])
    return train["features"], train_y, val["features"], val_y, (keys if None not in keys else None)

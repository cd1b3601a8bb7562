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

The package, one job per module: ``split`` (cutting a model, checking the prefix is frozen),
``passes`` (one pass over the images into memory or the feature cache), ``decoded`` (the
``decode`` route), ``jobs`` (which passes a route needs, their cache keys, running them),
``routes`` (choosing the route; ``prepare``), ``samples`` (the images behind a dataset).
Tuning constants are read where they are used (patch ``tlcourse.fast.routes.AUTO_MEMORY_LIMIT``, not the package).

Public entry points: ``prepare`` (a route for a run: a ``FastSetup``); ``split_model`` and
``compute_cache`` (one pass of a prefix, as ``interpret`` does); ``frozen_features`` (the probe's
input); ``CacheJob``, ``sample_views``, ``folder_samples`` and ``run_jobs`` (filling the feature
cache by hand, as the benchmarks do); ``samples_of``/``draft_size`` (the images behind a dataset).
"""

from __future__ import annotations

from ..config import FAST_MODES
from .decoded import DecodedImages
from .jobs import CacheJob, frozen_features, run_jobs
from .passes import (
    CachedTensors,
    CachedViews,
    SampleViews,
    Sink,
    cache_bytes_estimate,
    compute_cache,
    parts_of,
    pass_workers,
    run_pass,
    run_passes,
    sample_views,
    view_seed,
)
from .routes import FastSetup, choose_path, prepare
from .samples import base_dataset, draft_size, folder_samples, samples_of
from .split import CachedForward, Pool, Split, prefix_problem, split_model

__all__ = ["FAST_MODES", "CacheJob", "CachedForward", "CachedTensors", "CachedViews", "DecodedImages", "FastSetup",
           "Pool", "SampleViews", "Sink", "Split", "base_dataset", "cache_bytes_estimate", "choose_path",
           "compute_cache", "draft_size", "folder_samples", "frozen_features", "parts_of", "pass_workers",
           "prefix_problem", "prepare", "run_jobs", "run_pass", "run_passes", "sample_views", "samples_of",
           "split_model", "view_seed"]

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
"""

from __future__ import annotations

from ..config import FAST_MODES
from .decoded import DecodedImages
from .jobs import frozen_features
from .passes import (
    CachedTensors,
    CachedViews,
    SampleViews,
    cache_bytes_estimate,
    compute_cache,
    parts_of,
    pass_workers,
    run_pass,
    run_passes,
    view_seed,
)
from .routes import FastSetup, choose_path, prepare
from .split import CachedForward, Pool, Split, prefix_problem, split_model

__all__ = ["FAST_MODES", "CachedForward", "CachedTensors", "CachedViews", "DecodedImages", "FastSetup", "Pool",
           "SampleViews", "Split", "cache_bytes_estimate", "choose_path", "compute_cache", "frozen_features",
           "parts_of", "pass_workers", "prefix_problem", "prepare", "run_pass", "run_passes", "split_model",
           "view_seed"]

# private names still imported by interpret.py and two benchmarks (replaced by public ones next)
from .jobs import _Job, _run_jobs  # noqa: E402, F401
from .passes import _Sink  # noqa: E402, F401
from .samples import _draft, _folder_samples, _inner, _samples  # noqa: E402, F401

"""Fast paths for transfer learning on a CPU (being split into one module per job; the code is in passes.py)."""

from .passes import *  # noqa: F403
from .passes import (  # noqa: F401
    AUTO_MEMORY_LIMIT,
    SampleViews,
    _draft,
    _folder_samples,
    _inner,
    _Job,
    _run_jobs,
    _samples,
    _Sink,
    frozen_features,
    parts_of,
    pass_workers,
    run_pass,
)

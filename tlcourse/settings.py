"""Where things live, and the environment variables that move them.

Every setting has one environment variable so that classrooms, offline machines and CI can
redirect data and weights without editing code or notebooks.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Official archive of the ants/bees dataset used by the PyTorch transfer-learning tutorial.
HYMENOPTERA_URL = "https://download.pytorch.org/tutorial/hymenoptera_data.zip"
#: sha256 of that archive (as distributed; the same bytes are mirrored for offline machines).
HYMENOPTERA_SHA256 = "db9ea515f880b0f47da43b1c6cf3973c8d0f365831a39708100034e8c4ec2773"

ENV_DATA_DIR = "TLCOURSE_DATA_DIR"
ENV_DATA_MIRROR = "TLCOURSE_DATA_MIRROR"
ENV_WEIGHTS_DIR = "TLCOURSE_WEIGHTS_DIR"
ENV_CHECKPOINTS_DIR = "TLCOURSE_CHECKPOINTS_DIR"
#: Seconds a process of a multi-process run waits for the others before giving up (``--dist-timeout``).
ENV_DIST_TIMEOUT = "TLCOURSE_DIST_TIMEOUT"
DIST_TIMEOUT_DEFAULT = 600
ENV_CACHE_DIR = "TLCOURSE_CACHE_DIR"


def project_root() -> Path:
    """The repository root when running from a checkout, else the current directory."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists() and (here / "tlcourse").is_dir():
        return here
    return Path.cwd()


def data_root() -> Path:
    return Path(os.environ.get(ENV_DATA_DIR) or project_root() / "data")


def checkpoints_root() -> Path:
    return Path(os.environ.get(ENV_CHECKPOINTS_DIR) or project_root() / "checkpoints")


def cache_root() -> Path:
    """Where the persistent feature cache lives (``TLCOURSE_CACHE_DIR``, else ``<data root>/cache``)."""
    return Path(os.environ.get(ENV_CACHE_DIR) or data_root() / "cache")


def data_mirror() -> str | None:
    """A local path or URL to fetch the dataset archive from instead of the official URL."""
    return os.environ.get(ENV_DATA_MIRROR) or None


def weights_dir() -> Path | None:
    """A folder of local weight files for offline classrooms (``TLCOURSE_WEIGHTS_DIR``)."""
    value = os.environ.get(ENV_WEIGHTS_DIR)
    return Path(value) if value else None

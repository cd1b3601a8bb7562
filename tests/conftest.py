"""Shared fixtures: tiny generated image folders, and the real dataset/weights when available.

Nothing here touches the network unless no mirror is configured and the real dataset is asked
for; then one download is tried and the test is skipped with the reason if it fails.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from tlcourse import TLCourseError
from tlcourse.data import fetch
from tlcourse.models import find_local_weights
from tlcourse.settings import ENV_CACHE_DIR, ENV_DATA_MIRROR, ENV_WEIGHTS_DIR, data_root
from tlcourse.synthetic import make_image_folder  # noqa: F401  (tests import it from conftest)

# Keep the two CPU cores for the test process itself; tests use num_workers=0.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A feature cache of its own for every test session (inherited by notebook kernels), so no
# test reads what an earlier session or a learner's run left in data/cache.
_SESSION_CACHE = tempfile.mkdtemp(prefix="tlcourse-test-cache-")
os.environ[ENV_CACHE_DIR] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): on a
    shared 2-core machine two spinning threads are many times slower, and torchrun workers get one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def interrupt_after(monkeypatch, stop_after: int, **cfg) -> None:
    """Run ``train(**cfg)`` and press Ctrl-C right after epoch ``stop_after``'s checkpoint is saved."""
    from tlcourse.checkpoints import CheckpointSaver
    from tlcourse.engine import train

    save = CheckpointSaver.save

    def save_then_stop(self, model, *, history, **kwargs):
        save(self, model, history=history, **kwargs)
        if history[-1]["epoch"] == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointSaver, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(**cfg)
    monkeypatch.setattr(CheckpointSaver, "save", save)


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """Two classes, 6 train + 6 val images each, 40x32 px."""
    return make_image_folder(tmp_path / "tiny")


@pytest.fixture(scope="session")
def tiny_data_session(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny"), per_class=8)


@pytest.fixture(scope="session")
def hymenoptera_dir() -> Path:
    """The real ants/bees dataset under data/, fetched through tlcourse's own code (or skip)."""
    try:
        return fetch(data_root(), progress=False)
    except TLCourseError as exc:
        mirror = os.environ.get(ENV_DATA_MIRROR)
        pytest.skip(f"hymenoptera dataset unavailable (mirror={mirror!r}): {exc}")


@pytest.fixture(scope="session")
def mobilenet_weights() -> Path:
    """The offline ImageNet-pretrained MobileNetV2 backbone from TLCOURSE_WEIGHTS_DIR (or skip)."""
    path = find_local_weights("mobilenet_v2")
    if path is None:
        pytest.skip(f"no mobilenet_v2*.pth in {ENV_WEIGHTS_DIR}={os.environ.get(ENV_WEIGHTS_DIR)!r}")
    return path

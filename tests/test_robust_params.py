"""Bad parameters get a one-line ``TLCourseError`` naming the parameter, before any work starts."""

from __future__ import annotations

import pytest

from tlcourse import TLCourseError
from tlcourse.data import make_loaders
from tlcourse.freeze import apply_freeze
from tlcourse.heads import make_head
from tlcourse.models import build_model
from tlcourse.optim import make_optimizer


@pytest.fixture(scope="module")
def resnet():
    return build_model("resnet18", 2, weights=None)


LOADER_CASES = [
    (dict(batch_size=0), "batch_size=0 must be an integer >= 1"),
    (dict(batch_size=-4), "batch_size=-4 must be an integer >= 1"),
    (dict(batch_size=2.5), "batch_size=2.5 must be an integer >= 1"),
    (dict(image_size=16), "image_size=16 is too small for the network: it downsamples by 32, use at least 32"),
    (dict(image_size=0), "image_size=0 is too small"),
    (dict(num_workers=-1), "num_workers=-1 must be an integer >= 0"),
    (dict(subset=0), "subset=0 must be an integer >= 1, or None"),
    (dict(bad_images="ignore"), "bad_images='ignore' is not a policy; choose 'error' or 'skip'"),
    (dict(bad_images="skip", verify_images=False), "bad_images='skip' needs verify_images=True"),
]


@pytest.mark.parametrize("kwargs, expected", LOADER_CASES, ids=[str(k) for k, _ in LOADER_CASES])
def test_loader_parameters(tiny_data, kwargs, expected):
    params = {"image_size": 32, "batch_size": 4, **kwargs}
    with pytest.raises(TLCourseError) as info:
        make_loaders(tiny_data, **params)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_parameters_are_checked_before_the_folder(tmp_path):
    """A bad setting is reported even when the folder is also wrong: no file work is wasted."""
    with pytest.raises(TLCourseError, match="batch_size=0"):
        make_loaders(tmp_path / "missing", batch_size=0)


def test_smallest_valid_settings_work(tiny_data):
    loaders = make_loaders(tiny_data, image_size=32, batch_size=1, subset=2)
    images, _ = next(iter(loaders.train))
    assert images.shape == (1, 3, 32, 32)
    assert len(loaders.train.dataset) == 2


def test_unknown_arch():
    with pytest.raises(TLCourseError,
                       match=r"arch='resnet99' is not supported; choose one of resnet18, .*mobilenet_v2"):
        build_model("resnet99", 2, weights=None)


def test_unknown_freeze_preset(resnet):
    with pytest.raises(TLCourseError, match=r"freeze='middle' is not a preset; choose one of head, last_stage, all"):
        apply_freeze(resnet, "middle")


def test_unknown_head():
    with pytest.raises(TLCourseError, match=r"head='conv' is not supported; choose one of linear, binary, mlp"):
        make_head(512, 2, head="conv")
    with pytest.raises(TLCourseError, match=r"num_classes=1: a classifier needs at least 2 classes"):
        make_head(512, 1)
    with pytest.raises(TLCourseError, match=r"head='binary' is a single logit for 2 classes, not 3"):
        make_head(512, 3, head="binary")


@pytest.mark.parametrize("lr", [0, -1e-3])
def test_learning_rate_not_positive(resnet, lr):
    with pytest.raises(TLCourseError, match=rf"lr={lr} must be > 0"):
        make_optimizer(resnet, "adam", lr=lr)

"""tlcourse.device: device selection with an override, one seeding helper."""

from __future__ import annotations

import random

import pytest
import torch

from tlcourse import TLCourseError
from tlcourse.device import seed_everything, select_device


def _no_mps(monkeypatch):
    mps = getattr(torch.backends, "mps", None)
    if mps is not None:
        monkeypatch.setattr(mps, "is_available", lambda: False)


def test_cpu():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_on_this_machine():
    device = select_device("auto")
    assert select_device(None) == device
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        assert device.type == "mps"
    else:
        assert device == torch.device("cpu")


def test_auto_order(monkeypatch):
    _no_mps(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")


def test_missing_accelerators_error_clearly(monkeypatch):
    _no_mps(monkeypatch)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TLCourseError, match="device='cuda'.*no CUDA GPU"):
        select_device("cuda")
    with pytest.raises(TLCourseError, match="device='cuda'"):
        select_device("cuda:0")
    with pytest.raises(TLCourseError, match="device='mps'"):
        select_device("mps")
    with pytest.raises(TLCourseError, match="'gpu' is not a device name"):
        select_device("gpu")


def test_seed_everything_is_reproducible():
    seed_everything(7)
    a = (torch.rand(5), random.random())
    seed_everything(7)
    b = (torch.rand(5), random.random())
    seed_everything(8)
    c = torch.rand(5)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], c)
    g1, g2 = seed_everything(3), seed_everything(3)
    assert torch.equal(torch.randperm(10, generator=g1), torch.randperm(10, generator=g2))

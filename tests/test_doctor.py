"""``python -m tlcourse doctor``: each check on present, missing and broken setups, and the command.

The network is never touched: ``reachable`` is replaced; data, weights and the hub cache point
into tmp folders.
"""

from __future__ import annotations

import subprocess
from collections import namedtuple

import pytest
import torch

from tlcourse import doctor, offline
from tlcourse.cli import main
from tlcourse.data import DATASET_NAME, MARKER
from tlcourse.models import weights_cache_path
from tlcourse.settings import ENV_DATA_DIR, ENV_DATA_MIRROR, ENV_WEIGHTS_DIR

ENABLED = """JupyterLab v4.6.6
/venv/share/jupyter/labextensions
        jupyterlab_pygments v0.3.0 \x1b[32menabled\x1b[0m \x1b[32mOK\x1b[0m (python, jupyterlab_pygments)
        @jupyter-widgets/jupyterlab-manager v5.0.16 \x1b[32menabled\x1b[0m \x1b[32mOK\x1b[0m (python, \
jupyterlab_widgets)
"""


@pytest.fixture
def offline_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(offline, "reachable", lambda url: False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "data"))
    for name in (ENV_DATA_MIRROR, ENV_WEIGHTS_DIR):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_widgets_extension_states_are_parsed():
    assert doctor.parse_labextensions(ENABLED) == ("5.0.16", "enabled")
    disabled = ENABLED.replace("\x1b[32menabled\x1b[0m \x1b[32mOK", "\x1b[31mdisabled\x1b[0m \x1b[32mOK")
    assert doctor.parse_labextensions(disabled) == ("5.0.16", "disabled")
    listed_disabled = ENABLED + "\n\nDisabled extensions:\n    @jupyter-widgets/jupyterlab-manager (all plugins)\n"
    assert doctor.parse_labextensions(listed_disabled) == ("5.0.16", "disabled")
    assert doctor.parse_labextensions("JupyterLab v4.6.6\n") is None


def test_widgets_extension_check_gives_the_fix(monkeypatch):
    disabled = ENABLED + "\nDisabled extensions:\n    @jupyter-widgets/jupyterlab-manager (all plugins)\n"
    monkeypatch.setattr(doctor.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, "", disabled))
    row = doctor.check_widgets_extension()
    assert row.status == doctor.FAIL and "static text" in row.detail
    assert row.fix.endswith("labextension enable @jupyter-widgets/jupyterlab-manager")
    monkeypatch.setattr(doctor.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, "", ""))
    assert "pip install" in doctor.check_widgets_extension().fix


def test_dataset_present_mirror_download_or_missing(offline_machine, monkeypatch):
    row = doctor.check_dataset()
    assert row.status == doctor.FAIL and ENV_DATA_MIRROR in row.fix and "unreachable" in row.detail
    mirror = offline_machine / "hymenoptera_data.zip"
    monkeypatch.setenv(ENV_DATA_MIRROR, str(mirror))
    assert doctor.check_dataset().status == doctor.FAIL  # a mirror that does not exist
    mirror.write_bytes(b"zip")
    assert doctor.check_dataset().status == doctor.OK and ENV_DATA_MIRROR in doctor.check_dataset().detail
    monkeypatch.delenv(ENV_DATA_MIRROR)
    monkeypatch.setattr(offline, "reachable", lambda url: True)
    assert "downloadable" in doctor.check_dataset().detail
    target = offline_machine / "data" / DATASET_NAME
    target.mkdir(parents=True)
    assert doctor.check_dataset().status == doctor.FAIL  # an interrupted fetch
    (target / MARKER).write_text("")
    assert doctor.check_dataset().detail == f"present in {target}"


def test_weights_cache_fallback_or_none(offline_machine, monkeypatch):
    row = doctor.check_weights()
    assert row.status == doctor.FAIL and "random weights" in row.detail and ENV_WEIGHTS_DIR in row.fix
    folder = offline_machine / "weights"
    folder.mkdir()
    (folder / "mobilenet_v2_imagenet_backbone.pth").write_bytes(b"")
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(folder))
    row = doctor.check_weights()
    assert row.status == doctor.WARN and "mobilenet_v2_imagenet_backbone.pth" in row.detail
    assert "resnet18-f37072fd.pth" in row.fix
    cache = weights_cache_path("resnet18")
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"")
    row = doctor.check_weights()
    assert row == doctor.Check("pretrained weights", doctor.OK, "resnet18 DEFAULT from torch hub cache")


def test_torch_pair_mismatch_and_low_disk(monkeypatch):
    requires = doctor.metadata.requires
    monkeypatch.setattr(doctor.metadata, "requires",
                        lambda dist: ["torch (>=99.0)"] if dist == "torchvision" else requires(dist))
    row = doctor.check_torch()
    assert row.status == doctor.FAIL and "torch>=99.0" in row.detail and "pip install" in row.fix
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 50 * 10**6))
    row = doctor.check_disk()
    assert row.status == doctor.FAIL and "0.1 GB free" in row.detail and "TLCOURSE_CHECKPOINTS_DIR" in row.fix


def test_a_crashing_check_is_a_row_and_the_table_says_what_to_fix():
    def broken():
        raise ImportError("libtorch_cpu.so: cannot open shared object file")

    rows = doctor.run_checks((("python", doctor.check_python), ("torch/torchvision", broken)))
    assert [r.status for r in rows] == [doctor.OK, doctor.FAIL] and "libtorch_cpu.so" in rows[1].detail
    table = doctor.format_table(rows)
    assert "fix: " in table and table.endswith("the course cannot run until these are fixed: torch/torchvision")


def test_doctor_command_prints_every_row(offline_machine, capsys):
    code = main(["doctor"])
    out = capsys.readouterr().out
    for name, _ in doctor.CHECKS:
        assert f"\n{name} " in f"\n{out}", name
    assert code == (1 if " FAIL " in out else 0) == 1  # offline, no dataset: it cannot run
    assert "dataset" in out.splitlines()[-1]

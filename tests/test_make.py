"""The Makefile picks up an offline classroom share beside the checkout (``../shared``), and never
overrides a variable the user set."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOW = 'show: ; @echo "weights=$$TLCOURSE_WEIGHTS_DIR|mirror=$$TLCOURSE_DATA_MIRROR"'

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _make_env(project: Path, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("TLCOURSE_WEIGHTS_DIR", "TLCOURSE_DATA_MIRROR")}
    proc = subprocess.run(["make", "-s", "-C", str(project), "--eval", SHOW, "show"], env={**clean, **env},
                          capture_output=True, text=True, timeout=30, check=True)
    return proc.stdout.strip()


def test_shared_folder_beside_the_checkout_is_used_unless_set(tmp_path):
    project, shared = tmp_path / "course", tmp_path / "shared"
    project.mkdir()
    shutil.copy(ROOT / "Makefile", project / "Makefile")
    assert _make_env(project) == "weights=|mirror="  # no share: nothing is set
    (shared / "weights").mkdir(parents=True)
    (shared / "datasets").mkdir()
    (shared / "weights" / "mobilenet_v2_imagenet_backbone.pth").write_bytes(b"")
    (shared / "datasets" / "hymenoptera_data.zip").write_bytes(b"")
    expected = f"weights={shared / 'weights'}|mirror={shared / 'datasets' / 'hymenoptera_data.zip'}"
    assert _make_env(project) == expected
    # variables the user set win, even when empty
    assert _make_env(project, TLCOURSE_WEIGHTS_DIR="/mine", TLCOURSE_DATA_MIRROR="") == "weights=/mine|mirror="

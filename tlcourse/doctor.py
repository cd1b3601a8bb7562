"""``python -m tlcourse doctor``: one table of what the course needs, whether it is there, and the fix.

Each check is a small function returning a ``Check`` row; a check that crashes becomes a FAIL
row with the error, so a broken install is reported rather than raised. Status:

* ``ok``   — there;
* ``WARN`` — the course runs, but not as intended (e.g. offline, training notebooks fall back
  to another pretrained backbone);
* ``FAIL`` — the course cannot run (or its notebooks cannot be used in JupyterLab) until fixed.

``doctor`` exits with status 1 when any row FAILs. ``make lab`` runs it first. Nothing heavy is
imported at module level: a broken torch must still give a table.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

OK, WARN, FAIL = "ok", "WARN", "FAIL"
MIN_PYTHON = (3, 10)
#: Free space the course needs: the dataset (~0.1 GB while fetching), every notebook's checkpoints
#: (~0.5 GB for a full ResNet-18 course) and the feature caches, with room to spare.
MIN_FREE_BYTES = 1 << 30
WIDGETS_EXTENSION = "@jupyter-widgets/jupyterlab-manager"
INSTALL = f"{sys.executable} -m pip install -e '.[dev]' (or `make install`) in the checkout"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- the checks

def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] < MIN_PYTHON:
        return Check("python", FAIL, f"{version} at {sys.executable}",
                     f"install Python {'.'.join(map(str, MIN_PYTHON))} or newer, then `make clean-venv course`")
    return Check("python", OK, f"{version} at {sys.executable}")


def _unmet(dist: str, requirement_of: str) -> str | None:
    """``"torch>=2.14,<2.15"`` when ``requirement_of`` declares a requirement on ``dist`` that its
    installed version does not meet (None when met or not declared)."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    installed = _version(dist)
    for text in metadata.requires(requirement_of) or []:
        req = Requirement(text)
        if req.name == dist and (req.marker is None or req.marker.evaluate({"extra": ""})):
            if installed is None or Version(Version(installed).public) not in req.specifier:
                return f"{dist}{req.specifier}"
    return None


def check_torch() -> Check:
    name = "torch/torchvision"
    try:
        import torch
        import torchvision
    except Exception as exc:  # missing, or a broken binary
        return Check(name, FAIL, f"cannot import torch/torchvision ({type(exc).__name__}: {exc})", INSTALL)
    detail = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    pairs = (("torch", "torchvision"), ("torch", "tlcourse"), ("torchvision", "tlcourse"))  # (dist, declared by)
    wanted = [unmet for dist, of in pairs if _version(of) and (unmet := _unmet(dist, of))]
    try:  # torchvision's compiled operators load only against the torch they were built for
        torchvision.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    except Exception as exc:
        wanted.append(f"torchvision ops ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
    if wanted:
        return Check(name, FAIL, f"{detail}: not a matching pair, needs {', '.join(wanted)}",
                     f"reinstall the pair pinned in pyproject.toml: {INSTALL}")
    return Check(name, OK, f"{detail} (a matching pair)")


def check_device() -> Check:
    import torch

    if torch.cuda.is_available():
        return Check("device", OK, f"cuda ({torch.cuda.get_device_name(0)})")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return Check("device", OK, "mps (Apple silicon)")
    return Check("device", OK, f"cpu, {torch.get_num_threads()} threads (no CUDA/MPS: the cached fast path "
                               "keeps the course's training to minutes)")


def check_jupyterlab() -> Check:
    version = _version("jupyterlab")
    if version is None:
        return Check("jupyterlab", FAIL, "not installed (needed by `make lab`)", INSTALL)
    return Check("jupyterlab", OK, version)


def parse_labextensions(text: str) -> tuple[str, str] | None:
    """``(version, "enabled"|"disabled")`` of the widgets extension in ``jupyter labextension list`` output."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    listing, _, disabled_block = plain.partition("Disabled extensions:")
    state = None
    for line in listing.splitlines():
        parts = line.split()
        if parts[:1] == [WIDGETS_EXTENSION] and len(parts) >= 3:
            state = (parts[1].lstrip("v"), "disabled" if "disabled" in parts else "enabled")
    if state and WIDGETS_EXTENSION in disabled_block:
        state = (state[0], "disabled")
    return state


def check_widgets_extension() -> Check:
    name = "widgets extension"
    widgets = _version("ipywidgets")
    proc = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True,
                          text=True, timeout=120)
    found = parse_labextensions(proc.stdout + proc.stderr)
    if found is None:
        return Check(name, FAIL, f"{WIDGETS_EXTENSION} is not installed: notebook 02's freeze panel shows as "
                                 "static text", f"{sys.executable} -m pip install 'ipywidgets>=8.1,<9'")
    version, state = found
    if state == "disabled":
        return Check(name, FAIL, f"{WIDGETS_EXTENSION} {version} is disabled: notebook 02's freeze panel shows "
                                 "as static text",
                     f"{sys.executable} -m jupyter labextension enable {WIDGETS_EXTENSION}")
    return Check(name, OK, f"{WIDGETS_EXTENSION} {version} enabled (ipywidgets {widgets})")


def check_kernel() -> Check:
    from . import TLCourseError
    from .course import KERNEL_NAME, kernel_command

    try:
        kernel_command()
    except TLCourseError as exc:
        return Check("kernel", FAIL, str(exc).split("; run:")[0],
                     str(exc).split("; run: ", 1)[-1] if "; run: " in str(exc) else INSTALL)
    return Check("kernel", OK, f"{KERNEL_NAME} runs this Python (ipykernel {_version('ipykernel')})")


def check_dataset() -> Check:
    from .data import DATASET_NAME, MARKER, _is_url
    from .offline import reachable
    from .settings import ENV_DATA_MIRROR, HYMENOPTERA_URL, data_mirror, data_root

    target = data_root() / DATASET_NAME
    mirror = data_mirror()
    fix = (f"set {ENV_DATA_MIRROR} to a local copy of {Path(HYMENOPTERA_URL).name} (or run `make data` once "
           "while online)")
    if (target / MARKER).exists():
        return Check("dataset", OK, f"present in {target}")
    if target.exists():
        return Check("dataset", FAIL, f"{target} exists but is incomplete (an interrupted fetch?)",
                     f"delete {target}, then `make data`")
    if mirror:
        if _is_url(mirror):
            if reachable(mirror):
                return Check("dataset", OK, f"not fetched yet; will be downloaded from {ENV_DATA_MIRROR}={mirror}")
            return Check("dataset", FAIL, f"not fetched yet, and {ENV_DATA_MIRROR}={mirror} is unreachable", fix)
        if Path(mirror).expanduser().is_file():
            return Check("dataset", OK, f"not fetched yet; will be copied from {ENV_DATA_MIRROR}={mirror}")
        return Check("dataset", FAIL, f"not fetched yet, and {ENV_DATA_MIRROR}={mirror} does not exist", fix)
    if reachable(HYMENOPTERA_URL):
        return Check("dataset", OK, f"not fetched yet; downloadable from {HYMENOPTERA_URL}")
    return Check("dataset", FAIL, f"not in {target}, no {ENV_DATA_MIRROR}, and {HYMENOPTERA_URL} is unreachable", fix)


def check_weights() -> Check:
    from .models import weights_cache_path
    from .offline import choose_weights
    from .settings import ENV_WEIGHTS_DIR

    name = "pretrained weights"
    course = choose_weights("resnet18", "DEFAULT", pretrained_needed=True, echo=None)
    file = weights_cache_path("resnet18").name
    fix = f"put {file} in {weights_cache_path('resnet18').parent} or in {ENV_WEIGHTS_DIR} (or run once online)"
    if course.arch == "resnet18" and course.pretrained:
        return Check(name, OK, f"resnet18 DEFAULT from {course.source}" + (
            f" ({Path(course.weights).name})" if course.source == ENV_WEIGHTS_DIR else ""))
    if course.pretrained:
        return Check(name, WARN, f"no resnet18 ImageNet weights here (offline): training notebooks use "
                                 f"{course.label} from {course.source}; structure notebooks use random weights",
                     f"for the ResNet-18 results: {fix}")
    return Check(name, FAIL, "no pretrained weights here and no download (offline): training notebooks would "
                             "train from random weights",
                 f"{fix}; or a mobilenet_v2*.pth backbone in {ENV_WEIGHTS_DIR}")


def check_disk() -> Check:
    from .settings import cache_root, checkpoints_root, data_root

    def existing(path: Path) -> Path:
        path = path.resolve()
        while not path.exists() and path != path.parent:
            path = path.parent
        return path

    folders = {"data": data_root(), "checkpoints": checkpoints_root(), "feature cache": cache_root()}
    free = {label: shutil.disk_usage(existing(path)).free for label, path in folders.items()}
    low = [label for label, value in free.items() if value < MIN_FREE_BYTES]
    detail = ", ".join(f"{free[label] / 1e9:.1f} GB free for {label} ({path})" for label, path in folders.items())
    if low:
        return Check("free disk", FAIL, f"{detail}; the course needs about {MIN_FREE_BYTES / 1e9:.0f} GB",
                     "free some space (python -m tlcourse cache clear empties the feature cache), or point "
                     "TLCOURSE_DATA_DIR / TLCOURSE_CHECKPOINTS_DIR / TLCOURSE_CACHE_DIR at a larger disk")
    return Check("free disk", OK, detail)


#: (row name, check) in table order; the name labels the row when the check itself crashes.
CHECKS = (("python", check_python), ("torch/torchvision", check_torch), ("device", check_device),
          ("jupyterlab", check_jupyterlab), ("widgets extension", check_widgets_extension), ("kernel", check_kernel),
          ("dataset", check_dataset), ("pretrained weights", check_weights), ("free disk", check_disk))


def run_checks(checks=CHECKS) -> list[Check]:
    rows = []
    for name, check in checks:
        try:
            rows.append(check())
        except Exception as exc:  # a check must never stop the table
            rows.append(Check(name, FAIL,
                              f"the check itself failed: {type(exc).__name__}: {str(exc).strip()[:200]}", INSTALL))
    return rows


def format_table(rows: list[Check]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [f"{'check':<{width}}  status  detail"]
    for r in rows:
        lines.append(f"{r.name:<{width}}  {r.status:<6}  {r.detail}")
        if r.fix and r.status != OK:
            lines.append(f"{'':<{width}}  {'':<6}  fix: {r.fix}")
    failed = [r.name for r in rows if r.status == FAIL]
    if failed:
        lines.append(f"the course cannot run until these are fixed: {', '.join(failed)}")
    elif any(r.status == WARN for r in rows):
        lines.append("the course can run (see WARN above)")
    else:
        lines.append("the course can run")
    return "\n".join(lines)

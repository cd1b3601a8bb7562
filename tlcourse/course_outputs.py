"""The outputs committed with the notebooks: only ``# NBVAL_CHECK_OUTPUT`` cells keep theirs.

``python -m tlcourse course --refresh-outputs`` re-executes notebooks offline-safe and stores
cleaned copies (see notebooks/README.md): deterministic outputs that nbval compares, nothing
that depends on this machine.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from . import TLCourseError
from .course_plan import CHECK_MARKER, ENV_SMOKE, ENV_WEIGHTS, KERNEL_NAME
from .course_runner import _engine_options, _kernel_env, kernel_command

_MACHINE_PATH = re.compile(r"(/work/|/tmp/|/root/|/home/|/Users/|[A-Za-z]:\\\\)")


def clean_notebook(nb) -> object:
    """Keep outputs only on ``# NBVAL_CHECK_OUTPUT`` cells; drop run metadata, widget state, counters.

    Those outputs are deterministic (structure, counts, reports) and nbval checks them; anything
    that depends on hardware, timing or weights is not stored. Machine paths are refused.
    """
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)
    nb.metadata.get("language_info", {}).pop("version", None)  # the author's Python, not the lesson's
    counter = 0
    for cell in nb.cells:
        for key in ("papermill", "execution", "ExecuteTime"):
            cell.metadata.pop(key, None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
        if cell.cell_type != "code":
            continue
        keep = CHECK_MARKER in cell.source
        cell.outputs = [o for o in cell.outputs if o.get("output_type") in ("stream", "execute_result")] if keep else []
        # nbval treats a cell without a count as unrun: number cells as one top-to-bottom run does.
        counter += 1
        cell.execution_count = counter if cell.outputs else None
        for out in cell.outputs:
            if "execution_count" in out:
                out["execution_count"] = counter
            text = out.get("text", "") + "".join(str(v) for v in out.get("data", {}).values())
            if _MACHINE_PATH.search(text):
                raise TLCourseError(f"a stored output contains a machine path ({_MACHINE_PATH.search(text).group(0)}); "
                                    f"do not mark that cell {CHECK_MARKER!r}")
            if out.get("name") == "stderr":
                raise TLCourseError(f"a {CHECK_MARKER} cell wrote to stderr; keep checked cells warning-free")
    return nb


def refresh_outputs(paths: list[Path], *, echo=print) -> None:
    """Re-execute notebooks offline-safe (``TLCOURSE_WEIGHTS=none``, smoke) and store cleaned outputs."""
    import nbformat
    import papermill as pm

    kernel_command()
    saved = {k: os.environ.get(k) for k in (ENV_WEIGHTS, ENV_SMOKE)}
    os.environ[ENV_WEIGHTS], os.environ[ENV_SMOKE] = "none", "1"
    try:
        with tempfile.TemporaryDirectory() as tmp, _kernel_env():
            for path in paths:
                out = Path(tmp) / path.name
                pm.execute_notebook(str(path), str(out), kernel_name=KERNEL_NAME, cwd=str(path.parent),
                                    progress_bar=False, **_engine_options())
                nb = clean_notebook(nbformat.read(out, as_version=4))
                nbformat.write(nb, path)
                echo(f"refreshed {path.name}")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""Run the course headless: every ``notebooks/NN_*.ipynb`` in order, executed with papermill.

``python -m tlcourse course`` writes the executed copies to ``notebooks/executed/`` (sources stay
untouched), prints one progress line per notebook and a summary table (notebook, status, time,
weights, key result). Kernels start in the ``notebooks/`` folder, like JupyterLab and nbval, and
run the same Python interpreter and the same ``tlcourse`` as the runner. What each notebook gets
is planned by ``tlcourse.course_plan``; the dataset is fetched once before any notebook starts,
so a missing dataset is one error, not one per notebook.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import TLCourseError
from .course_plan import (
    KERNEL_NAME,
    KEY_RESULT_PREFIX,
    Job,
    check_output_folder,
    check_parameter_names,
    ensure_dataset,
    find_notebooks,
    plan,
)
from .course_summary import now, save_summary
from .params import check_parameter_values

# --------------------------------------------------------------------------- the kernel

def kernel_command() -> list[str]:
    """The command the ``python3`` kernel starts with; it must run this very interpreter.

    jupyter_client replaces a kernelspec's ``python`` with ``sys.executable``; a user-level
    kernelspec with another absolute interpreter would silently run another environment.
    """
    from jupyter_client.manager import KernelManager

    try:
        cmd = KernelManager(kernel_name=KERNEL_NAME).format_kernel_cmd()
    except Exception as exc:  # NoSuchKernel
        raise TLCourseError(f"no {KERNEL_NAME!r} Jupyter kernel ({exc}); "
                            f"run: {sys.executable} -m pip install ipykernel") from exc
    if Path(cmd[0]).resolve() != Path(sys.executable).resolve():
        raise TLCourseError(
            f"the {KERNEL_NAME!r} Jupyter kernel runs {cmd[0]}, not this Python ({sys.executable}); "
            f"run: {sys.executable} -m ipykernel install --sys-prefix (or remove the other kernelspec)"
        )
    return cmd


def ipc_kernel_manager():
    """A kernel manager class whose kernels talk over local sockets instead of TCP (POSIX).

    ipykernel warns on every TCP start that the traffic is unencrypted; over IPC there is no
    network traffic and no warning, and the socket files live in Jupyter's runtime folder.
    Returns None where IPC is unavailable (Windows): papermill's default TCP manager is used.
    """
    if os.name == "nt":
        return None
    from jupyter_client import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _transport_default(self) -> str:
            return "ipc"

        def _ip_default(self) -> str:  # socket files <ip>-<n>, removed when the kernel shuts down
            folder = Path(jupyter_runtime_dir())
            if len(str(folder)) > 60:  # a socket path must stay under ~100 characters
                folder = Path(tempfile.gettempdir())
            folder.mkdir(parents=True, exist_ok=True)
            return str(folder / f"tlcourse-{os.getpid()}-{uuid.uuid4().hex[:8]}-ipc")

    return IPCKernelManager


def _engine_options() -> dict:
    manager = ipc_kernel_manager()
    return {"kernel_manager_class": manager} if manager else {}


# --------------------------------------------------------------------------- running

@dataclass
class Result:
    name: str
    status: str  # "ok" or "FAILED"
    seconds: float
    weights: str
    key_result: str = ""
    error: str = ""
    output: Path | None = None
    parameters: dict = field(default_factory=dict)
    finished: str = field(default_factory=now)  # when it finished (UTC), for the summary file


@contextlib.contextmanager
def _kernel_env():
    """Kernels inherit this: the ``tlcourse`` the runner imported comes first on their path."""
    saved = os.environ.get("PYTHONPATH")
    package_parent = str(Path(__file__).resolve().parent.parent)
    parts = [package_parent] + ([saved] if saved else [])
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def read_key_result(path: Path) -> str:
    """The ``KEY RESULT:`` line(s) printed by cells tagged ``key-result`` in an executed notebook."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    found = []
    for cell in nb.cells:
        if cell.cell_type != "code" or "key-result" not in cell.metadata.get("tags", []):
            continue
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("output_type") == "stream" else ""
            found += [line[len(KEY_RESULT_PREFIX):].strip() for line in text.splitlines()
                      if line.startswith(KEY_RESULT_PREFIX)]
    return "; ".join(found)


def _failure_line(name: str, exc: Exception) -> str:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        # The line IPython marks with ---> in the notebook's own cell, else the cell's first line.
        plain = [re.sub(r"\x1b\[[0-9;]*m", "", t) for t in exc.traceback or []]
        cell_frame = next((t for t in plain if t.lstrip().startswith("Cell In[")), "")
        marked = [m.group(1).strip() for m in re.finditer(r"-+>\s*\d+\s+(.*)", cell_frame)]
        first = marked[0] if marked else next(
            (ln for ln in exc.source.splitlines() if ln.strip() and not ln.startswith("#")), "")
        evalue = str(exc.evalue).strip().splitlines()[0] if str(exc.evalue).strip() else ""
        return f"{name}: In [{exc.exec_count}] `{first.strip()[:60]}` raised {exc.ename}: {evalue[:200]}"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{name}: {type(exc).__name__}: {message[:200]}"


def run_notebook(job: Job, output_dir: Path, *, cwd: Path | None = None, timeout: int | None = None) -> Result:
    """Execute one notebook into ``output_dir``; never raises for a failing cell."""
    import papermill as pm

    output_dir.mkdir(parents=True, exist_ok=True)
    out = output_dir / job.path.name
    name = job.path.stem
    start = time.perf_counter()
    try:
        with _kernel_env():
            pm.execute_notebook(str(job.path), str(out), parameters=job.parameters, kernel_name=KERNEL_NAME,
                                cwd=str(cwd or job.path.parent), progress_bar=False, log_output=False,
                                execution_timeout=timeout, **_engine_options())
    except Exception as exc:  # a failing cell, a dead kernel, a timeout: report and go on
        return Result(name, "FAILED", time.perf_counter() - start, job.weights, error=_failure_line(name, exc),
                      output=out, parameters=job.parameters)
    return Result(name, "ok", time.perf_counter() - start, job.weights, read_key_result(out), output=out,
                  parameters=job.parameters)


def summary_table(results: list[Result]) -> str:
    rows = [("notebook", "status", "time", "weights", "key result")]
    rows += [(r.name, r.status, f"{r.seconds:.1f}s", r.weights, r.key_result or r.error) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)


def run_course(*, folder: str | Path | None = None, output: str | Path | None = None, smoke: bool = False,
               overrides: dict | None = None, only: list[str] | None = None, check_weights: bool = True,
               timeout: int | None = None, echo=print) -> list[Result]:
    """Execute the selected notebooks in order and print progress and a summary table.

    Raises ``TLCourseError`` before running anything when the kernel is wrong or the dataset
    cannot be had. ``check_weights=False`` passes weights unresolved (see ``plan``).
    """
    kernel_command()
    paths = find_notebooks(folder, only)
    output_dir = Path(output) if output else paths[0].parent / "executed"
    check_output_folder(output_dir, paths)
    check_parameter_names(paths, overrides or {})
    check_parameter_values(overrides or {})
    ensure_dataset(paths, overrides)
    jobs = plan(paths, smoke=smoke, overrides=overrides, choose_weights=check_weights)
    notices: dict[str, list[str]] = {}
    for job in jobs:
        if job.notice:
            notices.setdefault(job.notice, []).append(job.path.name[:2])
    for notice, numbers in notices.items():  # each notice once, naming the notebooks it applies to
        echo(f"{notice} [{'notebook' if len(numbers) == 1 else 'notebooks'} {', '.join(numbers)}]")
    results = []
    for i, job in enumerate(jobs, 1):
        prefix = f"[{i}/{len(jobs)}] {job.path.stem} ..."
        result = run_notebook(job, output_dir, timeout=timeout)
        tail = f"{result.status} {result.seconds:.1f}s" + (f" — {result.error}" if result.error else "")
        echo(f"{prefix} {tail}")
        results.append(result)
    echo("")
    echo(summary_table(results))
    save_summary(results, output_dir, smoke=smoke)  # the same rows as a file, for `python -m tlcourse site`
    echo(f"executed notebooks: {output_dir}")
    return results

"""Run the course headless: every ``notebooks/NN_*.ipynb`` in order, executed with papermill.

``python -m tlcourse course`` writes the executed copies to ``notebooks/executed/`` (sources stay
untouched), prints one progress line per notebook and a summary table (notebook, status, time,
weights, key result). Kernels start in the ``notebooks/`` folder, like JupyterLab and nbval, and
run the same Python interpreter and the same ``tlcourse`` as the runner.

A notebook publishes its key result by calling ``key_result("...")`` in a cell tagged
``key-result``; the runner reads that line back from the executed notebook.

Weights follow the course's one offline policy, ``tlcourse.offline.choose_weights``, the same
function the notebooks call themselves: offline, the runner prints its notice once and plans
random weights for structure notebooks, and a local pretrained backbone (MobileNetV2) for the
notebooks marked ``metadata.tlcourse.needs_pretrained``. The dataset is fetched once before any
notebook starts, so a missing dataset is one error, not one per notebook.
"""

from __future__ import annotations

import ast
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
from .course_summary import now, save_summary
from .params import check_parameter_values, parameter_problem  # noqa: F401  (re-exported: course -p)
from .settings import project_root

NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
KERNEL_NAME = "python3"
KEY_RESULT_PREFIX = "KEY RESULT: "
#: Output cells that nbval compares with the stored output carry this marker; only they keep outputs in git.
CHECK_MARKER = "# NBVAL_CHECK_OUTPUT"
#: Parameters of a fast smoke run; each notebook receives only the ones its parameters cell declares.
SMOKE_PARAMETERS = {
    "weights": None, "smoke": True, "epochs": 1, "max_batches": 2, "subset": 32,
    "batch_size": 8, "image_size": 64, "num_workers": 0,
}
#: Environment variables a parameters cell reads for its default, so a plain run (nbval,
#: JupyterLab) can be made offline-safe and fast without papermill: see notebooks/README.md.
ENV_WEIGHTS = "TLCOURSE_WEIGHTS"
ENV_SMOKE = "TLCOURSE_SMOKE"
#: Notebook metadata ``{"tlcourse": {"needs_pretrained": true}}``: the notebook trains or predicts, so
#: offline it gets a local pretrained backbone rather than random weights (tlcourse.offline).
NEEDS_PRETRAINED = "needs_pretrained"
_MACHINE_PATH = re.compile(r"(/work/|/tmp/|/root/|/home/|/Users/|[A-Za-z]:\\\\)")


def key_result(text: str) -> None:
    """Print the notebook's key result in the line format the course runner looks for."""
    print(f"{KEY_RESULT_PREFIX}{text}")


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def find_notebooks(folder: str | Path | None = None, only: list[str] | None = None) -> list[Path]:
    """Numbered notebooks in order; ``only=["03"]`` (numbers or name prefixes) selects some."""
    folder = Path(folder) if folder else notebooks_dir()
    paths = sorted(folder.glob(NOTEBOOK_GLOB))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
        if not paths:
            raise TLCourseError(f"--only {' '.join(only)} matches no notebook in {folder}")
    if not paths:
        raise TLCourseError(f"no notebooks matching {NOTEBOOK_GLOB} in {folder}")
    return paths


def declared_parameters(path: Path) -> dict[str, str]:
    """``{name: default as written}`` from the notebook's cell tagged ``parameters``."""
    import papermill as pm
    from nbformat.reader import NotJSONError

    try:
        return {name: info["default"] for name, info in pm.inspect_notebook(str(path)).items()}
    except (NotJSONError, ValueError, KeyError, AttributeError, UnicodeDecodeError) as exc:   # half-written, not JSON
        raise TLCourseError(f"{path} is not a readable notebook ({type(exc).__name__}); restore it, e.g. "
                            f"git checkout -- {path}") from None


def parse_value(text: str):
    """A ``-p NAME VALUE`` value: a Python literal (``3``, ``1e-3``, ``None``, ``True``) or else a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


# --------------------------------------------------------------------------- kernel and weights

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


# --------------------------------------------------------------------------- planning

@dataclass
class Job:
    path: Path
    parameters: dict
    weights: str  # what the summary says about the weights used
    notice: str | None = None  # the offline notice of tlcourse.offline.choose_weights, if it fell back


def needs_pretrained(path: Path) -> bool:
    """``metadata.tlcourse.needs_pretrained`` of a notebook: it trains or predicts (see notebooks/README.md)."""
    import nbformat

    return bool(nbformat.read(path, as_version=4).metadata.get("tlcourse", {}).get(NEEDS_PRETRAINED))


def plan(paths: list[Path], *, smoke: bool = False, overrides: dict | None = None,
         choose_weights: bool = True) -> list[Job]:
    """The parameters each notebook receives (filtered to what its parameters cell declares).

    Weights follow the notebooks' own policy, ``tlcourse.offline.choose_weights`` (asked without
    printing; ``Job.notice`` holds its notice): the requested weights (``"DEFAULT"`` unless
    ``-p weights``; ``None`` in smoke mode) when they can be had, else random weights for a
    structure notebook, or another pretrained backbone (e.g. ``arch="mobilenet_v2"``) for a
    notebook whose metadata says ``needs_pretrained``. ``choose_weights=False`` passes them unresolved.
    """
    from .offline import choose_weights as choose
    from .offline import weights_label

    overrides = dict(overrides or {})
    jobs = []
    for path in paths:
        declared = declared_parameters(path)
        params: dict = {"weights": "DEFAULT"}  # the course's default: torchvision's pretrained weights
        if smoke:
            params.update(SMOKE_PARAMETERS)
        params.update(overrides)
        notice, label = None, "-"
        if "weights" in declared:
            arch = params.get("arch", parse_value(declared.get("arch", "'resnet18'")))
            if choose_weights:
                choice = choose(arch, params["weights"], echo=None,
                                pretrained_needed=not smoke and "arch" in declared and needs_pretrained(path))
                params["weights"], notice, label = choice.weights, choice.notice, choice.label
                if choice.arch != arch:
                    params["arch"] = choice.arch
            else:
                label = weights_label(arch, params["weights"])
        params = {k: v for k, v in params.items() if k in declared}
        jobs.append(Job(path, params, label, notice))
    return jobs


def dataset_needed(paths: list[Path], overrides: dict | None = None) -> list[str]:
    """Names of the notebooks that read the course dataset (they declare ``data_dir``, left at None)."""
    overrides = overrides or {}
    return [p.stem for p in paths
            if "data_dir" in declared_parameters(p) and overrides.get("data_dir") is None]


def ensure_dataset(paths: list[Path], overrides: dict | None = None) -> None:
    """Fetch the course dataset once, before any notebook starts; one error naming the mirror variable."""
    from .data import fetch
    from .settings import ENV_DATA_MIRROR

    names = dataset_needed(paths, overrides)
    if not names:
        return
    try:
        fetch(progress=False)
    except TLCourseError as exc:
        hint = "" if ENV_DATA_MIRROR in str(exc) else (
            f"; set {ENV_DATA_MIRROR} to a local copy of hymenoptera_data.zip and run again")
        raise TLCourseError(f"the course dataset is not available, so no notebook was run "
                            f"({', '.join(names)} need it): {exc}{hint}") from exc


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


def check_output_folder(output_dir: Path, paths: list[Path]) -> None:
    """Refuse an output folder that holds the source notebooks: papermill would overwrite them."""
    sources = {p.parent.resolve() for p in paths}
    if output_dir.resolve() in sources:
        raise TLCourseError(f"--output {output_dir} is the folder of the source notebooks: the executed copies "
                            "(injected parameters, outputs) would overwrite them; choose another folder "
                            "(default: notebooks/executed/)")
    if output_dir.exists() and not output_dir.is_dir():
        raise TLCourseError(f"--output {output_dir} is a file; give a folder for the executed notebooks")


def check_parameter_names(paths: list[Path], overrides: dict) -> None:
    """A ``-p NAME VALUE`` that no selected notebook declares is a typo: say so instead of dropping it."""
    declared: set[str] = set()
    for path in paths:
        declared |= set(declared_parameters(path))
    unknown = sorted(set(overrides) - declared)
    if unknown:
        raise TLCourseError(f"-p {', '.join(unknown)}: no selected notebook has such a parameter (they have: "
                            f"{', '.join(sorted(declared)) or 'none'}); check the spelling")


def _engine_options() -> dict:
    manager = ipc_kernel_manager()
    return {"kernel_manager_class": manager} if manager else {}


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


# --------------------------------------------------------------------------- committed outputs

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

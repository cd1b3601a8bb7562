"""What the course runner will run: the numbered notebooks, their parameters and their weights.

A notebook and the runner agree on a few conventions, declared here: the file names, the
``parameters`` cell, the ``KEY RESULT:`` line of ``key_result``, the ``needs_pretrained``
metadata and the ``TLCOURSE_WEIGHTS``/``TLCOURSE_SMOKE`` variables (see notebooks/README.md).

Weights follow the course's one offline policy, ``tlcourse.offline.choose_weights``, the same
function the notebooks call themselves: offline, random weights for structure notebooks, and a
local pretrained backbone (MobileNetV2) for the notebooks marked ``needs_pretrained``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from . import TLCourseError
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
    from .download import fetch  # no torch: the runner starts at once
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

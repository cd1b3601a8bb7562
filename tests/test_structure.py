"""The package's structure, read from its source: every module imports alone, no import cycle,
no module over 400 lines, the library below its CLI, no leak between the package, the benchmarks
and the tests.

The import graph counts imports inside functions too (a lazy import still couples two modules),
the way ``../shared/tools/layers.py`` reads it. Nothing here trains or downloads anything.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tlcourse"
MAX_LINES = 400
#: Importing ``tlcourse.__main__`` runs the command line; it is a script, not a module.
NOT_IMPORTABLE = {"tlcourse.__main__"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package's modules that ``node`` (anywhere in ``module``, functions included) imports."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            if MODULES[module].name != "__init__.py":
                parts = parts[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
    return [t for t in targets if t in MODULES]


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(module, node):
                    # a package importing its own submodule, or a submodule its package, is not a cycle
                    if target != module and not module.startswith(target + "."):
                        graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _cycle_findings() -> set[str]:
    return {"cycle: " + " <-> ".join(c) for c in cycles(import_graph())}


def _size_findings() -> set[str]:
    return {f"over {MAX_LINES} lines: {m}" for m, p in MODULES.items()
            if len(p.read_text(encoding="utf-8").splitlines()) > MAX_LINES}


def _is_cli(module: str) -> bool:
    return module in ("tlcourse.cli", "tlcourse.__main__") or module.split(".")[:2] == ["tlcourse", "commands"]


def _layer_findings() -> set[str]:
    """The library never imports its command line: the CLI sits on top (errors live in the library)."""
    return {f"layer: {m} imports the CLI ({t})" for m, targets in import_graph().items() if not _is_cli(m)
            for t in sorted(targets) if _is_cli(t)}


def _leak_findings() -> set[str]:
    found = set()
    loaders = ("spec_from_file_location", "run_path", "SourceFileLoader", "exec(")
    for module, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        if "benchmarks" in text and any(word in text for word in loaders):
            found.add(f"leak: {module} loads a file from benchmarks/")
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("conftest", "tests") for n in names):
                found.add(f"leak: benchmarks/{path.name} imports the tests")
            if isinstance(node, ast.Constant) and node.value in ("tests", "tests/conftest.py"):
                found.add(f"leak: benchmarks/{path.name} reaches into tests/")
    return found


# --------------------------------------------------------------------------- the checks


def test_the_graph_reader_sees_function_level_imports_and_cycles():
    """The reader itself: a lazy import inside a function is an edge; a cycle through it is found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse(textwrap.dedent("""
        def late():
            from .models import build_model
    """))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom))
    assert "tlcourse.models" in _imported("tlcourse.offline", node)


def test_no_import_cycle():
    assert _cycle_findings() == set()


def test_no_module_over_400_lines():
    assert _size_findings() == set()


def test_library_does_not_import_the_cli():
    assert _layer_findings() == set()


def test_package_loads_no_benchmark_file_and_benchmarks_do_not_import_tests():
    assert _leak_findings() == set()


# Each module is imported in a process of its own that has imported nothing from tlcourse, so a
# module that only works after another one was imported first fails here. Starting ~100 Python
# interpreters that each import torch would take minutes on two cores; instead one fresh
# interpreter imports the third-party libraries once and forks a child per module.
_FORK_IMPORTER = r"""
import importlib, os, sys, traceback
import numpy, PIL.Image, torch, torchvision  # third-party only: nothing from tlcourse yet
assert not any(m == "tlcourse" or m.startswith("tlcourse.") for m in sys.modules)
failures = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        failures.append(name)
print("FAILED:", " ".join(failures))
sys.exit(1 if failures else 0)
"""


def test_every_module_imports_alone():
    names = sorted(set(MODULES) - NOT_IMPORTABLE)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if hasattr(os, "fork"):
        runs = [[sys.executable, "-c", _FORK_IMPORTER, *names]]
    else:  # no fork (Windows): one interpreter per module, slower
        runs = [[sys.executable, "-c", f"import {name}"] for name in names]
    for command in runs:
        out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]


#: Modules that promise not to import torch (the CLI's start, ``data --check``, the offline policy).
TORCH_FREE = ["tlcourse.offline", "tlcourse.weights", "tlcourse.config", "tlcourse.cli", "tlcourse.checks",
              "tlcourse.download", "tlcourse.data_summary", "tlcourse.course"]


@pytest.mark.parametrize("name", TORCH_FREE)
def test_torch_free_modules_import_alone_in_a_fresh_interpreter(name):
    """Each in a truly fresh interpreter (no fork): it imports, and torch stays out of sys.modules."""
    code = f"import sys, {name}; sys.exit('imports torch' if 'torch' in sys.modules else 0)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]


def test_old_import_paths_still_work():
    """What notebooks, tests and benchmarks import from the modules that were split stays importable."""
    from tlcourse.checks import (  # noqa: F401
        DatasetCheck,
        ImageLoadError,
        Problem,
        check_dataset,
        check_split,
        describe_load_error,
        forget_verified,
        inspect_image,
        list_class,
    )
    from tlcourse.course import (  # noqa: F401
        CHECK_MARKER,
        ENV_SMOKE,
        ENV_WEIGHTS,
        NEEDS_PRETRAINED,
        Job,
        Result,
        check_parameter_values,
        declared_parameters,
        find_notebooks,
        kernel_command,
        key_result,
        parameter_problem,
        parse_value,
        plan,
        read_key_result,
        refresh_outputs,
        run_course,
        run_notebook,
    )
    from tlcourse.data import (  # noqa: F401
        DATASET_NAME,
        IMAGENET_MEAN,
        IMAGENET_STD,
        MARKER,
        ImageFolderRGB,
        Loaders,
        _is_url,
        _subset,
        augmentations,
        draft_size,
        eval_transforms,
        fetch,
        load_image,
        loaders_for,
        make_loaders,
        resize_size,
        resolve_data_dir,
        summarize,
        train_transforms,
    )
    from tlcourse.models import (  # noqa: F401
        build_model,
        count_parameters,
        find_local_weights,
        load_backbone_weights,
        local_weights_file,
        model_for,
        weights_cache_path,
        weights_enum,
    )
    from tlcourse.offline import (  # noqa: F401
        DOWNLOAD,
        HUB_CACHE,
        choose_weights,
        find_weights,
        is_random,
        is_weights_file,
        reachable,
        weights_label,
    )
    assert ImageLoadError.__module__ == "tlcourse.checks"  # worker errors are matched by this name

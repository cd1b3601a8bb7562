"""``python -m tlcourse bench``: the CPU benchmark of ``benchmarks/transfer.py``.

Its options belong to the benchmark script (``bench --help`` shows them); the script is loaded
only when this command runs, so other commands start without importing torch.
"""

from __future__ import annotations

from .. import TLCourseError


def add(sub) -> None:
    p = sub.add_parser("bench", add_help=False,
                       help="CPU benchmark: the plain loop against tlcourse's fast path, side by side")
    # Every option (--help too) goes to the benchmark script's own parser: see tlcourse.cli.main.
    p.set_defaults(run=run, pass_through=True, bench_args=[])


def bench_module():
    """benchmarks/transfer.py of the checkout (the benchmark is not part of the installed package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "transfer.py"
    if not path.is_file():
        raise TLCourseError(f"{path} not found; run the benchmark from a checkout of the course repository")
    spec = importlib.util.spec_from_file_location("tlcourse_bench_transfer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args) -> int:
    module = bench_module()
    module.run(module.parse_args(args.bench_args))
    return 0

"""``python -m tlcourse bench``: the CPU benchmark of ``tlcourse.bench`` (plain loop, fast path, backbone runtimes).

Its options belong to the benchmark's own parser (``bench --help`` shows them); the module is
imported only when this command runs, so other commands start without importing torch.
"""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser("bench", add_help=False,
                       help="CPU benchmark: the plain loop against tlcourse's fast path, eager against ONNX Runtime")
    # Every option (--help too) goes to the benchmark's own parser: see tlcourse.cli.main.
    p.set_defaults(run=run, pass_through=True, bench_args=[])


def run(args) -> int:
    from ..bench import main

    return main(args.bench_args)

"""``python -m tlcourse doctor``: what the course needs, whether it is there, and the fix."""

from __future__ import annotations


def add(sub) -> None:
    p = sub.add_parser("doctor", help="check what the course needs (python, torch, JupyterLab, widgets, kernel, "
                                      "dataset, weights, disk); exit 1 if it cannot run",
                       description="One table of what the course needs and whether it is there, each with the "
                                   "fix when something is missing. Exits with status 1 when the course cannot run.")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..doctor import FAIL, format_table, run_checks

    rows = run_checks()
    print(format_table(rows))
    return 1 if any(r.status == FAIL for r in rows) else 0

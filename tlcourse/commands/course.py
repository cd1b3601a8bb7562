"""``python -m tlcourse course``: run every notebook headless (papermill)."""

from __future__ import annotations

from ._args import positive_int


def add(sub) -> None:
    p = sub.add_parser("course", help="run every notebook headless (papermill) into notebooks/executed/")
    p.add_argument("--smoke", action="store_true",
                   help="fast run: weights=None, a small subset, 1 epoch, a few batches")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="pass a parameter to every notebook that declares it (VALUE: a Python literal or text)")
    p.add_argument("--only", action="append", default=[], metavar="NN",
                   help="run only notebooks whose name starts with NN (repeatable), e.g. --only 03")
    p.add_argument("--output", default=None, help="folder for executed notebooks (default: notebooks/executed/)")
    p.add_argument("--timeout", type=positive_int, default=None, help="seconds allowed per cell")
    p.add_argument("--refresh-outputs", action="store_true",
                   help="re-execute the source notebooks offline-safe and store their checked outputs (for authors)")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..course_outputs import refresh_outputs
    from ..course_plan import find_notebooks, parse_value
    from ..course_runner import run_course as run_all
    from ..params import check_parameter_values

    only = [o for item in args.only for o in item.split(",") if o]
    if args.refresh_outputs:
        refresh_outputs(find_notebooks(only=only))
        return 0
    overrides = {name: parse_value(value) for name, value in args.parameter}
    check_parameter_values(overrides)        # before anything starts: values are literals, never pasted code
    results = run_all(output=args.output, smoke=args.smoke, overrides=overrides, only=only, timeout=args.timeout)
    return 0 if all(r.status == "ok" for r in results) else 1

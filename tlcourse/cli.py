"""``python -m tlcourse <command>``: the course's command line.

Each command is a small ``add_<command>`` function that declares its arguments and the function
that runs it. Errors the user can fix (``TLCourseError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import TLCourseError, __version__


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


# --------------------------------------------------------------------------- data

def add_data(sub) -> None:
    p = sub.add_parser("data", help="download the ants/bees dataset and count its images")
    p.add_argument("--root", default=None, help="folder to put the dataset in (default: data/)")
    p.add_argument("--mirror", default=None, help="local path or URL of hymenoptera_data.zip (or TLCOURSE_DATA_MIRROR)")
    p.add_argument("--force", action="store_true", help="download and extract again")
    p.set_defaults(run=run_data)


def run_data(args) -> int:
    from .data import fetch, summarize

    path = fetch(args.root, args.mirror, force=args.force)
    print(f"dataset: {path}")
    print(summarize(path))
    return 0


# --------------------------------------------------------------------------- report

def add_report(sub) -> None:
    from .freeze import PRESETS
    from .models import ARCHS, HEADS

    p = sub.add_parser("report", help="show which layers a freeze preset leaves trainable")
    p.add_argument("--arch", default="resnet18", choices=list(ARCHS))
    p.add_argument("--num-classes", type=_positive_int, default=2)
    p.add_argument("--head", default="linear", choices=HEADS)
    p.add_argument("--freeze", default="head", choices=PRESETS)
    p.add_argument("--detailed", action="store_true", help="one line per parameter tensor")
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from .freeze import apply_freeze
    from .models import build_model
    from .report import trainable_report

    # The report is about structure, so random init is enough (and works offline).
    model = build_model(args.arch, args.num_classes, weights=None, head=args.head)
    apply_freeze(model, args.freeze)
    print(f"{args.arch}, head={args.head}, freeze={args.freeze}")
    print(trainable_report(model, detailed=args.detailed))
    return 0


# --------------------------------------------------------------------------- course

def add_course(sub) -> None:
    p = sub.add_parser("course", help="run every notebook headless (papermill) into notebooks/executed/")
    p.add_argument("--smoke", action="store_true",
                   help="fast run: weights=None, a small subset, 1 epoch, a few batches")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="pass a parameter to every notebook that declares it (VALUE: a Python literal or text)")
    p.add_argument("--only", action="append", default=[], metavar="NN",
                   help="run only notebooks whose name starts with NN (repeatable), e.g. --only 03")
    p.add_argument("--output", default=None, help="folder for executed notebooks (default: notebooks/executed/)")
    p.add_argument("--timeout", type=_positive_int, default=None, help="seconds allowed per cell")
    p.add_argument("--refresh-outputs", action="store_true",
                   help="re-execute the source notebooks offline-safe and store their checked outputs (for authors)")
    p.set_defaults(run=run_course)


def run_course(args) -> int:
    from .course import find_notebooks, parse_value, refresh_outputs
    from .course import run_course as run

    only = [o for item in args.only for o in item.split(",") if o]
    if args.refresh_outputs:
        refresh_outputs(find_notebooks(only=only))
        return 0
    overrides = {name: parse_value(value) for name, value in args.parameter}
    results = run(output=args.output, smoke=args.smoke, overrides=overrides, only=only, timeout=args.timeout)
    return 0 if all(r.status == "ok" for r in results) else 1


# --------------------------------------------------------------------------- main

COMMANDS = [add_data, add_report, add_course]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tlcourse", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tlcourse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except TLCourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

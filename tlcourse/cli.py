"""``python -m tlcourse <command>``: the course's command line.

Each command lives in ``tlcourse.commands.<name>`` (``add`` declares its options, ``run`` does
the work). Building the parser imports no torch, so ``--help`` and ``data --check`` start at once.

Errors: a ``TLCourseError`` (a problem the user can fix) prints one line and exits with status 2.
Any other exception prints one line naming the command, the error and the likely fix, and exits
with status 1; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import TLCourseError, __version__
from .commands import COMMANDS
from .errors import describe_unexpected


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage of ``train`` alone is 30 lines): what is wrong, where help is."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m tlcourse",
                                     description="tlcourse: transfer learning with torchvision, from the command line.")
    parser.add_argument("--version", action="version", version=f"tlcourse {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.commands.{name.replace('-', '_')}").add(sub)
    for command in sub.choices.values():
        if not command.get_default("pass_through"):
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show the full traceback of an unexpected error")
    return parser


def _tolerant_output() -> None:
    """Print any path, even a file name that is not valid UTF-8, instead of failing with UnicodeEncodeError;
    line by line even when piped, so a log file shows progress as it happens."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace", line_buffering=True)
        except (AttributeError, ValueError):  # not a TextIOWrapper (a notebook, a test's capture)
            pass


def main(argv: list[str] | None = None) -> int:
    _tolerant_output()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "pass_through", False):
        args.bench_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.run(args)
    except TLCourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {args.command} failed: {describe_unexpected(exc)} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1

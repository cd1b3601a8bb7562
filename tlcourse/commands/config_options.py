"""The ``python -m tlcourse train`` options, generated from ``TrainConfig``'s declaration.

One ``--option`` per field (help, group, bounds and choices from the field's ``metadata``), each
value checked by the same :func:`tlcourse.config.check_field` as the library's own validation,
so the command line and ``TrainConfig(...)`` accept exactly the same values. ``train`` and
``lr-find`` add these options; ``--nproc-per-node`` passes them on to its workers with
:func:`config_arguments`. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from .. import TLCourseError
from ..config import FIELDS, PRESET_DEFAULTS, TrainConfig, check_field

#: What ``--weights none`` parses to, so that "given as None" differs from "not given".
NONE_GIVEN = type("NoneGiven", (), {"__repr__": lambda self: "None"})()

GROUPS = {"data": "data", "model": "model and freezing", "optimizer": "optimizer and schedule",
          "speed": "speed and device", "run": "run folder and output"}


def _converter(name: str):
    """argparse ``type=``: text → value, checked by :func:`check_field` (one-line argparse error)."""
    meta = FIELDS[name].metadata

    def convert(text: str):
        kind = meta["kind"]
        if kind is str and meta["optional"] and text.lower() == "none" and "none" not in (meta["choices"] or ()):
            return NONE_GIVEN  # "--weights none": None is a value, not "not given" ("--scheduler none": a choice)
        elif kind is int:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name}={text!r} must be an integer") from None
        elif kind is float:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{name}={text!r} must be a number") from None
        else:
            value = text
        try:
            return check_field(name, value)
        except TLCourseError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per ``TrainConfig`` field, grouped; every default is None (= not given)."""
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in fields(TrainConfig):
        meta = f.metadata
        if not meta["cli"]:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if default is None and f.name in PRESET_DEFAULTS["head"]:
            default = ", ".join(f"{preset} {values[f.name]}" for preset, values in PRESET_DEFAULTS.items())
        help_text = f"{meta['help']} (default: {default})"
        group = groups[meta["group"]]
        if meta["kind"] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=_converter(f.name), default=None, help=help_text,
                               choices=None, metavar=("{" + ",".join(meta["choices"]) + "}") if meta["choices"]
                               else f.name.upper())


def config_overrides(args: argparse.Namespace) -> dict:
    """The ``TrainConfig`` fields the user typed on the command line."""
    typed = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig) if f.metadata["cli"]}
    return {name: (None if value is NONE_GIVEN else value) for name, value in typed.items() if value is not None}


def config_arguments(overrides: dict) -> list[str]:
    """The ``train`` options that give ``overrides`` back (the inverse of :func:`config_overrides`).

    ``python -m tlcourse train --nproc-per-node N`` passes a run's settings on to its workers so.
    """
    argv: list[str] = []
    for name, value in overrides.items():
        flag, kind = "--" + name.replace("_", "-"), FIELDS[name].metadata["kind"]
        if kind is bool:
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is None:
            if kind is str:                  # "--weights none"; an int left at None is its default
                argv.append(f"{flag}=none")
        else:                                # --flag=value: a value may start with "-"
            argv.append(f"{flag}={repr(value) if isinstance(value, float) else value}")
    return argv

"""A worker's failure as one line: for the user, for torchrun's error file and for the launcher."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import torch.distributed as dist

from .. import TLCourseError
from ..errors import describe_unexpected
from .process import ENV_LAUNCHED, process_rank, under_torchrun


def describe_error(exc: BaseException) -> tuple[str, int]:
    """(one line, exit status) for an error, as ``python -m tlcourse`` prints it."""
    if _is_peer_failure(exc):
        return (f"rank {process_rank()} stopped: another process of this run failed or was stopped "
                f"({_short(exc)}); its own error says why"), 1
    if isinstance(exc, TLCourseError):
        return str(exc), 2
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted", 130
    return f"train failed: {describe_unexpected(exc)} (run with --debug for the traceback)", 1


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 120 else text[:117] + "..."


def _is_peer_failure(exc: BaseException) -> bool:
    """An error that only says another rank went away or did not answer (the cause is elsewhere)."""
    if isinstance(exc, TLCourseError):
        return False
    if isinstance(exc, dist.DistError):   # DistBackendError (incl. timeouts), DistNetworkError, DistStoreError
        return True
    return any(s in str(exc) for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def record_error(exc: BaseException) -> tuple[str, int]:
    """Write this worker's one-line error where torchrun collects it (``TORCHELASTIC_ERROR_FILE``)."""
    line, code = describe_error(exc)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        data = {"message": {"message": line, "extraInfo": {
            "py_callstack": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            "timestamp": str(int(time.time())),
            "tlcourse": {"time": time.time(), "peer": _is_peer_failure(exc), "exitcode": code}}}}
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps(data))
        except OSError:
            pass
    return line, code


@contextmanager


def report_errors(debug: bool = False):
    """In a torchrun worker: record a failure for the launcher (and for torchrun's own summary).

    Under :func:`launch` (and without ``--debug``) the worker then exits quietly with the error's
    status and the launcher prints the one line, once, for all ranks. Under a bare ``torchrun``
    the error propagates and ``python -m tlcourse`` prints it in each failing process.
    """
    if not under_torchrun():
        yield
        return
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:
        line, code = record_error(exc)
        if debug:
            raise
        if os.environ.get(ENV_LAUNCHED):
            raise SystemExit(code) from None
        if _is_peer_failure(exc):   # not the cause: one line, no traceback
            print(f"error: {line}", file=sys.stderr)
            raise SystemExit(code) from None
        raise

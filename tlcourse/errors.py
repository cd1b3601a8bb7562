"""Errors the library and the command line describe alike: one line for an unexpected exception.

Kept in the library (not in ``cli``) because a training process started by torchrun describes its
own failure for the launcher (``tlcourse.distributed.errors``) without the command line.
"""

from __future__ import annotations

import errno

from .files import DISK_FULL_ERRNOS, NOT_WRITABLE_ERRNOS, os_error_in


def describe_unexpected(exc: BaseException) -> str:
    """One line for an exception that is not a ``TLCourseError``: what happened and what to try."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 300:
        text = text[:300] + "..."
    if isinstance(exc, MemoryError):
        return "out of memory; lower --batch-size or --image-size, or use --subset"
    full, locked = os_error_in(exc, DISK_FULL_ERRNOS), os_error_in(exc, NOT_WRITABLE_ERRNOS)
    cause = full or locked or (exc if isinstance(exc, OSError) else None)
    where = f" ({cause.filename})" if getattr(cause, "filename", None) else ""
    if full is not None:
        return f"disk full{where}; free some space and run the command again"
    if locked is not None:
        return f"no permission to write{where}; choose a folder you can write to (e.g. --output-dir)"
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return f"file or folder not found{where}; check the path"
    return f"{type(exc).__name__}: {text}"

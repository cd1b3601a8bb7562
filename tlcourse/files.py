"""File safety: atomic writes, temporary files that a killed process leaves behind, writable folders,
and recognising a full disk.

A file is either the old version or the complete new one, never half. Temporary names carry the
writer's process id (``.latest.pt.tmp-<pid>-<random>``, ``.fetch-<pid>-…``) so that a later run can
tell a leftover of a killed process (its pid is gone) from the work of one still running. A temporary
file is always created new (``O_CREAT|O_EXCL|O_NOFOLLOW`` via ``tempfile.mkstemp``, mode 0600) in the
target's own folder: a symlink or file planted under a predictable name in a shared folder is never
written through; the finished file gets the usual umask-derived mode when it is renamed into place.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from . import TLCourseError

#: ``.<name>.tmp-<pid>[-<random>]`` (atomic writes) and ``.fetch-<pid>-<random>`` (dataset downloads).
_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)(?:-[A-Za-z0-9_]+)?$|^\.fetch-(\d+)-")
#: ``.fetch-<random>`` folders of tlcourse versions whose names had no pid: removed once this old.
_LEGACY_FETCH_AGE = 24 * 3600
#: errno values that mean "no room for this file" (ENOSPC; EDQUOT: quota; EFBIG: file-size limit).
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: errno values that mean "this folder cannot be written".
NOT_WRITABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The mode a plain ``open(path, "w")`` would give a new file; finished files get it.
FILE_MODE = 0o666 & ~_current_umask()


def temp_name(path: Path) -> Path:
    """The pid-tagged prefix of ``path``'s temporary files (``mkstemp`` adds a random part)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def temp_file(path: str | Path) -> tuple[int, Path]:
    """``(fd, name)`` of a new, exclusive, mode-0600 temporary file beside ``path`` (never a symlink)."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-{os.getpid()}-", suffix="")
    return fd, Path(name)


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(file_object)`` on a new temporary file next to ``path``, then rename it over.

    A crash or exception mid-write leaves the previous ``path`` untouched and no temp file; a
    SIGKILL leaves ``.<name>.tmp-<pid>-<random>``, which :func:`remove_stale_temp` cleans up later.
    """
    path = Path(path)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fchmod(fh.fileno(), FILE_MODE)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def link_or_copy_into_place(source: Path, path: Path) -> None:
    """Place a hard link to (or a copy of) ``source`` at ``path`` atomically, through a fresh temporary name."""
    fd, tmp = temp_file(path)
    os.close(fd)
    try:
        try:
            tmp.unlink()
            os.link(source, tmp)          # fails (EEXIST) rather than follow anything planted meanwhile
        except FileExistsError:
            raise
        except OSError:
            fd, tmp = temp_file(path)
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out)
                os.fchmod(out.fileno(), FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2, default=str).encode()))


# --------------------------------------------------------------------------- leftovers of killed runs

def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's process (or a nonsense number, treated as alive if positive)
    return True


def remove_stale_temp(folder: str | Path) -> list[Path]:
    """Delete the temporary files/folders in ``folder`` whose writing process no longer exists.

    Only names this module's writers produce are touched; a pid that is still alive (this
    process, or another run writing right now) keeps its file. Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match:
            stale = not pid_alive(int(match.group(1) or match.group(2)))
        else:
            stale = entry.name.startswith(".fetch-") and _age(entry) > _LEGACY_FETCH_AGE
        if not stale:
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def _age(entry: os.DirEntry) -> float:
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


# --------------------------------------------------------------------------- writable folders, full disks

def ensure_writable(folder: str | Path, fix: str) -> Path:
    """Create ``folder`` if needed and prove a file can be written there, else one-line ``TLCourseError``.

    Run before any long work, so that a read-only or misplaced folder fails at once instead of
    after an epoch of training. ``fix`` says what to do instead (it ends the message).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise TLCourseError(f"{folder} is a file, not a folder; {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = temp_file(folder / "write-test")
        os.close(fd)
        probe.unlink()
    except (FileExistsError, NotADirectoryError):  # a parent is a file
        raise TLCourseError(f"{folder} cannot be created: a part of the path is a file; {fix}") from None
    except OSError as exc:
        raise TLCourseError(f"{folder} is not writable ({exc.strerror or exc}); {fix}") from None
    return folder


def os_error_in(exc: BaseException | None, errnos: set[int]) -> OSError | None:
    """The first ``OSError`` with one of ``errnos`` in ``exc`` or its causes.

    torch's zip writer reports a failed write as ``RuntimeError`` whose context is the real
    ``OSError`` (e.g. ``EFBIG`` under a file-size limit, ``ENOSPC`` on a full disk).
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in errnos:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def megabytes(n: int) -> str:
    """A byte count as people read it in a log line: ``12.3 MB``."""
    return f"{n / 1e6:.1f} MB"

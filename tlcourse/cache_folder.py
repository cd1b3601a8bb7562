"""The feature cache's own folder: what it may read, list and delete, and how it reads safely.

``--cache-dir`` / ``TLCOURSE_CACHE_DIR`` may name a folder that holds other things (``~``, a
project folder, a classroom share). The cache therefore keeps its files in a subfolder of its
own, ``tlcourse-features/``, tagged with a ``CACHEDIR.TAG`` marker (the cache-directory tagging
convention, so backup tools skip it too). It lists and deletes a file only when all of these
hold, checked right before each delete: the subfolder is a real folder (not a symlink) carrying
the exact marker, the file's name is one the cache itself produces (``<40 hex>.tlcf``,
``<40 hex>.json`` or ``.tmp-<40 hex>-<pid>-<random>``), and it is a regular file (not a link, a
FIFO or a folder). Anything else is left alone and counted, so ``cache clear`` can say what it left.

Every read of a cache file goes through :func:`open_regular` (no symlinks followed, no blocking
on a FIFO, regular files only) and a size limit, and JSON is parsed with a depth limit: a
hostile or damaged file can make an entry unusable ("recomputing it"), never hang or crash a run.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

__all__ = ["MARKER", "MARKER_TEXT", "SUBDIR", "CacheFileError", "ensure_store", "load_json_bounded",
           "open_regular", "owned_names", "read_regular", "store_problem"]

#: The cache's own subfolder of the cache folder.
SUBDIR = "tlcourse-features"
MARKER = "CACHEDIR.TAG"
MARKER_TEXT = (b"Signature: 8a477f597d28d172789f06886806bc55\n"
               b"# This folder is tlcourse's feature cache; `python -m tlcourse cache clear` empties it.\n"
               b"# For information about cache directory tags see https://bford.info/cachedir/\n")
#: File names the cache writes: entries and the temporary files of entries being written.
ENTRY_NAME = re.compile(r"^[0-9a-f]{40}\.(tlcf|json)$")
TEMP_NAME = re.compile(r"^\.tmp-[0-9a-f]{40}-(\d+)-[A-Za-z0-9_]+$")
#: Largest JSON file (probe results) and JSON nesting the cache reads.
MAX_JSON_BYTES = 16 * 1024**2
MAX_JSON_DEPTH = 64


class CacheFileError(Exception):
    """A cache file that cannot be used: the message says why (truncated, foreign, ...)."""


def open_regular(path: Path) -> int:
    """A read-only descriptor of ``path``, which must be a regular file; never follows a symlink or blocks."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (getattr(os, "ELOOP", -1),) or path.is_symlink():
            raise CacheFileError("is a symbolic link (not written by the cache)") from None
        raise CacheFileError(f"cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CacheFileError("is not a regular file (not written by the cache)")
    return fd


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (``CacheFileError`` otherwise)."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise CacheFileError(f"is too large for a cache file ({size} bytes, at most {limit})")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read(limit + 1)[:limit]
    finally:
        os.close(fd)


def _depth_ok(text: str, limit: int) -> bool:
    """Whether JSON text nests at most ``limit`` deep (brackets inside strings counted too: conservative)."""
    depth = 0
    for char in text:
        if char in "[{":
            depth += 1
            if depth > limit:
                return False
        elif char in "]}":
            depth -= 1
    return True


def parse_json(blob: bytes, depth: int = MAX_JSON_DEPTH):
    """JSON from bytes, refusing deep nesting before the parser recurses; ``CacheFileError`` if unusable."""
    try:
        text = blob.decode()
        if not _depth_ok(text, depth):
            raise CacheFileError(f"has a damaged header (nested deeper than {depth})")
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CacheFileError("has a damaged header") from None


def load_json_bounded(path: Path):
    """A small JSON file of the cache (regular, at most ``MAX_JSON_BYTES``, shallow)."""
    return parse_json(read_regular(path, MAX_JSON_BYTES))


# --------------------------------------------------------------------------- the subfolder

def store_problem(store: Path) -> str | None:
    """Why ``store`` is not provably the cache's own folder (None when it is, or does not exist yet)."""
    try:
        info = os.lstat(store)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link (the cache never follows one)"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    try:
        marker = read_regular(store / MARKER, 4096)
    except CacheFileError as exc:
        return f"has no usable {MARKER} marker (it {exc}); it was not made by tlcourse"
    if marker != MARKER_TEXT:
        return f"has a {MARKER} that tlcourse did not write"
    return None


def ensure_store(store: Path) -> None:
    """Create the subfolder and its marker; ``OSError`` if it cannot be written or is not the cache's own.

    An existing subfolder without the marker is adopted only while it is empty (another run
    creating it at the same moment); one holding anything is someone else's and is refused.
    """
    if store_problem(store) is None and store.is_dir():
        return
    store.parent.mkdir(parents=True, exist_ok=True)
    try:
        store.mkdir()
    except FileExistsError:
        pass
    problem = store_problem(store)
    if problem is not None and "no usable" in problem and not any(n != MARKER for n in os.listdir(store)):
        from .files import atomic_write

        atomic_write(store / MARKER, lambda fh: fh.write(MARKER_TEXT))
        problem = store_problem(store)
    if problem is not None:
        raise PermissionError(0, f"{store} {problem}")


def owned_names(store: Path) -> tuple[list[tuple[Path, bool]], list[str]]:
    """``([(path, is_temporary)], [other names])`` of ``store``: the files the cache may touch, and the rest.

    Empty when ``store`` is not provably the cache's own folder: then nothing in it is touched.
    """
    if store_problem(store) is not None or not store.is_dir():
        return [], []
    mine, other = [], []
    for entry in os.scandir(store):
        regular = entry.is_file(follow_symlinks=False)
        if entry.name == MARKER:
            continue
        if regular and ENTRY_NAME.match(entry.name):
            mine.append((Path(entry.path), False))
        elif regular and TEMP_NAME.match(entry.name):
            mine.append((Path(entry.path), True))
        else:
            other.append(entry.name)
    return mine, other


def temp_pid(name: str) -> int | None:
    match = TEMP_NAME.match(name)
    return int(match.group(1)) if match else None


def safe_unlink(path: Path, store: Path) -> bool:
    """Delete ``path`` only if, right now, it is a regular file with a cache name in the marked ``store``."""
    if store_problem(store) is not None or path.parent != store:
        return False
    if not (ENTRY_NAME.match(path.name) or TEMP_NAME.match(path.name)):
        return False
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        os.unlink(path)
    except OSError:
        return False
    return True

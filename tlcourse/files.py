"""Atomic file writes: a file is either the old version or the complete new one, never half."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(file_object)`` on a temporary file next to ``path``, then rename it over.

    A crash or exception mid-write leaves the previous ``path`` untouched and no temp file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write(path, lambda fh: fh.write(json.dumps(obj, indent=2, default=str).encode()))

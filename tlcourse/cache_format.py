"""The feature cache's file format: one entry per file, data first, a checked JSON header last.

``<key>.tlcf`` holds the raw tensor bytes in C order (so it can be memory-mapped), then a JSON
header (format, key, shape, dtype, labels, CRC32 of the data, what and when, and ``check``: a
sha256 over every other header field, so hand-edited labels or shapes are refused), the header's
length and an 8-byte magic. Reads never follow symlinks, never block on a FIFO, bound the header's
size and nesting, and turn any problem into ``CacheFileError`` (the caller recomputes).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import time
import zlib
from datetime import datetime
from pathlib import Path

from .cache_folder import CacheFileError, open_regular, parse_json
from .files import FILE_MODE

__all__ = ["FORMAT", "JSON_KIND", "JSON_SUFFIX", "MAGIC", "SUFFIX", "TMP_PREFIX", "EntryWriter",
           "header_check", "read_entry", "read_header"]

MAGIC = b"TLCFEAT1"
FORMAT = 1
SUFFIX = ".tlcf"
JSON_SUFFIX = ".json"       # small results computed from entries (the linear probe)
TMP_PREFIX = ".tmp-"
_TAIL = struct.Struct("<Q8s")          # header length, magic
_DTYPES = ("float16", "float32", "bfloat16", "uint8")
#: Largest JSON header read (about 8 bytes per label: 64 MiB is millions of images).
MAX_HEADER = 64 * 1024**2
JSON_KIND = "tlcourse.feature_cache.json"


def header_check(header: dict) -> str:
    """sha256 of every header field but ``check`` itself (labels, key, shape, dtype, data CRC, ...)."""
    fields = {k: v for k, v in header.items() if k != "check"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- reading one file

def read_header_fd(fd: int) -> tuple[dict, int]:
    size = os.fstat(fd).st_size
    if size < _TAIL.size:
        raise CacheFileError("is truncated (shorter than its trailer)")
    length, magic = _TAIL.unpack(os.pread(fd, _TAIL.size, size - _TAIL.size))
    if magic != MAGIC:
        raise CacheFileError("is truncated or is not a tlcourse cache file (no end marker)")
    if length > size - _TAIL.size or length > MAX_HEADER:
        raise CacheFileError("has a damaged header (impossible length)")
    header = parse_json(os.pread(fd, length, size - _TAIL.size - length))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise CacheFileError(f"has format {found!r}, this tlcourse reads format {FORMAT}")
    if header.get("check") != header_check(header):
        raise CacheFileError("has a header that fails its checksum (edited or damaged)")
    data_bytes = size - _TAIL.size - length
    try:
        shape = [int(n) for n in header["shape"]]
        itemsize = {"float16": 2, "bfloat16": 2, "float32": 4, "uint8": 1}[header["dtype"]]
    except (KeyError, TypeError, ValueError):
        raise CacheFileError("has a damaged header (shape/dtype)") from None
    expected = itemsize
    for n in shape:
        expected *= n
    if expected != data_bytes:
        raise CacheFileError(f"is truncated or damaged ({data_bytes} data bytes, the header says {expected})")
    return header, data_bytes


def read_header(path: Path) -> tuple[dict, int]:
    """(header, number of data bytes) of a cache file; ``CacheFileError`` says what is wrong."""
    fd = open_regular(path)
    try:
        return read_header_fd(fd)
    except OSError as exc:
        raise CacheFileError(f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def read_entry(path: Path, key: dict, memory_limit: int | None):
    """``(tensor, targets)`` of the entry at ``path`` if it is intact and stored under ``key``."""
    import torch

    fd = open_regular(path)
    try:
        header, data_bytes = read_header_fd(fd)
        if header.get("key") != key:
            stored = (header.get("key") or {}) if isinstance(header.get("key"), dict) else {}
            if stored.get("torch") != key.get("torch"):
                raise CacheFileError(f"was written by torch {stored.get('torch')}, this is torch "
                                     f"{key.get('torch')}")
            raise CacheFileError("belongs to another key (a foreign or renamed file)")
        if header["dtype"] not in _DTYPES:
            raise CacheFileError(f"has an unknown dtype {header['dtype']!r}")
        if "count" in key and header["shape"][:1] != [key["count"]]:
            raise CacheFileError(f"has {header['shape'][:1]} rows for {key['count']} images")
        targets = header.get("targets")
        if not isinstance(targets, list) or not all(type(t) is int for t in targets):
            raise CacheFileError("has damaged labels")
        buffer = mmap.mmap(fd, data_bytes, access=mmap.ACCESS_COPY) if data_bytes else bytearray()
    except OSError as exc:
        raise CacheFileError(f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if zlib.crc32(memoryview(buffer)) != header.get("crc32"):
        raise CacheFileError("is damaged (checksum mismatch)")
    dtype = getattr(torch, header["dtype"])
    mapped = torch.frombuffer(buffer, dtype=dtype) if data_bytes else torch.empty(0, dtype=dtype)
    tensor = mapped.view(header["shape"])
    if memory_limit is None or data_bytes <= memory_limit:
        tensor = tensor.clone()
    targets = torch.tensor(targets, dtype=torch.long)
    if len(targets) != tensor.shape[0]:
        raise CacheFileError("is damaged (label count differs from the data)")
    return tensor, targets


class EntryWriter:
    """Streams batches of one entry into a new temporary file; :meth:`commit` renames it into place."""

    def __init__(self, path: Path, key: dict, what: str):
        import tempfile

        self.path, self.key, self.what = path, key, what
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.stem}-{os.getpid()}-")
        self.tmp = Path(name)                  # O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600: nothing planted is used
        self.fh = os.fdopen(fd, "wb")
        self.crc, self.rows, self.item_shape, self.dtype = 0, 0, None, None
        self.started = time.perf_counter()

    def write(self, batch) -> None:
        """Append a CPU tensor whose first dimension counts items (all items of one shape)."""
        import torch

        batch = batch.contiguous()
        if self.item_shape is None:
            self.item_shape, self.dtype = list(batch.shape[1:]), str(batch.dtype).replace("torch.", "")
        data = batch.reshape(-1).view(torch.uint8).numpy()
        self.fh.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.rows += batch.shape[0]

    def commit(self, targets: list[int]) -> Path:
        header = {"format": FORMAT, "key": self.key, "shape": [self.rows, *(self.item_shape or [])],
                  "dtype": self.dtype, "crc32": self.crc, "targets": [int(t) for t in targets],
                  "what": self.what, "created": datetime.now().isoformat(timespec="seconds"),
                  "seconds": round(time.perf_counter() - self.started, 3)}
        header = json.loads(json.dumps(header, default=str))           # the exact values a reader will see
        header["check"] = header_check(header)
        blob = json.dumps(header, separators=(",", ":")).encode()
        self.fh.write(blob)
        self.fh.write(_TAIL.pack(len(blob), MAGIC))
        self.fh.flush()
        os.fchmod(self.fh.fileno(), FILE_MODE)                       # readable by a class sharing the folder
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self.fh.close()
        except OSError:
            pass
        try:
            self.tmp.unlink(missing_ok=True)
        except OSError:
            pass

"""The persistent feature cache: what a frozen part of a network computes, kept on disk and reused.

Running the frozen backbone over every image is the slow part of transfer learning on a CPU.
``tlcourse.fast`` does it once per run; this module keeps the result so that the next run,
notebook or command that needs the same numbers reads them instead of recomputing them.

**Key.** An entry is named by the sha256 of everything that changes the stored numbers: the
frozen modules (their structure and every weight and buffer, so a weights name, a local file
and a fine-tuned checkpoint are told apart by content), the output (cut point) and its dtype,
the transform (its ``repr``, which includes the image size) and the view (for augmented views:
seed and view number), each image's path, size, modification time and label, the torch and
torchvision versions, the device type and the memory format. Any change is another file name,
so a stale hit cannot happen; the full key is also stored in the file and compared on load.

**File.** One file per entry, ``<key>.tlcf``: the raw tensor bytes in C order (so the file can
be memory-mapped), then a JSON header (key, shape, dtype, labels, CRC32 of the data), the
header's length and an 8-byte magic. It is streamed to a temporary ``.tmp-*`` file during the
pass, so memory stays bounded, and renamed into place only when complete: an interrupted run
leaves no entry, only a temporary file that ``python -m tlcourse cache clear`` removes. A
truncated, damaged, foreign or other-version file is reported in one line and recomputed.

**Location.** ``TrainConfig.cache_dir`` (``--cache-dir``), else ``TLCOURSE_CACHE_DIR``, else
``data/cache``. A folder that cannot be written (read-only, full disk) gives one warning and
the run goes on with its cache in memory. This module imports torch only where tensors are
read or written, so ``python -m tlcourse cache`` starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .files import megabytes
from .settings import ENV_CACHE_DIR, cache_root

__all__ = ["FORMAT", "MAGIC", "SUFFIX", "CacheEntry", "CacheFileError", "EntryWriter", "FeatureCache",
           "fingerprint_module", "fingerprint_samples", "key_name", "resolve_cache_dir"]

MAGIC = b"TLCFEAT1"
FORMAT = 1
SUFFIX = ".tlcf"
JSON_SUFFIX = ".json"       # small results computed from entries (the linear probe)
TMP_PREFIX = ".tmp-"
_TAIL = struct.Struct("<Q8s")          # header length, magic
_DTYPES = ("float16", "float32", "bfloat16", "uint8")


class CacheFileError(Exception):
    """A cache file that cannot be used: the message says why (truncated, foreign, ...)."""


def warn(message: str) -> None:
    """One line on stderr: cache problems are worth seeing even with ``progress="none"``."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` if given, else ``TLCOURSE_CACHE_DIR``, else ``<data root>/cache``."""
    return Path(cache_dir).expanduser() if cache_dir else cache_root()


# --------------------------------------------------------------------------- keys

def key_name(key: dict) -> str:
    """The file name stem of an entry: sha256 of the canonical JSON of its key."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def fingerprint_module(module) -> str:
    """sha256 of a module's structure and every tensor of its state (weights and buffers)."""
    import torch

    digest = hashlib.sha256(str(module).encode())
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"\n{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def fingerprint_samples(samples: list[tuple[str, int]]) -> str:
    """sha256 of every image's absolute path, size, modification time (ns) and label, in order."""
    digest = hashlib.sha256()
    for path, target in samples:
        stat = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0{target}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- reading one file

def read_header(path: Path) -> tuple[dict, int]:
    """(header, number of data bytes) of a cache file; ``CacheFileError`` says what is wrong."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if size < _TAIL.size:
                raise CacheFileError("is truncated (shorter than its trailer)")
            fh.seek(size - _TAIL.size)
            length, magic = _TAIL.unpack(fh.read(_TAIL.size))
            if magic != MAGIC:
                raise CacheFileError("is truncated or is not a tlcourse cache file (no end marker)")
            if length > size - _TAIL.size:
                raise CacheFileError("has a damaged header")
            fh.seek(size - _TAIL.size - length)
            header = json.loads(fh.read(length).decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CacheFileError("has a damaged header") from None
    except OSError as exc:
        raise CacheFileError(f"cannot be read ({exc.strerror or exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise CacheFileError(f"has format {found!r}, this tlcourse reads format {FORMAT}")
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


@dataclass
class CacheEntry:
    """One file of the cache folder, as ``python -m tlcourse cache`` lists it."""

    path: Path
    bytes: int
    header: dict | None        # None: a damaged file or an interrupted run's temporary file
    problem: str = ""

    @property
    def what(self) -> str:
        if self.header is None:
            return self.problem
        return self.header.get("what", "?")

    @property
    def created(self) -> str:
        return (self.header or {}).get("created", "")


# --------------------------------------------------------------------------- writing one file

class EntryWriter:
    """Streams batches of one entry into a temporary file; :meth:`commit` renames it into place."""

    def __init__(self, path: Path, key: dict, what: str):
        self.path, self.key, self.what = path, key, what
        self.tmp = path.with_name(f"{TMP_PREFIX}{path.stem}-{os.getpid()}-{time.monotonic_ns()}")
        self.fh = open(self.tmp, "wb")
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
        blob = json.dumps(header, separators=(",", ":"), default=str).encode()
        self.fh.write(blob)
        self.fh.write(_TAIL.pack(len(blob), MAGIC))
        self.fh.flush()
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


# --------------------------------------------------------------------------- the cache folder

class FeatureCache:
    """A folder of entries. ``root=None`` is a cache that never reads or writes (``--no-cache``).

    Problems never stop training: an unusable file is recomputed, an unwritable folder turns
    the cache off for writing (one warning) and the run keeps its tensors in memory.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, enabled: bool = True):
        self.root = resolve_cache_dir(root) if enabled else None
        self.write_problem: str | None = None
        self.hits: list[Path] = []
        self.stored: list[Path] = []
        self.rejected: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.root is not None

    @property
    def writable(self) -> bool:
        return self.root is not None and self.write_problem is None

    def path(self, key: dict) -> Path:
        assert self.root is not None
        return self.root / (key_name(key) + SUFFIX)

    # ------------------------------------------------------------------ read

    def load(self, key: dict, *, memory_limit: int | None = None):
        """``(tensor, targets)`` for ``key``, or None on a miss or an unusable file (one line why).

        A tensor up to ``memory_limit`` bytes is read into memory; a larger one stays
        memory-mapped from the file (pages are read as training touches them).
        """
        if self.root is None:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tensor, targets = self._read(path, key, memory_limit)
        except CacheFileError as exc:
            self.rejected.append(path.name)
            warn(f"feature cache: {path} {exc}; recomputing it")
            return None
        self.hits.append(path)
        return tensor, targets

    @staticmethod
    def _read(path: Path, key: dict, memory_limit: int | None):
        import torch

        header, data_bytes = read_header(path)
        if header.get("key") != key:
            stored = (header.get("key") or {}) if isinstance(header.get("key"), dict) else {}
            if stored.get("torch") != key.get("torch"):
                raise CacheFileError(f"was written by torch {stored.get('torch')}, this is torch {key.get('torch')}")
            raise CacheFileError("belongs to another key (a foreign or renamed file)")
        if header["dtype"] not in _DTYPES:
            raise CacheFileError(f"has an unknown dtype {header['dtype']!r}")
        dtype = getattr(torch, header["dtype"])
        numel = data_bytes // torch.empty((), dtype=dtype).element_size()
        try:
            mapped = torch.from_file(str(path), shared=False, size=numel, dtype=dtype)
        except RuntimeError as exc:
            raise CacheFileError(f"cannot be mapped ({exc})") from None
        if zlib.crc32(mapped.view(torch.uint8).numpy()) != header.get("crc32"):
            raise CacheFileError("is damaged (checksum mismatch)")
        tensor = mapped.view(header["shape"])
        if memory_limit is None or data_bytes <= memory_limit:
            tensor = tensor.clone()
        targets = torch.tensor(header["targets"], dtype=torch.long)
        if len(targets) != tensor.shape[0]:
            raise CacheFileError("is damaged (label count differs from the data)")
        return tensor, targets

    # ------------------------------------------------------------------ write

    def writer(self, key: dict, what: str) -> EntryWriter | None:
        """A writer for a new entry, or None if the folder cannot be written (warned once)."""
        if not self.writable:
            return None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return EntryWriter(self.path(key), key, what)
        except OSError as exc:
            self.fail(exc)
            return None

    def fail(self, exc: OSError) -> None:
        """Turn writing off for the rest of this run, with one warning."""
        if self.write_problem is None:
            self.write_problem = exc.strerror or type(exc).__name__
            warn(f"feature cache: cannot write to {self.root} ({self.write_problem}); this run keeps its "
                 f"cache in memory only (free space, or choose another folder with {ENV_CACHE_DIR} / "
                 "--cache-dir, or pass --no-cache)")

    def committed(self, path: Path) -> None:
        self.stored.append(path)

    def load_json(self, key: dict) -> dict | None:
        """A small JSON result stored under ``key`` (None on a miss or an unusable file)."""
        if self.root is None:
            return None
        path = self.root / (key_name(key) + JSON_SUFFIX)
        try:
            stored = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            warn(f"feature cache: {path} is damaged; recomputing it")
            return None
        if not isinstance(stored, dict) or stored.get("key") != key or not isinstance(stored.get("value"), dict):
            warn(f"feature cache: {path} belongs to another key; recomputing it")
            return None
        return stored["value"]

    def store_json(self, key: dict, value: dict, what: str) -> None:
        if not self.writable:
            return
        from .files import atomic_write

        blob = json.dumps({"key": key, "value": value, "what": what,
                           "created": datetime.now().isoformat(timespec="seconds")}, default=str).encode()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write(self.root / (key_name(key) + JSON_SUFFIX), lambda fh: fh.write(blob))
        except OSError as exc:
            self.fail(exc)

    # ------------------------------------------------------------------ the folder

    def entries(self) -> list[CacheEntry]:
        """Every entry and leftover temporary file in the folder, oldest first."""
        if self.root is None or not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            if not path.is_file():
                continue
            if path.name.startswith(TMP_PREFIX) or (path.name.startswith(".") and ".tmp-" in path.name):
                found.append(CacheEntry(path, path.stat().st_size, None, "incomplete (an interrupted run)"))
            elif path.suffix == SUFFIX:
                try:
                    header, _ = read_header(path)
                    found.append(CacheEntry(path, path.stat().st_size, header))
                except CacheFileError as exc:
                    found.append(CacheEntry(path, path.stat().st_size, None, f"unusable: {exc}"))
            elif path.suffix == JSON_SUFFIX and len(path.stem) == 40:
                try:
                    stored = json.loads(path.read_text())
                    found.append(CacheEntry(path, path.stat().st_size, {k: stored.get(k) for k in ("what", "created")}))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                    found.append(CacheEntry(path, path.stat().st_size, None, "unusable: damaged JSON"))
        return sorted(found, key=lambda e: (e.created, e.path.name))

    def size(self) -> int:
        return sum(e.bytes for e in self.entries())

    def clear(self) -> tuple[int, int]:
        """Delete every entry and temporary file (nothing else in the folder); (files, bytes) removed."""
        removed, freed = 0, 0
        for entry in self.entries():
            entry.path.unlink(missing_ok=True)
            removed += 1
            freed += entry.bytes
        return removed, freed

    def summary(self) -> str:
        """One line for the end of a caching step: what was read, written, where, and the size."""
        if self.root is None:
            return "feature cache off (in memory for this run only)"
        parts = []
        if self.hits:
            parts.append(f"{len(self.hits)} read")
        if self.stored:
            parts.append(f"{len(self.stored)} written")
        if self.write_problem:
            parts.append(f"not writable: {self.write_problem}")
        total = self.size()
        return (f"feature cache {self.root}: {', '.join(parts) or 'nothing used'}; "
                f"{megabytes(total)} on disk (`python -m tlcourse cache` lists it)")

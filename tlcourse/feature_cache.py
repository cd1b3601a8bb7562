"""The persistent feature cache: what a frozen part of a network computes, kept on disk and reused.

Running the frozen backbone over every image is the slow part of transfer learning on a CPU.
``tlcourse.fast`` does it once per run; this module keeps the result so that the next run,
notebook or command that needs the same numbers reads them instead of recomputing them.

**Key.** An entry is named by the sha256 of everything that changes the stored numbers: the
frozen modules (their structure and every weight and buffer, so a weights name, a local file
and a fine-tuned checkpoint are told apart by content), the output (cut point) and its dtype,
the transform (its ``repr``, which includes the image size) and the view (for augmented views:
seed and view number), each image's path, the sha256 of its bytes (so an edit that keeps size
and modification time, e.g. a new EXIF orientation, is another key; hashing costs about 0.05 s
for the 398 ants/bees images) and label, the torch and torchvision versions, the device type and
the memory format. Any change is another file name, so a stale hit cannot happen; the full key
is also stored in the file and compared on load.

**File.** One file per entry, ``<key>.tlcf``: the raw tensor bytes in C order (so the file can
be memory-mapped), then a JSON header (key, shape, dtype, labels, CRC32 of the data, and a
sha256 over every other header field), the header's length and an 8-byte magic. It is streamed
to a new temporary file (created exclusively, mode 0600) during the pass, so memory stays
bounded, and renamed into place only when complete: an interrupted run leaves no entry, only a
temporary file that ``python -m tlcourse cache clear`` removes once its process is gone. A
truncated, damaged, edited, foreign or other-version file is reported in one line and recomputed.

**Location.** ``TrainConfig.cache_dir`` (``--cache-dir``), else ``TLCOURSE_CACHE_DIR``, else
``data/cache``; the files live in its subfolder ``tlcourse-features/``, the only place the cache
lists or deletes anything (``tlcourse.cache_folder`` says how it proves a file is its own). A
folder that cannot be written (read-only, full disk) gives one warning and the run goes on with
its cache in memory; ``tlcourse.cache_format`` reads and writes the files. Torch is imported
only where tensors are read or written, so ``python -m tlcourse cache`` starts at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .cache_folder import (
    SUBDIR,
    CacheFileError,
    ensure_store,
    load_json_bounded,
    owned_names,
    safe_unlink,
    store_problem,
    temp_pid,
)
from .cache_format import (
    FORMAT,
    JSON_KIND,
    JSON_SUFFIX,
    MAGIC,
    SUFFIX,
    TMP_PREFIX,
    EntryWriter,
    header_check,
    read_entry,
    read_header,
)
from .files import megabytes, pid_alive
from .settings import ENV_CACHE_DIR, cache_root

__all__ = ["FORMAT", "MAGIC", "SUFFIX", "TMP_PREFIX", "CacheEntry", "CacheFileError", "Cleared", "EntryWriter",
           "FeatureCache", "content_hash", "fingerprint_module", "fingerprint_samples", "key_name",
           "resolve_cache_dir"]


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


#: In-process memo of content hashes, keyed on everything ``stat`` says (ctime cannot be set back by users).
_CONTENT_HASHES: dict[tuple, str] = {}


def content_hash(path: str) -> str:
    """sha256 of a file's bytes (remembered for this process while its stat, ctime included, is unchanged)."""
    info = os.stat(path)
    memo = (os.fsencode(os.path.abspath(path)), info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns,
            info.st_ctime_ns)
    if memo not in _CONTENT_HASHES:
        with open(path, "rb") as fh:
            _CONTENT_HASHES[memo] = hashlib.file_digest(fh, "sha256").hexdigest()
    return _CONTENT_HASHES[memo]


def fingerprint_samples(samples: list[tuple[str, int]]) -> str:
    """sha256 of every image's absolute path, the sha256 of its bytes and its label, in order.

    The bytes, not size and modification time: a rotated EXIF tag (or any edit that restores
    the old mtime) changes what decoding gives, so it must change the key. Paths are hashed as
    bytes, so a file name that is not valid UTF-8 works like any other.
    """
    digest = hashlib.sha256()
    for path, target in samples:
        digest.update(os.fsencode(os.path.abspath(path)))
        digest.update(f"\0{content_hash(path)}\0{target}\n".encode())
    return digest.hexdigest()


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

@dataclass
class Cleared:
    """What ``cache clear`` did: removed entries, and what it left (and why)."""

    removed: int
    freed: int
    running: int = 0            # temporary files of runs still writing them
    other: int = 0              # items of the cache folder the cache did not write
    old_layout: int = 0         # top-level entries of tlcourse versions before the tlcourse-features/ subfolder

    def line(self, root: Path) -> str:
        text = f"feature cache {root}: removed {self.removed} file(s), {megabytes(self.freed)}"
        left = []
        if self.running:
            left.append(f"{self.running} temporary file(s) of a run still writing them")
        if self.other:
            left.append(f"{self.other} other item(s) the cache did not write")
        if self.old_layout:
            left.append(f"{self.old_layout} *.tlcf file(s) of an older tlcourse in {root} itself (delete them by "
                        "hand if they are yours)")
        return text + (f"; left {', '.join(left)}" if left else "")


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

    @property
    def store(self) -> Path:
        """The cache's own subfolder: the only place it reads, lists or deletes files."""
        assert self.root is not None
        return self.root / SUBDIR

    def path(self, key: dict) -> Path:
        return self.store / (key_name(key) + SUFFIX)

    # ------------------------------------------------------------------ read

    def load(self, key: dict, *, memory_limit: int | None = None):
        """``(tensor, targets)`` for ``key``, or None on a miss or an unusable file (one line why).

        A tensor up to ``memory_limit`` bytes is read into memory; a larger one stays
        memory-mapped from the file (pages are read as training touches them).
        """
        if self.root is None:
            return None
        path = self.path(key)
        if not os.path.lexists(path):
            return None
        try:
            problem = store_problem(self.store)
            if problem is not None:
                raise CacheFileError(f"is in a folder that {problem}")
            tensor, targets = self._read(path, key, memory_limit)
        except CacheFileError as exc:
            self.rejected.append(path.name)
            warn(f"feature cache: {path} {exc}; recomputing it")
            return None
        self.hits.append(path)
        return tensor, targets

    _read = staticmethod(read_entry)

    # ------------------------------------------------------------------ write

    def writer(self, key: dict, what: str) -> EntryWriter | None:
        """A writer for a new entry, or None if the folder cannot be written (warned once)."""
        if not self.writable:
            return None
        try:
            ensure_store(self.store)
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

    def _json_path(self, key: dict) -> Path:
        return self.store / (key_name(key) + JSON_SUFFIX)

    def load_json(self, key: dict) -> dict | None:
        """A small JSON result stored under ``key`` (None on a miss or an unusable file)."""
        if self.root is None:
            return None
        path = self._json_path(key)
        if not os.path.lexists(path):
            return None
        try:
            problem = store_problem(self.store)
            if problem is not None:
                raise CacheFileError(f"is in a folder that {problem}")
            stored = load_json_bounded(path)
            if not isinstance(stored, dict) or stored.get("kind") != JSON_KIND:
                raise CacheFileError("is not a tlcourse cache file")
            if stored.get("check") != header_check(stored):
                raise CacheFileError("fails its checksum (edited or damaged)")
            if stored.get("key") != key or not isinstance(stored.get("value"), dict):
                raise CacheFileError("belongs to another key")
        except CacheFileError as exc:
            warn(f"feature cache: {path} {exc}; recomputing it")
            return None
        return stored["value"]

    def store_json(self, key: dict, value: dict, what: str) -> None:
        if not self.writable:
            return
        from .files import atomic_write

        stored = json.loads(json.dumps({"kind": JSON_KIND, "key": key, "value": value, "what": what,
                                        "created": datetime.now().isoformat(timespec="seconds")}, default=str))
        stored["check"] = header_check(stored)
        blob = json.dumps(stored).encode()
        try:
            ensure_store(self.store)
            atomic_write(self._json_path(key), lambda fh: fh.write(blob))
        except OSError as exc:
            self.fail(exc)

    # ------------------------------------------------------------------ the folder

    def entries(self) -> list[CacheEntry]:
        """Every entry and leftover temporary file the cache wrote, oldest first (nothing else)."""
        if self.root is None:
            return []
        mine, _ = owned_names(self.store)
        found = []
        for path, temporary in mine:
            try:
                size = os.lstat(path).st_size
            except OSError:
                continue                                   # deleted meanwhile
            if temporary:
                pid = temp_pid(path.name)
                state = (f"being written (process {pid})" if pid_alive(pid) else
                         "incomplete (an interrupted run)")
                found.append(CacheEntry(path, size, None, state))
            elif path.suffix == SUFFIX:
                try:
                    header, _ = read_header(path)
                    found.append(CacheEntry(path, size, header))
                except CacheFileError as exc:
                    found.append(CacheEntry(path, size, None, f"unusable: {exc}"))
            else:
                try:
                    stored = load_json_bounded(path)
                    if not isinstance(stored, dict):
                        raise CacheFileError("is not a JSON object")
                    found.append(CacheEntry(path, size, {k: str(stored.get(k, "")) for k in ("what", "created")}))
                except CacheFileError as exc:
                    found.append(CacheEntry(path, size, None, f"unusable: {exc}"))
        return sorted(found, key=lambda e: (e.created, e.path.name))

    def size(self) -> int:
        return sum(e.bytes for e in self.entries())

    def others(self) -> tuple[int, int]:
        """(items in the cache folders the cache did not write, top-level ``*.tlcf`` of an older layout)."""
        if self.root is None:
            return 0, 0
        _, foreign = owned_names(self.store)
        other = len(foreign)
        old = 0
        try:
            with os.scandir(self.root) as listing:
                for entry in listing:
                    if entry.name == SUBDIR:
                        continue
                    other += 1
                    old += entry.name.endswith(SUFFIX)
        except OSError:
            pass
        if store_problem(self.store) is not None:
            other += 1                                 # the subfolder itself: not provably ours
        return other, old

    def clear(self) -> Cleared:
        """Delete the entries the cache wrote (and temporary files of runs that are gone); nothing else."""
        done = Cleared(0, 0)
        for entry in self.entries():
            if entry.problem.startswith("being written"):
                done.running += 1
                continue
            if safe_unlink(entry.path, self.store):      # re-checks folder, marker, name and file type
                done.removed += 1
                done.freed += entry.bytes
        done.other, done.old_layout = self.others()
        done.other -= done.old_layout
        return done

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

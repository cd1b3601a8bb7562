"""Round three: the feature cache owns only its subfolder; shared folders, symlinks, FIFOs, crafted files."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch

from tlcourse.cache_folder import MARKER, MARKER_TEXT, SUBDIR
from tlcourse.cache_format import MAGIC, TMP_PREFIX
from tlcourse.cli import main
from tlcourse.feature_cache import FeatureCache, fingerprint_samples, key_name
from tlcourse.files import FILE_MODE, atomic_write, write_json

KEY = {"kind": "test", "model": "abc", "torch": torch.__version__}
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="symlinks and FIFOs as on POSIX")


def _write(cache: FeatureCache, key: dict = KEY, rows: int = 5) -> Path:
    writer = cache.writer(key, "test entry")
    writer.write(torch.randn(rows, 3))
    return writer.commit([i % 2 for i in range(rows)])


def _snapshot(root: Path) -> dict[str, object]:
    """Every path under ``root`` (links not followed) with what it is and holds."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                found[str(path)] = ("link", os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                found[str(path)] = ("file", path.read_bytes())
            else:
                found[str(path)] = ("other", stat.S_IFMT(info.st_mode))
    return found


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


# --------------------------------------------------------------------------- case 1: clear deletes only its own

def test_clear_in_a_folder_of_user_files_removes_only_the_cache_entries(tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    # the four kinds of user file the old name patterns deleted, and more
    user = {".tmp-notes": b"mine", ".config.tmp-1": b"mine", "a" * 40 + ".json": b'{"my": "data"}',
            "b" * 40 + ".tlcf": b"not a cache file", "thesis.txt": b"years of work"}
    for name, data in user.items():
        (home / name).write_bytes(data)
    cache = FeatureCache(home)
    entry = _write(cache)
    cache.store_json({"probe": 1}, {"acc": 1.0}, "probe")
    assert main(["cache", "clear", "--cache-dir", str(home)]) == 0
    line = capsys.readouterr().out.strip()
    assert "removed 2 file(s)" in line and "left 4 other item(s) the cache did not write" in line
    assert "1 *.tlcf file(s) of an older tlcourse" in line and "\n" not in line
    assert {name: (home / name).read_bytes() for name in user} == user
    assert not entry.exists() and (home / SUBDIR / MARKER).read_bytes() == MARKER_TEXT


def test_a_subfolder_without_the_marker_is_never_touched(tmp_path, capsys):
    store = tmp_path / SUBDIR
    store.mkdir()
    mine = store / ("c" * 40 + ".tlcf")                          # looks like an entry, but the folder is not ours
    mine.write_bytes(b"user data" + MAGIC)
    cache = FeatureCache(tmp_path)
    assert cache.entries() == [] and cache.clear().removed == 0 and mine.read_bytes() == b"user data" + MAGIC
    assert cache.writer(KEY, "x") is None                       # never adopted: it holds something
    assert "has no usable CACHEDIR.TAG" in capsys.readouterr().err
    assert mine.read_bytes() == b"user data" + MAGIC


def test_property_random_folder_contents_never_lose_a_user_file(tmp_path):
    """Random mixes of user files, cache-like names, links, FIFOs and folders: only cache entries go."""
    rng = random.Random(20261207)
    names = [".tmp-" + "d" * 40 + "-1-abc", "e" * 40 + ".json", "f" * 40 + ".tlcf", ".x.tmp-1", ".tmp-x",
             "CACHEDIR.TAG", SUBDIR, "notes.txt", ".hidden", "0" * 40 + ".json.bak", "1" * 39 + ".tlcf"]
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    for trial in range(40):
        root = tmp_path / f"t{trial}"
        root.mkdir()
        cache = FeatureCache(root)
        ours = [_write(cache, KEY | {"n": i}) for i in range(rng.randint(0, 2))] if rng.random() < 0.7 else []
        store = root / SUBDIR
        if store.is_dir() and rng.random() < 0.2:
            (store / MARKER).write_bytes(b"Signature: 8a477f597d28d172789f06886806bc55\nforged\n")
            ours = []                                          # a marker we did not write: nothing is ours
        for _ in range(rng.randint(1, 8)):
            folder = store if store.is_dir() and rng.random() < 0.5 else root
            name = rng.choice(names) + ("" if rng.random() < 0.7 else str(rng.randint(0, 9)))
            path = folder / name
            if os.path.lexists(path):
                continue
            kind = rng.choice(["file", "link", "fifo", "dir"] if folder == store else ["file", "link", "fifo", "dir"])
            if folder == store and kind == "file" and (name.endswith((".tlcf", ".json")) or name.startswith(".tmp-")):
                kind = "link"   # a regular file named like an entry inside the marked subfolder is the cache's
            if kind == "file":
                path.write_bytes(rng.randbytes(rng.randint(0, 64)) + (MAGIC if rng.random() < 0.5 else b""))
            elif kind == "link":
                path.symlink_to(outside)
            elif kind == "fifo" and hasattr(os, "mkfifo"):
                os.mkfifo(path)
            else:
                path.mkdir()
        before = _snapshot(root)
        cache.entries()
        cache.clear()
        after = _snapshot(root)
        gone = set(before) - set(after)
        assert gone == {str(p) for p in ours}, f"trial {trial}: {sorted(gone)}"
        assert all(after[p] == before[p] for p in after), f"trial {trial}: a file changed"
        assert outside.read_bytes() == b"precious"


def test_clear_keeps_the_temporary_files_of_a_running_training(tmp_path, capsys):
    cache = FeatureCache(tmp_path)
    writer = cache.writer(KEY, "still running")
    writer.write(torch.randn(4, 3))
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "left 1 temporary file(s) of a run still writing them" in capsys.readouterr().out
    assert writer.commit([0, 1, 0, 1]).exists() and cache.load(KEY) is not None


def test_leftovers_of_killed_runs_are_cleared(tmp_path):
    cache = FeatureCache(tmp_path)
    _write(cache)
    leftover = cache.store / f"{TMP_PREFIX}{'9' * 40}-{_dead_pid()}-abcd"
    leftover.write_bytes(b"half")
    assert cache.clear().removed == 2 and not leftover.exists()


# --------------------------------------------------------------------------- case 2: no write through a symlink

@POSIX
@pytest.mark.parametrize("writer", ["atomic_write", "cache entry", "probe json", "marker"])
def test_a_symlink_planted_under_the_next_temporary_name_is_never_written_through(tmp_path, monkeypatch, writer):
    victim = tmp_path / "victim" / "dotfile"
    victim.parent.mkdir()
    victim.write_bytes(b"the other user's file")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    cache = FeatureCache(shared)
    if writer != "marker":
        cache.writer({"warm": "up"}, "creates the subfolder").abort()
    else:
        cache.store.mkdir(mode=0o1777)                          # another user made the subfolder first
    folder = shared if writer == "atomic_write" else cache.store
    planted = "planted"
    names = iter([planted, "fresh1", "fresh2", "fresh3"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    # the exact name the writer tries first, and the old predictable names, all point at the victim
    prefix = {"atomic_write": ".args.json.tmp-", "cache entry": f"{TMP_PREFIX}{key_name(KEY)}-",
              "probe json": f".{key_name(KEY)}.json.tmp-", "marker": f".{MARKER}.tmp-"}[writer]
    (folder / f"{prefix}{os.getpid()}-{planted}").symlink_to(victim)
    (folder / f"{prefix}{os.getpid()}").symlink_to(victim)
    if writer == "atomic_write":
        write_json({"lr": 0.1}, shared / "args.json")
        assert (shared / "args.json").read_text().startswith("{")
    elif writer == "cache entry":
        _write(cache)
        assert cache.load(KEY) is not None
    elif writer == "probe json":
        cache.store_json(KEY, {"acc": 1.0}, "probe")
        assert cache.load_json(KEY) == {"acc": 1.0}
    else:                                                       # not empty, not ours: refused, not adopted
        assert cache.writer(KEY, "first write creates the marker") is None
        assert not (cache.store / MARKER).exists()
    assert victim.read_bytes() == b"the other user's file"


@POSIX
def test_temporary_files_are_private_and_finished_files_get_the_umask_mode(tmp_path):
    seen = {}

    def write(fh):
        seen["mode"] = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
        fh.write(b"x")

    path = atomic_write(tmp_path / "f.bin", write)
    assert seen["mode"] == 0o600 and stat.S_IMODE(path.stat().st_mode) == FILE_MODE
    cache = FeatureCache(tmp_path)
    writer = cache.writer(KEY, "x")
    assert stat.S_IMODE(writer.tmp.stat().st_mode) == 0o600
    writer.write(torch.randn(2, 3))
    assert stat.S_IMODE(writer.commit([0, 1]).stat().st_mode) == FILE_MODE   # others can read a shared cache


@POSIX
def test_a_symlinked_subfolder_is_neither_used_nor_cleared(tmp_path, capsys):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / MARKER).write_bytes(MARKER_TEXT)
    kept = elsewhere / ("a" * 40 + ".tlcf")
    kept.write_bytes(b"x")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / SUBDIR).symlink_to(elsewhere)
    cache = FeatureCache(tmp_path / "c")
    assert cache.clear().removed == 0 and kept.exists()
    assert cache.writer(KEY, "x") is None and "symbolic link" in capsys.readouterr().err


# --------------------------------------------------------------------------- case 5, 9: crafted and hostile files

def _rewrite_header(path: Path, change) -> None:
    import json
    import struct

    data = path.read_bytes()
    length, magic = struct.unpack("<Q8s", data[-16:])
    header = json.loads(data[-16 - length:-16])
    change(header)
    blob = json.dumps(header).encode()
    path.write_bytes(data[:-16 - length] + blob + struct.pack("<Q8s", len(blob), magic))


@pytest.mark.parametrize("change", [
    lambda h: h.update(targets=[1 - t for t in h["targets"]]),           # labels flipped by hand
    lambda h: h.update(what="something else"),
    lambda h: h.update(shape=[5, 3, 1]),
    lambda h: h.pop("check"),
])
def test_an_edited_header_fails_its_checksum_and_is_recomputed(tmp_path, capsys, change):
    cache = FeatureCache(tmp_path)
    path = _write(cache)
    _rewrite_header(path, change)
    assert cache.load(KEY) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recomputing it" in err[0] and path.name in err[0]


@POSIX
def test_a_fifo_or_symlink_in_place_of_an_entry_does_not_hang_or_follow(tmp_path, capsys):
    cache = FeatureCache(tmp_path)
    cache.writer({"warm": "up"}, "x").abort()
    os.mkfifo(cache.path(KEY))
    os.mkfifo(cache.store / (key_name(KEY) + ".json"))
    done = {}
    thread = threading.Thread(target=lambda: done.update(a=cache.load(KEY), b=cache.load_json(KEY),
                                                         c=cache.entries()), daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "reading a FIFO in the cache folder hung"
    assert done["a"] is None and done["b"] is None
    err = capsys.readouterr().err
    assert err.count("is not a regular file") == 2
    os.unlink(cache.path(KEY))
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 100)
    cache.path(KEY).symlink_to(secret)
    assert cache.load(KEY) is None and "symbolic link" in capsys.readouterr().err


def test_a_deeply_nested_header_is_one_line_not_a_recursion_error(tmp_path, capsys):
    import struct

    cache = FeatureCache(tmp_path)
    path = _write(cache)
    blob = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(blob + struct.pack("<Q8s", len(blob), MAGIC))
    json_path = cache.store / (key_name(KEY) + ".json")
    json_path.write_bytes(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    assert cache.load(KEY) is None and cache.load_json(KEY) is None
    assert capsys.readouterr().err.count("nested deeper") == 2
    assert main(["cache", "list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 unusable or incomplete file(s)" in out and "nested deeper" in out


def test_an_entry_of_the_wrong_row_count_is_refused_naming_the_file(tmp_path, capsys):
    cache = FeatureCache(tmp_path)
    key = KEY | {"count": 7}
    _write(cache, key, rows=5)
    assert cache.load(key) is None
    err = capsys.readouterr().err
    assert "rows for 7 images" in err and key_name(key) in err


# --------------------------------------------------------------------------- case 10: non-UTF-8 names

@pytest.mark.skipif(sys.platform != "linux", reason="Linux file names are bytes")
def test_a_file_name_that_is_not_utf8_can_be_fingerprinted(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")                           # Latin-1 bytes: surrogate-escaped in Python
    path = tmp_path / name
    path.write_bytes(b"image bytes")
    before = fingerprint_samples([(str(path), 0)])
    path.write_bytes(b"image bytez")
    assert fingerprint_samples([(str(path), 0)]) != before

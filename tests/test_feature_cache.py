"""The persistent feature cache: keys, atomic files, bad files, unwritable folders, and reuse by ``train``."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from tlcourse.engine import TrainConfig, train
from tlcourse.feature_cache import SUFFIX, TMP_PREFIX, EntryWriter, FeatureCache, key_name

KEY = {"kind": "test", "model": "abc", "torch": torch.__version__}


def _write(cache: FeatureCache, key: dict, tensor: torch.Tensor, targets: list[int]) -> Path:
    writer = cache.writer(key, "test entry")
    for chunk in tensor.split(3):
        writer.write(chunk)
    return writer.commit(targets)


@pytest.fixture
def cache(tmp_path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


def test_an_entry_round_trips_and_is_listed_and_cleared(cache):
    data = torch.randn(7, 4, 2, 2).half()
    path = _write(cache, KEY, data, list(range(7)))
    assert path.name == key_name(KEY) + SUFFIX and path.parent == cache.store
    tensor, targets = cache.load(KEY)
    assert torch.equal(tensor, data) and targets.tolist() == list(range(7))
    mapped, _ = cache.load(KEY, memory_limit=0)                 # too big for memory: memory-mapped
    assert torch.equal(mapped, data)
    assert cache.load(KEY | {"model": "other"}) is None          # another key: another file, a miss
    (entry,) = cache.entries()
    assert entry.what == "test entry" and entry.bytes == path.stat().st_size == cache.size()
    cleared = cache.clear()
    assert (cleared.removed, cleared.freed) == (1, entry.bytes) and cache.entries() == []


@pytest.mark.parametrize("damage,message", [
    (lambda p: p.write_bytes(p.read_bytes()[:-5]), "truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[:40]), "truncated"),
    (lambda p: p.write_bytes(b"not a cache file at all"), "not a tlcourse cache file"),
    (lambda p: p.write_bytes(b""), "truncated"),
    (lambda p: p.write_bytes(bytes([p.read_bytes()[0] ^ 0xFF]) + p.read_bytes()[1:]), "checksum"),
])
def test_a_damaged_file_is_reported_in_one_line_and_not_used(cache, capsys, damage, message):
    path = _write(cache, KEY, torch.randn(5, 3), [0, 1, 0, 1, 0])
    damage(path)
    assert cache.load(KEY) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "recomputing" in err[0] and path.name in err[0]


def test_a_file_from_another_torch_version_or_key_is_not_used(cache, capsys):
    old = KEY | {"torch": "1.13.0"}
    _write(cache, old, torch.randn(2, 3), [0, 1])
    os.replace(cache.path(old), cache.path(KEY))                # same name, foreign content
    assert cache.load(KEY) is None
    assert "written by torch 1.13.0" in capsys.readouterr().err
    _write(cache, KEY | {"model": "zzz"}, torch.randn(2, 3), [0, 1])
    os.replace(cache.path(KEY | {"model": "zzz"}), cache.path(KEY))
    assert cache.load(KEY) is None
    assert "another key" in capsys.readouterr().err


def test_an_interrupted_write_leaves_no_entry_only_a_temporary_file(cache):
    writer = cache.writer(KEY, "interrupted")
    writer.write(torch.randn(4, 3))
    assert cache.load(KEY) is None                              # nothing committed yet
    (running,) = cache.entries()
    assert running.path.name.startswith(TMP_PREFIX) and running.header is None and "being written" in running.what
    assert cache.clear().running == 1 and running.path.exists()      # a run still writing keeps its file
    writer.fh.close()                                           # the process "died" here: another pid's leftover
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = running.path.with_name(running.path.name.replace(f"-{os.getpid()}-", f"-{dead.stdout.strip()}-"))
    os.replace(running.path, leftover)
    (entry,) = cache.entries()
    assert "interrupted" in entry.what
    assert cache.clear().removed == 1 and sorted(p.name for p in cache.store.iterdir()) == ["CACHEDIR.TAG"]


def test_an_unwritable_folder_warns_once_and_writes_nothing(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cache = FeatureCache(blocker / "cache")                     # cannot be created under a file
    assert cache.writer(KEY, "a") is None and cache.writer(KEY, "b") is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write to" in err[0] and "--no-cache" in err[0]
    assert not cache.writable and cache.load(KEY) is None


# --------------------------------------------------------------------------- through train()

def _config(data_dir, tmp_path, **overrides) -> TrainConfig:
    values = dict(data_dir=str(data_dir), arch="resnet18", weights=None, image_size=32, epochs=2, batch_size=4,
                  seed=1, device="cpu", progress="epoch", output_dir=str(tmp_path / "runs"),
                  cache_dir=str(tmp_path / "cache"))
    return TrainConfig(**values | overrides)


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_second_run_reads_everything_from_the_cache_and_trains_the_same(tiny_data, tmp_path, capsys, one_thread):
    cfg = _config(tiny_data, tmp_path, freeze="last_stage", fast_views=2)
    first = train(cfg)
    out = capsys.readouterr().out
    assert "3 pass(es)" in out and "written" in out and "linear probe" in out   # view 0, view 1, val
    second = train(cfg)
    out = capsys.readouterr().out
    assert "pass(es)" not in out and "entries read from the feature cache" in out
    assert second.history == [r | {"seconds": s["seconds"]} for r, s in zip(first.history, second.history)]
    assert second.probe == first.probe                          # read back with the features, not refitted
    # head-only on the same images finds the pooled features the last_stage run stored for the probe
    head = train(cfg.replace(freeze="head", fast_views=1))
    assert "pass(es)" not in capsys.readouterr().out and head.route == "views"


def test_what_changes_the_result_changes_the_key(tiny_data, tmp_path, capsys, one_thread):
    cfg = _config(tiny_data, tmp_path, fast_views=2, epochs=1)
    train(cfg)
    capsys.readouterr()
    train(cfg.replace(fast_views=3))                            # one more view: only it is computed
    assert "1 pass(es)" in capsys.readouterr().out
    image = next((tiny_data / "train").rglob("*.png"))
    before = image.stat()
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))   # touched, same bytes: still a hit
    train(cfg)
    assert "pass(es)" not in capsys.readouterr().out
    with Image.open(image) as im:                                 # edited in place, size and mtime kept
        edited = im.convert("RGB").transpose(Image.Transpose.ROTATE_180)
    edited.save(image)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    train(cfg)
    assert "2 pass(es)" in capsys.readouterr().out              # both train views; val unchanged
    train(cfg.replace(image_size=40))
    assert "3 pass(es)" in capsys.readouterr().out
    train(cfg.replace(seed=2))              # another random init (weights=None): the weights are in the key
    assert "3 pass(es)" in capsys.readouterr().out
    assert train(cfg.replace(cache=False)).route_description.count("pass(es)") == 1
    assert "feature cache off" in capsys.readouterr().out


def test_a_full_disk_mid_write_keeps_training_in_memory(tiny_data, tmp_path, capsys, monkeypatch, one_thread):
    def full(self, batch):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(EntryWriter, "write", full)
    result = train(_config(tiny_data, tmp_path, fast_views=2, epochs=1))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "in memory" in err[0]
    assert result.route == "views" and FeatureCache(tmp_path / "cache").entries() == []


def test_caches_over_the_memory_limit_stream_to_disk_and_train_the_same(tiny_data, tmp_path, monkeypatch,
                                                                         one_thread):
    cfg = _config(tiny_data, tmp_path, freeze="last_stage", fast_dtype="float32", fast_views=2, probe=False)
    in_memory = train(cfg.replace(cache_dir=str(tmp_path / "a")))
    monkeypatch.setattr("tlcourse.fast.routes.AUTO_MEMORY_LIMIT", 1000)   # where prepare reads it
    streamed = train(cfg.replace(cache_dir=str(tmp_path / "b")))
    assert "memory-mapped" in streamed.route_description
    assert [r["train_loss"] for r in streamed.history] == [r["train_loss"] for r in in_memory.history]


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root ignores folder permissions")
def test_a_read_only_folder_warns_and_trains(tiny_data, tmp_path, capsys, one_thread):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = train(_config(tiny_data, tmp_path, cache_dir=str(folder), epochs=1))
    finally:
        folder.chmod(0o755)
    assert result.history and "cannot write to" in capsys.readouterr().err


def test_cache_command_lists_and_clears(tiny_data, tmp_path, one_thread):
    train(_config(tiny_data, tmp_path, fast_views=1, epochs=1, progress="none"))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    cmd = [sys.executable, "-m", "tlcourse", "cache", "--cache-dir", str(tmp_path / "cache")]
    listed = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert listed.returncode == 0 and "3 entries" in listed.stdout and "val view 0" in listed.stdout
    assert "linear probe" in listed.stdout                      # train and val features, and the probe
    cleared = subprocess.run(cmd[:4] + ["clear"] + cmd[4:], capture_output=True, text=True, env=env)
    assert "removed 3 file(s)" in cleared.stdout
    assert "0 entries, 0.0 MB" in subprocess.run(cmd[:4] + ["size"] + cmd[4:], capture_output=True, text=True,
                                                 env=env).stdout


def test_no_cache_on_the_command_line(tiny_data, tmp_path, capsys, one_thread):
    from tlcourse.cli import main

    args = ["train", "--data-dir", str(tiny_data), "--weights", "none", "--epochs", "1", "--image-size", "32",
            "--output-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    assert main(args + ["--no-cache"]) == 0
    assert "feature cache off" in capsys.readouterr().out and not (tmp_path / "cache").exists()
    assert main(args) == 0
    assert "written" in capsys.readouterr().out and any((tmp_path / "cache").iterdir())

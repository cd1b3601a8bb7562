"""The frozen backbone's pass on ONNX Runtime: the same numbers as PyTorch eager, cached safely, and never a crash."""

from __future__ import annotations

import errno
import sys

import pytest
import torch

from tests.conftest import make_image_folder
from tlcourse.archs import ARCHS
from tlcourse.cache_format import EntryWriter
from tlcourse.engine import TrainConfig, train
from tlcourse.fast import parts_of
from tlcourse.fast import runtime as backbone_runtime
from tlcourse.feature_cache import FeatureCache
from tlcourse.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
EXAMPLE = torch.zeros(1, 3, 64, 64)


def _parts(arch: str = "mobilenet_v2"):
    torch.manual_seed(0)
    return parts_of(build_model(arch, 3, weights=None))


def _run(parts, x):
    outs = []
    with torch.no_grad():
        for _, part in parts:
            x = part.eval()(x)
            outs.append(x)
    return outs


def _graphs(cache: FeatureCache) -> list:
    return [e for e in cache.entries() if "ONNX graph" in e.what]


@pytest.mark.parametrize("arch", list(ARCHS))
def test_onnxruntime_features_agree_with_eager_on_every_arch(arch, tmp_path):
    parts = _parts(arch)
    runtime, ort_parts = backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, arch=arch)
    assert runtime == f"onnxruntime {backbone_runtime.onnxruntime_version()}"
    assert all(isinstance(p, backbone_runtime.OrtPart) for _, p in ort_parts)
    x = torch.randn(3, 3, 64, 64)                     # a batch size the export never saw (dynamic axis)
    for (name, _), eager, ort in zip(parts, _run(parts, x), _run(ort_parts, x)):
        assert ort.shape == eager.shape, name
        rel = ((ort - eager).abs().max() / eager.abs().max()).item()
        assert rel < 1e-4, (arch, name, rel)


def test_the_graph_is_a_cache_entry_reused_by_the_next_run(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    parts = _parts()
    backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=cache, arch="mobilenet_v2")
    assert len(_graphs(cache)) == 2                   # up to the last stage, and the rest with pooling

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")
    monkeypatch.setattr(backbone_runtime, "export_graph", no_export)
    again = FeatureCache(tmp_path)
    runtime, _ = backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=again)
    assert runtime.startswith("onnxruntime ") and len(again.hits) == 2


def test_missing_onnxruntime_falls_back_to_eager_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)          # `import onnxruntime` raises ImportError
    lines = []
    parts = _parts()
    runtime, used = backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, log=lines.append)
    assert runtime == "torch" and used is parts
    assert lines == ["backbone runtime: PyTorch eager (onnxruntime is not installed (pip install onnxruntime))"]


def test_asking_for_torch_or_a_gpu_uses_eager_silently():
    lines = []
    parts = _parts()
    assert backbone_runtime.frozen_parts(parts, "torch", "cpu", EXAMPLE, log=lines.append)[0] == "torch"
    assert backbone_runtime.runtime_name("auto", "cuda")[0] == "torch"
    assert lines == []


def test_an_export_that_fails_falls_back_to_eager_in_one_line(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::odd' to ONNX opset version 17 is not supported.\nmore")
    monkeypatch.setattr(torch.onnx, "export", broken)
    lines = []
    cache = FeatureCache(tmp_path)
    runtime, used = backbone_runtime.frozen_parts(_parts(), "auto", "cpu", EXAMPLE, cache=cache,
                                                  arch="mobilenet_v2", log=lines.append)
    assert runtime == "torch" and len(lines) == 1
    assert "exporting mobilenet_v2 to ONNX Runtime failed: RuntimeError: Exporting the operator" in lines[0]
    assert _graphs(cache) == []


def test_a_full_disk_keeps_the_graph_in_memory(monkeypatch, tmp_path, capsys):
    def full(self, batch):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(EntryWriter, "write", full)
    cache = FeatureCache(tmp_path)
    parts = _parts()
    runtime, ort_parts = backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=cache)
    assert runtime.startswith("onnxruntime ")
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(_run(ort_parts, x)[-1], _run(parts, x)[-1], rtol=1e-4, atol=1e-5)
    assert _graphs(cache) == [] and not list(cache.store.glob(".tmp-*"))
    assert "No space left on device" in capsys.readouterr().err


def test_a_truncated_cached_graph_is_exported_again(tmp_path, capsys):
    parts = _parts()
    backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=FeatureCache(tmp_path))
    path = _graphs(FeatureCache(tmp_path))[0].path
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    cache = FeatureCache(tmp_path)
    runtime, _ = backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=cache)
    assert runtime.startswith("onnxruntime ")
    assert "truncated" in capsys.readouterr().err and len(cache.stored) == 1
    assert cache.stored == [path] and FeatureCache(tmp_path).entries()[0].problem == ""   # whole again


def test_a_graph_from_another_version_is_never_used(tmp_path, monkeypatch, capsys):
    parts = _parts()
    monkeypatch.setattr(backbone_runtime, "onnxruntime_version", lambda: "0.0.1")
    backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=FeatureCache(tmp_path))
    old = {e.path.name for e in _graphs(FeatureCache(tmp_path))}
    monkeypatch.undo()
    cache = FeatureCache(tmp_path)
    runtime, _ = backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=cache)
    assert runtime == f"onnxruntime {backbone_runtime.onnxruntime_version()}"
    assert cache.hits == [] and len(cache.stored) == 2 and not old & {p.name for p in cache.stored}
    # A file renamed into the current key's place is refused (its stored key differs) and exported again.
    for new in cache.stored:
        new.write_bytes((tmp_path / "tlcourse-features" / sorted(old)[0]).read_bytes())
    cache = FeatureCache(tmp_path)
    backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=cache)
    assert "belongs to another key" in capsys.readouterr().err and len(cache.stored) == 2


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("leaves"), classes=("oak", "maple", "birch"),
                             per_class={"train": 8, "val": 5}, size=(72, 56))


@pytest.mark.parametrize("freeze", ["head", "last_stage"])
def test_training_on_either_runtime_gives_the_same_result(three_classes, tmp_path, freeze):
    cfg = TrainConfig(data_dir=str(three_classes), arch="mobilenet_v2", weights=None, image_size=64, freeze=freeze,
                      epochs=3, batch_size=8, seed=1, device="cpu", progress="none", augment=False,
                      cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "runs"))
    eager = train(cfg, backbone_runtime="torch")
    ort = train(cfg, backbone_runtime="onnxruntime")
    assert "images/s, torch)" in eager.route_description
    assert f"images/s, onnxruntime {backbone_runtime.onnxruntime_version()})" in ort.route_description
    assert "read from the feature cache" not in ort.route_description  # a torch-filled cache never serves the ORT run
    val_images = 15
    assert ort.best["acc_epoch"] == eager.best["acc_epoch"]
    assert abs(ort.best["acc"] - eager.best["acc"]) <= 1 / val_images + 1e-9
    again = train(cfg, backbone_runtime="onnxruntime")           # warm: the ORT run's own entries
    assert "read from the feature cache" in again.route_description and "computed" not in again.route_description
    assert again.best == ort.best


def test_the_benchmark_rows_measure_both_runtimes_on_the_same_batches():
    from tlcourse.bench_runtime import measure_runtimes, runtime_markdown

    torch.manual_seed(0)
    model = build_model("resnet18", 3, weights=None).eval()
    row = measure_runtimes(model, [torch.randn(2, 3, 64, 64)], repeats=1)
    assert row["runtime"].startswith("onnxruntime ") and row["max_rel_diff"] < 1e-4
    assert row["eager_images_per_s"] > 0 and row["runtime_images_per_s"] > 0
    end = {"images": 2, "runtime": row["runtime"], "workers": 1, "threads": 1, "decode_images_per_s": 1.0,
           "runtime_images_per_s": 2.0, "pass_images_per_s": 1.0, "ratio": 0.5}
    text = "\n".join(runtime_markdown({"forward": [{"arch": "resnet18", "weights": "random", **row}],
                                       "end_to_end": end}))
    assert "| resnet18 | random |" in text and "**50 %** of the runtime alone" in text


def test_bench_help_comes_from_the_package(capsys):
    from tlcourse.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "--only-runtime" in capsys.readouterr().out


def test_auto_runs_a_small_pass_eagerly_unless_its_graphs_are_cached(tmp_path):
    parts, cache = _parts(), FeatureCache(tmp_path)
    small = backbone_runtime.SMALL_PASS - 1
    assert backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=cache, images=small)[0] == "torch"
    assert backbone_runtime.frozen_parts(parts, "onnxruntime", "cpu", EXAMPLE, cache=cache,
                                         images=small)[0].startswith("onnxruntime ")      # asked for: exported
    assert backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=cache,
                                         images=small)[0].startswith("onnxruntime ")      # now cached: cheap


def test_a_cached_graph_onnxruntime_refuses_is_exported_again(tmp_path):
    parts = _parts()
    backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=FeatureCache(tmp_path))
    entry = _graphs(FeatureCache(tmp_path))[0]
    key = entry.header["key"]
    cache = FeatureCache(tmp_path)                       # an intact entry (checksums fine) that is not a graph
    writer = cache.writer(key, entry.header["what"])
    writer.write(torch.zeros(1, 100, dtype=torch.uint8))
    writer.commit([0])
    again = FeatureCache(tmp_path)
    runtime, _ = backbone_runtime.frozen_parts(parts, "auto", "cpu", EXAMPLE, cache=again)
    assert runtime.startswith("onnxruntime ") and len(again.stored) == 1
    assert again.load(key)[0].numel() > 100

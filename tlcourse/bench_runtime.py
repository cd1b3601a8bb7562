"""The backbone runtime rows of ``python -m tlcourse bench``: PyTorch eager against ONNX Runtime, side by side.

* **Forward only**: the frozen trunk up to the pooled features (the part a head-only run
  computes once) on pre-decoded 224 px batches of 32, fp32, for MobileNetV2 (the local ImageNet
  backbone when present), ResNet-18 and EfficientNet-B0 (random weights: speed and agreement do
  not depend on the values). Runs alternate between the runtimes and the median is kept, so a
  change of machine load affects both alike; max abs diff of the features is reported too.
* **End to end**: on a folder of JPEGs, images/s of decode + resize alone (the loader workers the
  pass uses), of the runtime alone on the same images decoded beforehand, and of the pass itself
  (decode in workers beside the runtime): the pass should reach >= 80 % of the runtime alone.

:func:`measure_runtimes` is also what notebook 03 calls on its own images.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.data import DataLoader

from .fast import SampleViews, parts_of, run_passes
from .fast.runtime import decode_workers, frozen_parts, onnxruntime_version, ort_threads
from .freeze import apply_freeze
from .models import build_model, find_local_weights

ARCHS = ("mobilenet_v2", "resnet18", "efficientnet_b0")


def _model(arch: str):
    torch.manual_seed(0)
    weights = find_local_weights(arch) if arch == "mobilenet_v2" else None
    model = apply_freeze(build_model(arch, 3, weights=str(weights) if weights else None), "head")
    return model.eval(), ("ImageNet" if weights else "random")


def _run(parts, batch: torch.Tensor) -> torch.Tensor:
    x = batch
    for _, part in parts:
        x = part(x)
    return x


@torch.no_grad()
def measure_runtimes(model, batches: list[torch.Tensor], repeats: int = 3, cache=None) -> dict:
    """images/s of the frozen trunk of ``model`` on ``batches``, eager and ONNX Runtime, median of interleaved runs.

    ``cache``: a ``FeatureCache`` whose exported graphs to reuse (a training run's), else export now.
    """
    parts = parts_of(model)
    runtime, ort = frozen_parts(parts, "onnxruntime", "cpu", batches[0][:1], threads=torch.get_num_threads(),
                                cache=cache)
    rows = {"torch": [], runtime: []}
    images = sum(len(b) for b in batches)
    reference = _run(parts, batches[0])                                                     # also a warm-up
    diff = float((reference - _run(ort, batches[0])).abs().max())
    for _ in range(repeats):
        for name, used in (("torch", parts), (runtime, ort)):
            started = time.perf_counter()
            for b in batches:
                _run(used, b)
            rows[name].append(images / (time.perf_counter() - started))
    eager, fast = statistics.median(rows["torch"]), statistics.median(rows[runtime])
    return {"runtime": runtime, "images": images, "eager_images_per_s": round(eager, 1),
            "runtime_images_per_s": round(fast, 1), "speedup": round(fast / eager, 2), "max_abs_diff": diff,
            "max_rel_diff": diff / max(float(reference.abs().max()), 1e-30)}


def forward_rows(batch_size: int = 32, image_size: int = 224, batches: int = 2, repeats: int = 3) -> list[dict]:
    """The forward-only table: one row per architecture of :data:`ARCHS`."""
    generator = torch.Generator().manual_seed(0)
    data = [torch.randn(batch_size, 3, image_size, image_size, generator=generator) for _ in range(batches)]
    rows = []
    for arch in ARCHS:
        model, weights = _model(arch)
        print(f"--- backbone runtime: {arch} ({weights} weights), eager vs ONNX Runtime ...", flush=True)
        row = {"arch": arch, "weights": weights, **measure_runtimes(model, data, repeats)}
        print(f"    eager {row['eager_images_per_s']} img/s, {row['runtime']} {row['runtime_images_per_s']} img/s "
              f"({row['speedup']}x), max abs diff {row['max_abs_diff']:.1e} ({row['max_rel_diff']:.1e} of the largest)",
              flush=True)
        rows.append(row)
    return rows


class _Discard:
    """A pass sink that keeps nothing: the end-to-end rows time the pass, not the cache file."""

    dtype = torch.float32

    def add(self, at: int, batch: torch.Tensor) -> None:
        pass


@torch.no_grad()
def end_to_end(data_dir, images: int = 320, batch_size: int = 32) -> dict:
    """images/s of decode alone, the ONNX Runtime trunk alone and the pass, on ``images`` JPEGs of ``data_dir``."""
    from .data import make_loaders

    loaders = make_loaders(data_dir, augment=False, verify_images=False)
    dataset = loaders.train.dataset
    views = SampleViews(dataset.samples[:images], dataset.transform, draft=getattr(dataset, "draft", None))
    n, workers = len(views), decode_workers()
    model, _ = _model("mobilenet_v2")
    parts = parts_of(model)
    runtime, ort = frozen_parts(parts, "onnxruntime", "cpu", views[0][0][None])

    def timed(work) -> float:
        started = time.perf_counter()
        work()
        return n / (time.perf_counter() - started)

    decoded = [b for b, _ in DataLoader(views, batch_size=batch_size, num_workers=workers)]   # also warms the disk
    decode = timed(lambda: [None for _ in DataLoader(views, batch_size=batch_size, num_workers=workers)])
    forward = timed(lambda: [_run(ort, b) for b in decoded])
    passed = timed(lambda: run_passes(ort, [(views, {"features": _Discard()})], batch_size=batch_size,
                                      num_workers=workers))
    forward = (forward + timed(lambda: [_run(ort, b) for b in decoded])) / 2    # before and after the pass
    return {"images": n, "runtime": runtime, "workers": workers, "threads": ort_threads(),
            "decode_images_per_s": round(decode, 1), "runtime_images_per_s": round(forward, 1),
            "pass_images_per_s": round(passed, 1), "ratio": round(passed / forward, 3)}


def run_runtime_rows(own_dir=None, quick: bool = False) -> dict:
    """Both tables; the end-to-end one on the generated 3-class folder (made once)."""
    if onnxruntime_version() is None:
        return {"skipped": "onnxruntime is not installed"}
    section = {"forward": forward_rows(batches=1 if quick else 2, repeats=1 if quick else 3)}
    from .bench_own_data import own_folder

    data_dir = own_folder(own_dir, quick)
    print(f"--- backbone runtime: end to end on {data_dir} ...", flush=True)
    section["end_to_end"] = end_to_end(data_dir, images=64 if quick else 320)
    e = section["end_to_end"]
    print(f"    decode {e['decode_images_per_s']} img/s, runtime alone {e['runtime_images_per_s']} img/s, pass "
          f"{e['pass_images_per_s']} img/s ({100 * e['ratio']:.0f} %)", flush=True)
    return section


def runtime_markdown(section: dict) -> list[str]:
    if not section:
        return []
    if "skipped" in section:
        return ["", f"Backbone runtime: skipped ({section['skipped']})."]
    lines = ["", "Backbone runtime: the frozen trunk up to the pooled features, batches of 32 at 224 px, fp32, "
                 f"median of interleaved runs; both runtimes with {torch.get_num_threads()} thread(s).", "",
             "| trunk | weights | PyTorch eager img/s | ONNX Runtime img/s | speed-up | max abs diff "
             "| relative to the largest feature |",
             "|---|---|---|---|---|---|---|"]
    for r in section["forward"]:
        lines.append(f"| {r['arch']} | {r['weights']} | {r['eager_images_per_s']:.1f} | "
                     f"{r['runtime_images_per_s']:.1f} | **{r['speedup']:.2f}x** | {r['max_abs_diff']:.1e} "
                     f"| {r['max_rel_diff']:.1e} |")
    e = section["end_to_end"]
    lines += ["", f"End to end on {e['images']} generated JPEGs (mobilenet_v2, {e['workers']} decoding worker(s) + "
                  f"{e['threads']} {e['runtime']} thread(s)): decode + resize alone {e['decode_images_per_s']:.1f} "
                  f"img/s, the runtime alone {e['runtime_images_per_s']:.1f} img/s, the pass "
                  f"{e['pass_images_per_s']:.1f} img/s = **{100 * e['ratio']:.0f} %** of the runtime alone."]
    return lines

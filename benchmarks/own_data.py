"""The "own data" rows of ``python -m tlcourse bench``: what a learner's first runs on new images cost.

On a generated 3-class ImageFolder (``benchmarks/generated_folders.py``: 1,200 JPEGs of 512x384, 900 train
+ 300 val, class names that are not ants/bees) with MobileNetV2 and the local ImageNet backbone:

* ``train()`` with the defaults for ``freeze="head"`` (5 epochs, as the issue's table) and
  ``freeze="last_stage"`` (3 epochs), and with the default epochs when they differ: end-to-end
  seconds (loaders and image check, model, caching, probe, epochs, checkpoints) with an empty
  feature cache ("cold") and again with the cache it filled ("warm"), best accuracy and the probe;
* the caching pass's throughput (decode in loader workers + JPEG draft mode + forward + writing
  the cache file) against a forward-only pass over the same images already decoded into tensors.

Both passes run in this process one after the other, so their ratio is meaningful even on a
loaded machine; the absolute seconds are not.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.generated_folders import generate
from tlcourse.config import TrainConfig
from tlcourse.data import make_loaders
from tlcourse.engine import train
from tlcourse.fast import Sink, folder_samples, parts_of, pass_workers, run_pass, sample_views
from tlcourse.feature_cache import FeatureCache
from tlcourse.freeze import apply_freeze
from tlcourse.models import build_model, find_local_weights

ARCH = "mobilenet_v2"


def throughput(data_dir: Path, weights: str, images: int, batch_size: int, cache_dir: Path) -> dict:
    """images/s of the caching pass against forward-only on pre-decoded tensors (same images).

    Forward-only runs before and after the pass and the two are averaged, so a change of machine
    load during the measurement affects both sides alike.
    """
    loaders = make_loaders(data_dir, augment=False, verify_images=False)
    model = apply_freeze(build_model(ARCH, len(loaders.class_names), weights=weights), "head")
    parts = parts_of(model)
    dataset = loaders.train.dataset
    samples = folder_samples(dataset)[:images]
    views = sample_views(samples, dataset)
    workers = pass_workers(TrainConfig(batch_size=batch_size), views)
    batches = [torch.stack([views[i][0] for i in range(s, min(s + batch_size, len(views)))])
               for s in range(0, len(views), batch_size)]          # decoded beforehand, not timed
    prefix = torch.nn.Sequential(parts[0][1], parts[1][1]).eval()

    @torch.no_grad()
    def forward_only() -> float:
        started = time.perf_counter()
        for batch in batches:
            prefix(batch)
        return time.perf_counter() - started

    with torch.no_grad():
        prefix(batches[0][:2])                                     # warm-up
    before = forward_only()
    cache = FeatureCache(cache_dir)                                # the pass as train() runs it
    writer = cache.writer({"benchmark": "throughput", "images": len(samples)}, "throughput benchmark")
    sink = Sink(len(samples), torch.float32, writer, cache, True)
    started = time.perf_counter()
    targets = run_pass(parts, views, {"features": sink}, batch_size=batch_size, num_workers=workers)
    sink.finish(targets, None)
    pass_seconds = time.perf_counter() - started
    forward_seconds = (before + forward_only()) / 2
    n = len(samples)
    return {"images": n, "workers": workers, "forward_images_per_s": round(n / forward_seconds, 1),
            "pass_images_per_s": round(n / pass_seconds, 1), "ratio": round(forward_seconds / pass_seconds, 3)}


def timed_run(cfg: TrainConfig) -> dict:
    started = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "run_seconds": round(result.seconds, 1),
            "cache_seconds": round(result.cache_seconds, 1), "best_val_acc": result.best["acc"],
            "final_val_acc": result.history[-1]["val_acc"], "probe": result.probe.val_acc if result.probe else None,
            "path": result.route, "route": result.route_description, "epochs": cfg.epochs}


def run_own_data(args, quick: bool) -> dict:
    """Generate (once) the dataset and measure the rows; temporary caches and run folders."""
    weights = find_local_weights(ARCH)
    if weights is None:
        return {"skipped": f"no {ARCH} backbone in TLCOURSE_WEIGHTS_DIR"}
    counts = {"train": 20, "val": 10} if quick else None
    root = Path(args.own_dir) if args.own_dir else ROOT_DATA / ("own_leaves_quick" if quick else "own_leaves")
    print(f"--- own data: {root} ...", flush=True)
    data_dir = generate("leaves", root, per_class=counts)
    work = Path(tempfile.mkdtemp(prefix="tlcourse-bench-own-"))
    section = {"data_dir": str(data_dir), "rows": []}
    try:
        for freeze, epochs in (("head", 2 if quick else 5), ("last_stage", 2 if quick else 3)):
            default_epochs = TrainConfig(freeze=freeze).resolved().epochs     # the preset's recipe
            runs = sorted({epochs, default_epochs}) if not quick else [epochs]
            for n in runs:
                cache_dir = work / f"cache-{freeze}-{n}"
                cfg = TrainConfig(data_dir=str(data_dir), arch=ARCH, weights=str(weights), freeze=freeze, epochs=n,
                                  cache_dir=str(cache_dir), output_dir=str(work / "runs"), progress="none",
                                  seed=args.seed)
                print(f"    {freeze}, {n} epochs: cold ...", flush=True)
                cold = timed_run(cfg)
                print(f"    {freeze}, {n} epochs: warm ...", flush=True)
                warm = timed_run(cfg)
                section["rows"].append({"freeze": freeze, "epochs": n, "cold": cold, "warm": warm,
                                        "default_epochs": n == default_epochs})
                print(f"    {freeze} {n} epochs: cold {cold['seconds']}s, warm {warm['seconds']}s, best "
                      f"{cold['best_val_acc']:.4f} (probe {cold['probe']:.4f})", flush=True)
        section["throughput"] = throughput(data_dir, str(weights), 64 if quick else 300, 32, work / "throughput")
        t = section["throughput"]
        print(f"    caching pass {t['pass_images_per_s']} img/s vs forward-only {t['forward_images_per_s']} img/s "
              f"({100 * t['ratio']:.0f} %)", flush=True)
        loaders = make_loaders(data_dir, verify_images=False)
        section["images"] = {"train": len(loaders.train.dataset), "val": len(loaders.val.dataset),
                             "classes": loaders.class_names}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return section


ROOT_DATA = Path(__file__).resolve().parent.parent / "data"


def own_markdown(section: dict) -> list[str]:
    if not section:
        return []
    if "skipped" in section:
        return ["", f"Own data: skipped ({section['skipped']})."]
    im = section["images"]
    lines = ["", f"Own data: `{Path(section['data_dir']).name}`, generated by `benchmarks/generated_folders.py` "
                 f"({im['train']} train + {im['val']} val JPEGs, 512x384, {len(im['classes'])} classes: "
                 f"{', '.join(im['classes'])}); {ARCH} with the local ImageNet backbone, `train()` defaults.", "",
             "| trained | epochs | cold s (empty cache) | warm s (cache filled) | caching s (cold) | best val acc "
             "| final val acc | linear probe | path |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in section["rows"]:
        c, w = row["cold"], row["warm"]
        mark = " (default)" if row["default_epochs"] else ""
        lines.append(f"| {row['freeze']} | {row['epochs']}{mark} | {c['seconds']:.1f} | {w['seconds']:.1f} "
                     f"| {c['cache_seconds']:.1f} | {c['best_val_acc']:.3f} | {c['final_val_acc']:.3f} "
                     f"| {c['probe']:.3f} | {c['path']} |")
    t = section["throughput"]
    lines += ["", f"Caching pass on {t['images']} of these images ({t['workers']} loader worker(s), JPEG draft mode, "
                  f"cache file written): {t['pass_images_per_s']:.1f} images/s; forward-only on the same images "
                  f"decoded beforehand: {t['forward_images_per_s']:.1f} images/s; the pass runs at "
                  f"**{100 * t['ratio']:.0f} %** of forward-only speed."]
    return lines

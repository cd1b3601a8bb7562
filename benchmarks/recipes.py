"""How the training defaults were chosen: accuracy of training recipes against the linear probe.

    python benchmarks/recipes.py --data-dir data/hymenoptera_data --freeze head
    python benchmarks/recipes.py --data-dir data/own_leaves --freeze last_stage --seeds 0 1 2

For one dataset and one freeze preset, every recipe of the grid below is trained with
``tlcourse.engine.train`` (MobileNetV2 with the local ImageNet backbone, or ``--weights``) for
each seed, on the cached fast path; the features are computed once (``--views`` views per
training image, both cut points in the same pass) into the feature cache and read back by every
run. It prints, per recipe, the mean best and final validation accuracy over the seeds next to
the linear probe's, and writes the table to ``benchmarks/results/recipes-<time>.md``.
Accuracy does not depend on the machine; the numbers in the README come from this script.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tlcourse import checkpoints  # noqa: E402
from tlcourse.config import TrainConfig  # noqa: E402
from tlcourse.data import make_loaders  # noqa: E402
from tlcourse.engine import train  # noqa: E402
from tlcourse.fast import CacheJob, folder_samples, frozen_features, run_jobs, sample_views  # noqa: E402
from tlcourse.feature_cache import FeatureCache  # noqa: E402
from tlcourse.freeze import apply_freeze  # noqa: E402
from tlcourse.models import build_model, find_local_weights  # noqa: E402
from tlcourse.probe import linear_probe  # noqa: E402

GRIDS = {
    "head": {"lr": [1e-3, 3e-3, 1e-2], "epochs": [5, 10, 20], "scheduler": ["none", "cosine"],
             "label_smoothing": [0.0, 0.1], "fast_views": [1, 2, 4, 6], "weight_decay": [0.0]},
    "last_stage": {"lr": [1e-4, 3e-4, 1e-3], "epochs": [3, 5, 10], "scheduler": ["none", "cosine"],
                   "label_smoothing": [0.0, 0.1], "fast_views": [1, 2, 4], "weight_decay": [0.0]},
}


def fill_cache(loaders, cfg: TrainConfig, views: int) -> float:
    """Compute every view's layer3 input and pooled features in one pass each (or find them cached)."""
    model = apply_freeze(build_model(cfg.arch, len(loaders.class_names), weights=cfg.weights), "last_stage")
    train_set, val_set = loaders.train.dataset, loaders.val.dataset
    train_samples, val_samples = folder_samples(train_set), folder_samples(val_set)
    both = {"layer3": torch.float16 if cfg.fast_dtype == "float16" else torch.float32, "features": torch.float32}
    jobs = [CacheJob("train", 0, sample_views(train_samples, val_set), both),
            CacheJob("val", 0, sample_views(val_samples, val_set), both)]
    jobs += [CacheJob("train", v, sample_views(train_samples, train_set, seed=cfg.seed, view=v), both)
             for v in range(1, views)]
    started = time.perf_counter()
    run_jobs(jobs, model, cfg, torch.device("cpu"), FeatureCache(cfg.cache_dir), loaders.data_dir, stream=False)
    return time.perf_counter() - started


def probe_for(loaders, cfg: TrainConfig):
    """The linear probe of one seed (its folds are seeded), from the cached un-augmented features."""
    model = apply_freeze(build_model(cfg.arch, len(loaders.class_names), weights=cfg.weights), "head")
    data = frozen_features(model, loaders, cfg, "cpu")
    return linear_probe(*data[:4], num_classes=len(loaders.class_names), seed=cfg.seed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--freeze", choices=sorted(GRIDS), default="head")
    p.add_argument("--weights", default=None, help="default: mobilenet_v2 backbone in TLCOURSE_WEIGHTS_DIR")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--views", type=int, default=6, help="views cached for the grid (the largest fast_views)")
    p.add_argument("--grid", default=None, help='JSON overriding grid entries, e.g. \'{"epochs": [10]}\'')
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoints.save_checkpoint_as = lambda checkpoint, paths: None   # runs are measured, not kept
    weights = args.weights or str(find_local_weights("mobilenet_v2"))
    grid = dict(GRIDS[args.freeze]) | (json.loads(args.grid) if args.grid else {})
    grid["fast_views"] = [v for v in grid["fast_views"] if v <= args.views]
    rows = []
    for seed in args.seeds:
        base = TrainConfig(data_dir=args.data_dir, arch="mobilenet_v2", weights=weights, freeze=args.freeze,
                           device="cpu", seed=seed, progress="none", output_dir="/tmp/tlcourse-recipes").validate()
        loaders = {aug: make_loaders(args.data_dir, seed=seed, augment=aug, verify_images=(aug is True))
                   for aug in (True, False)}
        print(f"seed {seed}: caching {args.views} views ... {fill_cache(loaders[True], base, args.views):.0f} s",
              flush=True)
        probe = probe_for(loaders[False], base)
        print(f"  {probe.line()}", flush=True)
        names = list(grid)
        for values in itertools.product(*(grid[n] for n in names)):
            recipe = dict(zip(names, values))
            augment = recipe["fast_views"] > 1
            cfg = base.replace(augment=augment, probe=False, **recipe)
            result = train(cfg, loaders=loaders[augment])
            rows.append({**recipe, "seed": seed, "best": result.best["acc"], "final": result.history[-1]["val_acc"],
                         "probe": probe.val_acc, "seconds": result.seconds,
                         "curve": [r["val_acc"] for r in result.history]})
            print(f"  {recipe}: best {rows[-1]['best']:.4f} final {rows[-1]['final']:.4f} "
                  f"probe {rows[-1]['probe']:.4f}", flush=True)
    table = summarize(rows, grid, args)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"recipes-{Path(args.data_dir).name}-{args.freeze}-{datetime.now():%Y%m%d-%H%M%S}.md"
    path.write_text(table + "\n")
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {path}")
    return 0


def summarize(rows: list[dict], grid: dict, args) -> str:
    names = list(grid)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[n] for n in names), []).append(row)
    lines = [f"{args.data_dir}, freeze={args.freeze}, seeds {args.seeds}: mean over seeds", "",
             "| " + " | ".join(names) + " | best val acc | final val acc | probe | final - probe |",
             "|" + "---|" * (len(names) + 4)]
    ranked = sorted(groups.items(), key=lambda kv: -sum(r["final"] for r in kv[1]) / len(kv[1]))
    for key, group in ranked:
        best = sum(r["best"] for r in group) / len(group)
        final = sum(r["final"] for r in group) / len(group)
        probe = sum(r["probe"] for r in group) / len(group)
        lines.append("| " + " | ".join(str(v) for v in key) + f" | {best:.4f} | {final:.4f} | {probe:.4f} "
                     f"| {final - probe:+.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

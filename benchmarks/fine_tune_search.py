"""How ``fine_tune``'s defaults were chosen: it against the ``head`` and ``last_stage`` defaults.

    python benchmarks/fine_tune_search.py orientation data/hymenoptera_data data/orientation
    python benchmarks/fine_tune_search.py run data/hymenoptera_data data/own_shapes data/orientation \\
        --settings defaults fe10 --seeds 0 1 2
    python benchmarks/fine_tune_search.py table benchmarks/results/fine_tune-*.jsonl

``run`` trains, per dataset and seed, the ``head`` and ``last_stage`` presets with their defaults
and ``recipe="fine_tune"`` with each named setting of :data:`SETTINGS` (overrides of its defaults),
one after another in this process, with ``tlcourse.engine.train`` (MobileNetV2 with the local
ImageNet backbone, 224 px, CPU). Before the timed runs, one epoch of ``head`` and of ``last_stage``
fills the feature cache (both cached routes, every view), so every timed run starts warm and the
seconds compare; those warm-up seconds are the cold cost. Each run appends one JSON line (best and
final val acc, seconds, the final model's per-image correctness) to the results file, so an
interrupted search keeps what it measured. ``table`` turns the lines into the markdown table of
docs/defaults.md: mean over seeds, and an exact McNemar test (``tlcourse.compare.paired_test``,
final weights, all seeds' images pooled) of each fine_tune setting against the better preset.

``orientation`` builds a 3-class task from real photos: each ants/bees photo upright, turned
sideways (90 degrees, either way, chosen per photo) and upside down; a photo's three versions stay
in its split (the original train/val split), so no photo is seen in both.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: fine_tune settings tried (overrides of RECIPE_DEFAULTS / TrainConfig); "defaults" is what ships.
SETTINGS = {
    "defaults": {},
    "old": {"epochs": 5, "lr": 1e-3, "freeze_epochs": 1, "lr_mult": 100.0, "phase_schedule": "one_cycle",
            "label_smoothing": 0.0},
    # phase 1 like the head preset (lr 3e-3, smoothing 0.1, 10 cheap epochs), phase 2 four epochs
    "h10_lr3_m10_ls": {"freeze_epochs": 10, "epochs": 14, "lr": 3e-3, "lr_mult": 10.0, "label_smoothing": 0.1},
    "h10_lr3_m10_ls_cos": {"freeze_epochs": 10, "epochs": 14, "lr": 3e-3, "lr_mult": 10.0, "label_smoothing": 0.1,
                           "phase_schedule": "cosine"},
    "h10_lr3_m3_ls": {"freeze_epochs": 10, "epochs": 14, "lr": 3e-3, "lr_mult": 3.0, "label_smoothing": 0.1},
    "h10_lr1_m100": {"freeze_epochs": 10, "epochs": 14},
    "h10_lr3_m10_ls_p3": {"freeze_epochs": 10, "epochs": 13, "lr": 3e-3, "lr_mult": 10.0, "label_smoothing": 0.1},
    "h10_lr3_m10_ls_p5": {"freeze_epochs": 10, "epochs": 15, "lr": 3e-3, "lr_mult": 10.0, "label_smoothing": 0.1},
    # phase 2 as long as the last_stage preset (5 epochs): 10 head epochs cost less than the head preset's 15
    "h10_lr3_m3_ls_p5": {"freeze_epochs": 10, "epochs": 15, "lr": 3e-3, "lr_mult": 3.0, "label_smoothing": 0.1},
    "h10_lr3_m3_ls_p5_cos": {"freeze_epochs": 10, "epochs": 15, "lr": 3e-3, "lr_mult": 3.0, "label_smoothing": 0.1,
                             "phase_schedule": "cosine"},
    "h10_lr1_m3_ls_p5": {"freeze_epochs": 10, "epochs": 15, "lr": 1e-3, "lr_mult": 3.0, "label_smoothing": 0.1},
    # phase 2 = the last_stage preset (3e-4 everywhere, cosine from the peak), after 10 head epochs
    "h10_lr6e-4_m1_ls_p5_cos": {"freeze_epochs": 10, "epochs": 15, "lr": 6e-4, "lr_mult": 1.0, "label_smoothing": 0.1,
                                "phase_schedule": "cosine"},
}
PRESETS = ("head", "last_stage")
#: The name of the rows measured with the defaults before this search (SETTINGS["old"]).
OLD = "old defaults"
#: Photos per split of the orientation task (x 3 images each).
ORIENTATION_PHOTOS = {"train": 120, "val": 80}


def make_orientation(source: Path, root: Path, photos: dict | None = None, side: int = 256, seed: int = 0) -> Path:
    """``root/{train,val}/{upright,rotated_90,upside_down}``: the photos of ``source`` three ways.

    ``photos``: at most this many photos per split (a seeded sample; default :data:`ORIENTATION_PHOTOS`),
    which keeps the benchmark's CPU time near the shapes set's.
    """
    from PIL import Image

    rng = random.Random(seed)
    if root.exists():
        shutil.rmtree(root)
    for split in ("train", "val"):
        found = sorted(p for p in (source / split).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        chosen = sorted(rng.sample(found, min(len(found), (photos or ORIENTATION_PHOTOS)[split])))
        for photo in chosen:
            with Image.open(photo) as img:
                img = img.convert("RGB")
                img.thumbnail((side * 2, side * 2))   # smaller files, same look: the loader resizes to 256 anyway
            name = f"{photo.parent.name}_{photo.stem}.jpg"
            turned = {"upright": img, "rotated_90": img.rotate(rng.choice((90, 270)), expand=True),
                      "upside_down": img.rotate(180)}
            for cls, image in turned.items():
                (root / split / cls).mkdir(parents=True, exist_ok=True)
                image.save(root / split / cls / name, quality=92)
    return root


def describe(cfg) -> str:
    """The settings that define a run's recipe, in one short line."""
    cfg = cfg.resolved()
    if cfg.recipe == "fine_tune":
        return (f"{cfg.freeze_epochs}+{cfg.epochs - cfg.freeze_epochs} epochs, lr {cfg.lr:g}, lr_mult {cfg.lr_mult:g}, "
                f"{cfg.phase_schedule}, smoothing {cfg.label_smoothing:g}")
    return f"{cfg.epochs} epochs, lr {cfg.lr:g}, {cfg.scheduler}, smoothing {cfg.label_smoothing:g}"


def _scored(result):
    """``result``, or for fine_tune (no ``fast`` of its own) a view scored on its last phase's cached inputs.

    The same inputs its history's val_acc came from, so no backbone pass over the validation images.
    """
    if getattr(result, "fast", None) is not None or result.config.recipe != "fine_tune":
        return result
    from types import SimpleNamespace

    from tlcourse.data import loaders_for
    from tlcourse.fast import prepare

    cfg = result.config.resolved()
    cfg = cfg.replace(freeze=cfg.unfreeze, recipe="single")
    fast = prepare(result.model, loaders_for(cfg), cfg, "cpu", log=lambda line: None)
    return SimpleNamespace(model=result.model, fast=fast, config=cfg, best_acc_path=None)


def _run(data_dir: str, seed: int, name: str, overrides: dict, weights: str, out: Path) -> dict:
    from tlcourse.compare import val_correct
    from tlcourse.config import TrainConfig
    from tlcourse.engine import train

    cfg = TrainConfig(data_dir=data_dir, arch="mobilenet_v2", weights=weights, device="cpu", seed=seed,
                      progress="none", output_dir=str(out), **overrides).validate()
    started = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - started
    correct, _ = val_correct(_scored(result), "final")
    if abs(float(correct.float().mean()) - result.history[-1]["val_acc"]) > 1e-6:
        raise RuntimeError(f"{name}: per-image score {float(correct.float().mean()):.4f} differs from the history's")
    row = {"data": Path(data_dir).name, "seed": seed, "name": name, "overrides": overrides, "settings": describe(cfg),
           "best": result.best["acc"], "best_epoch": result.best["acc_epoch"], "final": result.history[-1]["val_acc"],
           "val_images": len(correct), "seconds": seconds, "cache_seconds": result.cache_seconds,
           "curve": [round(r["val_acc"], 4) for r in result.history], "correct": [bool(c) for c in correct.tolist()]}
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return row


def run(args) -> int:
    import torch

    from tlcourse.models import find_local_weights

    torch.set_num_threads(args.threads)
    weights = args.weights or str(find_local_weights("mobilenet_v2"))
    unknown = [s for s in args.settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"unknown setting(s) {unknown}; choose from {sorted(SETTINGS)}")
    path = Path(args.out) / f"fine_tune-{datetime.now():%Y%m%d-%H%M%S}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="tlcourse-fine-tune-"))
    plan = [(p, {"freeze": p}) for p in PRESETS if not args.no_presets]
    plan += [(s, {"recipe": "fine_tune", **SETTINGS[s]}) for s in args.settings]
    for data_dir in args.data_dirs:
        for seed in args.seeds:
            for preset in PRESETS:   # warm the feature cache: both routes, every view this seed uses
                warm = _run(data_dir, seed, f"warm-up {preset}", {"freeze": preset, "epochs": 1}, weights, out)
                print(f"{warm['data']} seed {seed} {warm['name']}: cache {warm['cache_seconds']:.1f}s "
                      f"(run {warm['seconds']:.1f}s)", flush=True)
            for name, overrides in plan:
                row = _run(data_dir, seed, name, overrides, weights, out)
                with path.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{row['data']} seed {seed} {name}: best {row['best']:.4f} (epoch {row['best_epoch']}) "
                      f"final {row['final']:.4f} {row['seconds']:.1f}s curve {row['curve']}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    print(f"wrote {path}")
    return 0


def describe_overrides(row: dict) -> str:
    """:func:`describe` for a row written without its settings: its overrides on today's defaults."""
    from tlcourse.config import TrainConfig

    return describe(TrainConfig(**row["overrides"]))


def table(rows: list[dict]) -> str:
    """Mean over seeds per (data, recipe); fine_tune settings tested against the better preset (final)."""
    from tlcourse.compare import paired_test

    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if not row["name"].startswith("warm-up"):
            groups.setdefault((row["data"], row["name"]), []).append(row)
    lines = ["| data | recipe | settings | seeds | best val acc | final val acc | val images | seconds (warm) | "
             "final vs better preset (McNemar, pooled seeds) | final vs old defaults |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for data in dict.fromkeys(d for d, _ in groups):
        mean = {name: {k: sum(r[k] for r in g) / len(g) for k in ("best", "final", "seconds")}
                for (d, name), g in groups.items() if d == data}
        presets = [p for p in PRESETS if p in mean]
        better = max(presets, key=lambda p: mean[p]["final"]) if presets else None
        for name, m in mean.items():
            g = sorted(groups[(data, name)], key=lambda r: r["seed"])
            tests = []
            for other in (better, OLD):
                ref = {r["seed"]: r for r in groups.get((data, other), [])}
                pairs = [(r, ref[r["seed"]]) for r in g if r["seed"] in ref]
                if name in PRESETS or name == other or not pairs:
                    tests.append("")
                    continue
                t = paired_test([c for r, _ in pairs for c in r["correct"]],
                                [c for _, b in pairs for c in b["correct"]], (name, other))
                tests.append(f"{t.a_only} vs {t.b_only} images, p = {t.p_value:.2g}")
            test = " | ".join(tests)
            settings = g[0].get("settings") or describe_overrides(g[0])
            lines.append(f"| {data} | {name} | {settings} | {','.join(str(r['seed']) for r in g)} | {m['best']:.4f} | "
                         f"{m['final']:.4f} | {g[0]['val_images']} | {m['seconds']:.1f} | {test} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    o = sub.add_parser("orientation", help="build the upright/rotated_90/upside_down task from a photo folder")
    o.add_argument("source")
    o.add_argument("root")
    r = sub.add_parser("run", help="train the presets and fine_tune settings, append results")
    r.add_argument("data_dirs", nargs="+")
    r.add_argument("--settings", nargs="+", default=["defaults"], help=f"from {', '.join(SETTINGS)}")
    r.add_argument("--seeds", type=int, nargs="+", default=[0])
    r.add_argument("--no-presets", action="store_true", help="only the fine_tune settings")
    r.add_argument("--weights", default=None, help="default: mobilenet_v2 backbone in TLCOURSE_WEIGHTS_DIR")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    t = sub.add_parser("table", help="the markdown table of one or more results files")
    t.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    if args.command == "orientation":
        print(make_orientation(Path(args.source), Path(args.root)))
        return 0
    if args.command == "run":
        return run(args)
    rows = [json.loads(line) for f in args.files for line in Path(f).read_text().splitlines() if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

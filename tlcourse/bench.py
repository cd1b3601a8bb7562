"""CPU benchmark: the plain transfer-learning loop against tlcourse's cached route, side by side.

    python -m tlcourse bench                 # the full run (README tables)
    python -m tlcourse bench --quick         # a smoke run: MobileNetV2 head-only, 2 epochs, 64 images
    python -m tlcourse bench --only-runtime  # eager against ONNX Runtime (tlcourse.bench_runtime) only
    python benchmarks/transfer.py [same options]

Both sides run in this one process on the same data, seed, model initialisation, optimizer and
epochs, without augmentation (the setting in which caching is exact):

(a) plain: the loop of the PyTorch tutorial and the course's seed script, written out below:
    every epoch decodes every JPEG through PIL, runs torchvision transforms in a DataLoader and
    runs the whole network, frozen backbone included (frozen BatchNorm kept in eval mode, so
    both sides compute the same function);
(b) fast: ``tlcourse.fast.prepare`` (cache what is frozen, once) + ``tlcourse.loops.fit``.

Wall times are end to end (model build, data, caching, all epochs, validation every epoch);
neither side writes checkpoints. Peak RSS per strategy is VmHWM from /proc/self/status after
resetting it through /proc/self/clear_refs (Linux); elsewhere ru_maxrss, which never resets.
Then the backbone runtime rows (``tlcourse.bench_runtime``) and the own-data rows
(``tlcourse.bench_own_data``). Results go to benchmarks/results/<timestamp>.json and .md
(git-ignored) and are printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import TrainConfig
from .data import ImageFolderRGB, _subset, eval_transforms, fetch, make_loaders
from .fast import prepare
from .freeze import apply_freeze, preset_blocks
from .loops import fit
from .models import build_model, find_local_weights
from .optim import make_optimizer

LR = {"head": 1e-3, "last_stage": 1e-4}     # the tutorial's / seed script's learning rates


# --------------------------------------------------------------------------- memory

def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM (peak RSS) to the current RSS; Linux only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else float("nan")


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return kb / 1024


# --------------------------------------------------------------------------- (a) the plain loop

def build(arch: str, num_classes: int, seed: int) -> nn.Module:
    """Same initial weights on both sides: seeded, ImageNet MobileNetV2 or random ResNet-18."""
    torch.manual_seed(seed)
    weights = find_local_weights(arch) if arch == "mobilenet_v2" else None
    return build_model(arch, num_classes, weights=weights)


def plain_loop(arch: str, strategy: str, data_dir: Path, *, epochs: int, batch_size: int, image_size: int,
               seed: int, subset: int | None) -> dict:
    """The tutorial's loop: PIL decode + transforms every epoch, whole network every batch."""
    started = time.perf_counter()
    transform = eval_transforms(image_size)        # Resize(256), CenterCrop(224), ToTensor, Normalize
    train_set = ImageFolderRGB(data_dir / "train", transform)
    val_set = ImageFolderRGB(data_dir / "val", transform)
    num_classes = len(train_set.classes)
    train_set, val_set = _subset(train_set, subset, seed), _subset(val_set, subset, seed)  # as make_loaders does
    train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(seed))
    val_loader = DataLoader(val_set, batch_size=batch_size, shuffle=False)

    model = build(arch, num_classes, seed)
    for p in model.parameters():                    # freeze everything, then unfreeze the trained part
        p.requires_grad = False
    trained = [model.get_submodule(name) for name in preset_blocks(model, strategy)]
    for module in trained:
        for p in module.parameters():
            p.requires_grad = True
    frozen_bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad]
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=LR[strategy])
    criterion = nn.CrossEntropyLoss()

    curve = []
    for epoch in range(1, epochs + 1):
        model.train()
        for bn in frozen_bn:                        # frozen BatchNorm keeps its ImageNet statistics
            bn.eval()
        total_loss, seen = 0.0, 0
        for images, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * labels.size(0)
            seen += labels.size(0)
        model.eval()
        correct, total = 0, 0
        with torch.no_grad():
            for images, labels in val_loader:
                correct += (model(images).argmax(1) == labels).sum().item()
                total += labels.size(0)
        curve.append({"epoch": epoch, "seconds": time.perf_counter() - started,
                      "train_loss": total_loss / seen, "val_acc": correct / total})
    return {"curve": curve, "train_images": len(train_set), "val_images": len(val_set), "model": model}


# --------------------------------------------------------------------------- (b) tlcourse's cached route

def cached_route(arch: str, strategy: str, data_dir: Path, *, epochs: int, batch_size: int, image_size: int,
              seed: int, subset: int | None) -> dict:
    started = time.perf_counter()
    cfg = TrainConfig(data_dir=str(data_dir), arch=arch, freeze=strategy, augment=False, epochs=epochs,
                      batch_size=batch_size, lr=LR[strategy], image_size=image_size, seed=seed, device="cpu",
                      progress="none", cache=False).validate()   # cold: no feature cache from earlier runs
    loaders = make_loaders(data_dir, image_size=image_size, batch_size=batch_size, seed=seed, augment=False,
                           subset=subset)
    model = apply_freeze(build(arch, len(loaders.class_names), seed), strategy)
    lines = []
    setup = prepare(model, loaders, cfg, "cpu", log=lines.append)
    optimizer = make_optimizer(model, "adam", LR[strategy])
    prep_seconds = time.perf_counter() - started
    history = fit(model, setup.train_loader, setup.val_loader, optimizer, cfg, forward_model=setup.forward_model,
                  generator=loaders.train.generator)
    curve, elapsed = [], prep_seconds
    for row in history:
        elapsed += row["seconds"]
        curve.append({"epoch": row["epoch"], "seconds": elapsed, "train_loss": row["train_loss"],
                      "val_acc": row["val_acc"]})
    return {"curve": curve, "train_images": len(loaders.train.dataset), "val_images": len(loaders.val.dataset),
            "model": model, "route_description": setup.description, "route": setup.name,
            "cache_mb": setup.cache_bytes / 1e6, "cache_seconds": setup.seconds, "loaders": loaders}


# --------------------------------------------------------------------------- running and reporting

def measured(fn, *args, **kwargs) -> dict:
    gc.collect()
    before = rss_mb()
    reset = reset_peak_rss()
    result = fn(*args, **kwargs)
    result["rss_before_mb"] = before
    result["peak_rss_mb"] = peak_rss_mb()
    result["peak_rss_increase_mb"] = result["peak_rss_mb"] - before
    result["rss_method"] = "VmHWM after clear_refs" if reset else "ru_maxrss (process-wide, never reset)"
    return result


def summarize(result: dict, epochs: int) -> dict:
    curve = result["curve"][:epochs]
    seconds = curve[-1]["seconds"]
    images = epochs * (result["train_images"] + result["val_images"])
    return {"epochs": epochs, "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1),
            "best_val_acc": max(r["val_acc"] for r in curve), "final_val_acc": curve[-1]["val_acc"],
            "final_train_loss": curve[-1]["train_loss"], "peak_rss_mb": round(result["peak_rss_mb"], 1),
            "peak_rss_increase_mb": round(result["peak_rss_increase_mb"], 1)}


@torch.no_grad()
def inference_benchmark(model: nn.Module, class_names: list[str], folder: Path, image_size: int) -> dict:
    """images/s of Predictor.predict_folder (batched) against predict_image one at a time."""
    from .checkpoints import make_checkpoint, save_checkpoint
    from .data import IMAGENET_MEAN, IMAGENET_STD
    from .predict import Predictor, list_images

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_checkpoint(make_checkpoint(model, epoch=0, class_names=class_names, spec=model.tlcourse_spec,
                                        freeze="head", image_size=image_size, mean=IMAGENET_MEAN,
                                        std=IMAGENET_STD, metrics={}), path)
        predictor = Predictor(path, device="cpu")
    paths = list_images(folder)
    predictor.predict_image(paths[0])                   # warm-up, not timed
    t = time.perf_counter()
    batched = predictor.predict_folder(folder, batch_size=32)
    batched_s = time.perf_counter() - t
    t = time.perf_counter()
    single = [predictor.predict_image(p) for p in paths]
    single_s = time.perf_counter() - t
    assert [p.label for p in batched] == [p.label for p in single]
    return {"images": len(paths), "batched_images_per_s": round(len(paths) / batched_s, 1),
            "single_images_per_s": round(len(paths) / single_s, 1), "speedup": round(single_s / batched_s, 2)}


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cpu_count']} CPU cores, torch {m['torch']} with {m['threads']} thread(s), "
             f"load average at start {m['load_average']}; command: `{report['command']}`"]
    if report["rows"]:
        lines += ["", "| model | trained | epochs | plain loop s | cached route s | speed-up | plain img/s "
                  "| cached img/s | plain best / final val acc | cached best / final val acc | plain peak RSS +MB "
                  "| cached peak RSS +MB | route |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        a, b = row["plain"], row["fast"]
        lines.append(f"| {row['arch']} | {row['strategy']} | {row['epochs']} | {a['seconds']:.1f} | {b['seconds']:.1f} "
                     f"| **{row['speedup']:.1f}x** | {a['images_per_s']:.0f} | {b['images_per_s']:.0f} "
                     f"| {a['best_val_acc']:.3f} / {a['final_val_acc']:.3f} "
                     f"| {b['best_val_acc']:.3f} / {b['final_val_acc']:.3f} "
                     f"| {a['peak_rss_increase_mb']:.0f} | {b['peak_rss_increase_mb']:.0f} | {row['route']} |")
    if report["runs"]:
        lines.append("")
        lines.append("Routes: " + "; ".join(f"{r['arch']} {r['strategy']}: {r['route_description']}"
                                            for r in report["runs"]))
    inf = report.get("inference")
    if inf:
        lines += ["", f"Inference ({inf['arch']}, {inf['images']} val images): batched predict_folder "
                      f"{inf['batched_images_per_s']:.1f} img/s, "
                      f"one image at a time {inf['single_images_per_s']:.1f} img/s "
                      f"({inf['speedup']:.1f}x)"]
    if report["rows"]:
        lines += ["", f"Peak RSS: {report['rss_method']}; '+MB' is the peak during that strategy minus the RSS "
                      "before it (one process, so the numbers include allocator reuse)."]
    from .bench_own_data import own_markdown
    from .bench_runtime import runtime_markdown

    lines += runtime_markdown(report.get("runtime", {}))
    lines += own_markdown(report.get("own_data", {}))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="plain transfer-learning loop vs tlcourse's cached route (CPU)")
    add_arguments(p)
    return p.parse_args(argv)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="ImageFolder root with train/ and val/ (default: the course dataset)")
    p.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"], choices=["mobilenet_v2", "resnet18"])
    p.add_argument("--strategies", nargs="+", default=["head", "last_stage"], choices=["head", "last_stage"])
    p.add_argument("--epochs", nargs="+", type=int, default=[10, 25],
                   help="head-only epoch counts to report (one run of the largest; earlier rows are its prefixes)")
    p.add_argument("--last-stage-epochs", nargs="+", type=int, default=[10])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--subset", type=int, default=None, help="at most N images per split (smoke runs)")
    p.add_argument("--no-inference", action="store_true")
    p.add_argument("--out", default=str(Path("benchmarks") / "results"))
    p.add_argument("--quick", action="store_true", help="MobileNetV2 head-only, 2 epochs, 64 images per split; "
                   "own data: 90 generated images, 2 epochs")
    p.add_argument("--no-own-data", action="store_true", help="skip the own-data rows (tlcourse.bench_own_data)")
    p.add_argument("--own-freeze", nargs="+", default=["head", "last_stage"], choices=["head", "last_stage"],
                   help="presets of the own-data rows (each cold and warm, on each backbone runtime)")
    p.add_argument("--own-runtimes", nargs="+", default=["auto", "torch"], choices=["auto", "onnxruntime", "torch"],
                   help="backbone runtimes of the own-data rows")
    p.add_argument("--no-runtime", action="store_true", help="skip the backbone runtime rows")
    p.add_argument("--only-runtime", action="store_true", help="only the backbone runtime rows (eager vs ONNX Runtime)")
    p.add_argument("--own-dir", default=None, help="where the generated own-data ImageFolder goes "
                   "(default: data/own_leaves)")
    p.add_argument("--only-own-data", action="store_true", help="only the own-data rows")


def run(args: argparse.Namespace) -> dict:
    if args.quick:
        args.models, args.strategies, args.epochs, args.last_stage_epochs = ["mobilenet_v2"], ["head"], [2], [2]
        args.subset = args.subset or 64
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = Path(args.data_dir) if args.data_dir else (fetch(progress=False) if args.models else None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    report = {"command": "python -m tlcourse bench " + " ".join(getattr(args, "argv", None) or []),
              "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "torch": str(torch.__version__), "threads": torch.get_num_threads(),
                          "load_average": [round(x, 1) for x in os.getloadavg()], "python": platform.python_version()},
              "rows": [], "runs": [], "rss_method": None}
    last_fast = None
    if args.only_own_data or args.only_runtime:
        args.models = []
    if args.only_runtime:
        args.no_own_data = True
    for arch in args.models:
        for strategy in args.strategies:
            counts = sorted(args.epochs if strategy == "head" else args.last_stage_epochs)
            common = dict(epochs=counts[-1], batch_size=args.batch_size, image_size=args.image_size,
                          seed=args.seed, subset=args.subset)
            print(f"--- {arch} {strategy}: {counts[-1]} epochs, plain loop ...", flush=True)
            plain = measured(plain_loop, arch, strategy, data_dir, **common)
            print(f"--- {arch} {strategy}: {counts[-1]} epochs, cached route ...", flush=True)
            fast = measured(cached_route, arch, strategy, data_dir, **common)
            print(f"    route: {fast['route_description']}", flush=True)
            report["rss_method"] = fast["rss_method"]
            report["runs"].append({"arch": arch, "strategy": strategy, "route_description": fast["route_description"],
                                   "cache_mb": round(fast["cache_mb"], 1),
                                   "cache_seconds": round(fast["cache_seconds"], 2),
                                   "plain_curve": plain["curve"], "fast_curve": fast["curve"]})
            for n in counts:
                a, b = summarize(plain, n), summarize(fast, n)
                row = {"arch": arch, "strategy": strategy, "epochs": n, "plain": a, "fast": b,
                       "speedup": round(a["seconds"] / b["seconds"], 2), "route": fast["route"],
                       "cache_mb": round(fast["cache_mb"], 1)}
                report["rows"].append(row)
                print(f"    {n} epochs: plain {a['seconds']:.1f}s acc {a['final_val_acc']:.3f}, "
                      f"fast {b['seconds']:.1f}s "
                      f"acc {b['final_val_acc']:.3f}: {row['speedup']:.1f}x", flush=True)
            last_fast = (arch, fast["model"], fast["loaders"].class_names)
            del plain, fast
            _write(report, out, stamp)
    if last_fast and not args.no_inference:
        arch, model, class_names = last_fast
        measured_inference = inference_benchmark(model, class_names, data_dir / "val", args.image_size)
        report["inference"] = {"arch": arch, **measured_inference}
    if not args.no_runtime and not args.only_own_data:
        from .bench_runtime import run_runtime_rows

        report["runtime"] = run_runtime_rows(args.own_dir, args.quick)
        _write(report, out, stamp)
    if not args.no_own_data:
        from .bench_own_data import run_own_data

        report["own_data"] = run_own_data(args, args.quick)
    paths = _write(report, out, stamp)
    print(markdown(report))
    print(f"\nwrote {paths[0]} and {paths[1]}")
    return report


def _write(report: dict, out: Path, stamp: str) -> tuple[Path, Path]:
    json_path, md_path = out / f"{stamp}.json", out / f"{stamp}.md"
    json_path.write_text(json.dumps(report, indent=2))
    md_path.write_text(markdown(report) + "\n")
    return json_path, md_path


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    run(args)
    return 0

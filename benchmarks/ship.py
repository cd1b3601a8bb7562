"""ONNX Runtime fp32 and int8 against PyTorch eager on this CPU: img/s at batch 1 and 32, size, test accuracy.

    python benchmarks/ship.py                      # MobileNetV2 (local ImageNet backbone) and ResNet-18 (random)
    python benchmarks/ship.py --archs mobilenet_v2 --image-size 224 --repeats 20

For each architecture: the head is trained on ants/bees with a test/ split carved from val/
(``tlcourse.splits.make_test_split``, share 0.5, seed 0), the checkpoint is exported with
``tlcourse.export.export_checkpoint(int8=True)`` (static quantization calibrated on training
images), then the three engines run side by side in this one process, alternating, so that
whatever else the machine is doing slows them alike: median images/second over ``--repeats``
calls at batch 1 and at batch 32. Threads: torch and ONNX Runtime both get ``--threads``.
ResNet-18 has no pretrained weights offline: its accuracy is a random-feature model's and only
says that int8 changes little; its speed is real. Writes ``benchmarks/results/ship-<time>.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tlcourse.data import fetch  # noqa: E402
from tlcourse.engine import TrainConfig, train  # noqa: E402
from tlcourse.export import export_checkpoint, split_arrays  # noqa: E402
from tlcourse.models import find_local_weights  # noqa: E402
from tlcourse.onnx_predict import FILES, OnnxClassifier  # noqa: E402
from tlcourse.predict import Predictor  # noqa: E402
from tlcourse.splits import make_test_split  # noqa: E402


def images_per_second(runs: dict, batches: dict[int, np.ndarray], repeats: int) -> dict:
    """{(engine, batch): img/s}, the engines interleaved call by call (fair on a busy machine)."""
    times: dict = {(name, b): [] for name in runs for b in batches}
    for b, batch in batches.items():
        for run in runs.values():
            run(batch)  # warm-up: first-call allocations, oneDNN primitives
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run(batch)
                times[(name, b)].append(time.perf_counter() - start)
    return {key: len(batches[key[1]]) / float(np.median(t)) for key, t in times.items()}


def bench(arch: str, data: Path, work: Path, args) -> list[dict]:
    weights = find_local_weights(arch) if arch == "mobilenet_v2" else None
    cfg = TrainConfig(data_dir=str(data), arch=arch, weights=str(weights) if weights else None,
                      image_size=args.image_size, output_dir=str(work / "runs"), progress="none")
    run = train(cfg, freeze="head", run_name=f"ship_{arch}")
    result = export_checkpoint(run.best_acc_path, work / f"export_{arch}", int8=True, data_dir=data)
    fp32, int8 = OnnxClassifier(result.folder, threads=args.threads), OnnxClassifier(result.folder, int8=True,
                                                                                       threads=args.threads)
    arrays, labels = split_arrays(fp32, data, "test")
    model = Predictor(run.best_acc_path, device="cpu").model.eval()

    def eager(batch):
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    runs = {"pytorch eager fp32": eager, "onnxruntime fp32": fp32.logits, "onnxruntime int8": int8.logits}
    batches = {1: arrays[:1], 32: np.resize(arrays, (32, *arrays.shape[1:])).astype(np.float32)}
    speed = images_per_second(runs, batches, args.repeats)
    sizes = {"pytorch eager fp32": sum(t.numel() * t.element_size() for t in model.state_dict().values()),
             "onnxruntime fp32": (result.folder / FILES["onnx"]).stat().st_size,
             "onnxruntime int8": (result.folder / FILES["int8"]).stat().st_size}
    rows = []
    for name, engine in runs.items():
        logits = np.concatenate([engine(arrays[i:i + 32]) for i in range(0, len(arrays), 32)])
        rows.append({"arch": arch, "weights": "ImageNet backbone" if weights else "random", "engine": name,
                     "b1": speed[(name, 1)], "b32": speed[(name, 32)], "mb": sizes[name] / 1e6,
                     "acc": float((logits.argmax(1) == labels).mean()), "n": len(labels)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["mobilenet_v2", "resnet18"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = make_test_split(fetch(progress=False), share=0.5, seed=0)
    work = Path(tempfile.mkdtemp(prefix="tlcourse_ship_"))
    try:
        rows = [r for arch in args.archs for r in bench(arch, data, work, args)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"# Ship benchmark ({datetime.now():%Y-%m-%d %H:%M}, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, {args.threads} threads, {args.image_size} px, median of {args.repeats})", "",
             "| arch | weights | engine | img/s b=1 | img/s b=32 | file MB | test acc | x eager b=1 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next(x for x in rows if x["arch"] == r["arch"] and x["engine"].startswith("pytorch"))
        lines.append(f"| {r['arch']} | {r['weights']} | {r['engine']} | {r['b1']:.1f} | {r['b32']:.1f} | "
                     f"{r['mb']:.2f} | {r['acc']:.4f} ({r['n']} images) | {r['b1'] / base['b1']:.2f} |")
    text = "\n".join(lines)
    print(text)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ship-{datetime.now():%Y%m%d-%H%M%S}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()

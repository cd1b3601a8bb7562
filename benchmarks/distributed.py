"""One process against several on the same machine: wall time of ``python -m tlcourse train``.

    python benchmarks/distributed.py                 # ants/bees, 224 px, the three routes below
    python benchmarks/distributed.py --quick         # a generated dataset, 64 px, 1 epoch: a smoke run
    python benchmarks/distributed.py --nproc 4 --device cuda   # on a machine with 4 GPUs

Each row trains the same run three times from the command line, as a learner would: in one
process with all of the machine's CPU threads, in one process with the threads one of N processes
gets (cores / N, which tells thread contention apart from the gain of more processes), and with
``--nproc-per-node N`` (cores / N threads each). One process has the global batch B, each of the N
processes B / N, so all three see the same images per optimizer step on the same hardware.
Times are end to end (start-up, dataset check, caching, every epoch with validation,
checkpoints); ``epochs s`` is the sum of the per-epoch times in ``history.json`` (rank 0's).
The machine's load average is recorded before and after: on a shared machine the figures are
only as good as that load.

Results go to ``benchmarks/results/distributed-<time>.json`` and ``.md`` (git-ignored) and are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:           # `python benchmarks/distributed.py` from a checkout
    sys.path.insert(0, str(ROOT))

from tlcourse.commands.config_options import config_arguments  # noqa: E402

#: (name, settings): what each row trains. lr: the course's rates for a head / fine-tuning.
ROWS = [
    ("head, cached features", dict(arch="mobilenet_v2", freeze="head", lr=1e-3)),
    ("last_stage, cached layer3", dict(arch="resnet18", weights=None, freeze="last_stage", lr=1e-4)),
    ("all layers, plain loop", dict(arch="resnet18", weights=None, freeze="all", fast="off", lr=1e-4)),
]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="generated 3-class dataset, 64 px, 1 epoch")
    p.add_argument("--nproc", type=int, default=2, help="processes of the multi-process run (default 2)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch (per process: this / nproc)")
    p.add_argument("--epochs", type=int, default=None, help="default: 3 (1 with --quick)")
    p.add_argument("--image-size", type=int, default=None, help="default: 224 (64 with --quick)")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per process)")
    p.add_argument("--data-dir", default=None, help="ImageFolder root (default: the ants/bees dataset)")
    p.add_argument("--only", default=None, help="run only rows whose name contains this text")
    return p.parse_args(argv)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _train(options: dict, out: Path, nproc: int | None, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    launcher = ["--nproc-per-node", str(nproc)] if nproc else []
    cmd = [sys.executable, "-m", "tlcourse", "train", *launcher, *config_arguments(options | {"output_dir": str(out)})]
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
    (run_dir,) = out.iterdir()
    history = json.loads((run_dir / "history.json").read_text())
    return {"wall_s": seconds, "epochs_s": sum(r["seconds"] for r in history), "path": history[-1]["route"],
            "final_val_acc": history[-1]["val_acc"], "final_val_loss": history[-1]["val_loss"]}


def run(args: argparse.Namespace) -> list[dict]:
    epochs = args.epochs or (1 if args.quick else 3)
    size = args.image_size or (64 if args.quick else 224)
    if args.quick and args.data_dir is None:
        from tlcourse.synthetic import make_image_folder

        data_dir = make_image_folder(Path(tempfile.mkdtemp(prefix="tlcourse-bench-")) / "data",
                                     classes=("cat", "dog", "fox"), per_class={"train": 22, "val": 5}, size=(80, 64))
    else:
        from tlcourse.data import fetch

        data_dir = Path(args.data_dir) if args.data_dir else fetch(progress=False)
    cores = os.cpu_count() or 1
    base = dict(data_dir=str(data_dir), epochs=epochs, image_size=size, augment=False, seed=0,
                device=args.device, progress="none")
    rows = []
    load_before = _load()
    for name, settings in ROWS:
        if args.only and args.only not in name:
            continue
        options = base | settings
        if options.get("weights", "DEFAULT") == "DEFAULT":   # an offline classroom's backbone, if there is one
            from tlcourse.models import find_local_weights

            local = find_local_weights(options["arch"])
            options["weights"] = str(local) if local else "DEFAULT"
        share = max(1, cores // args.nproc)
        with tempfile.TemporaryDirectory() as tmp:
            one = _train(options | {"batch_size": args.batch_size}, Path(tmp) / "one", None, cores)
            one_share = _train(options | {"batch_size": args.batch_size}, Path(tmp) / "share", None, share)
            many = _train(options | {"batch_size": args.batch_size // args.nproc}, Path(tmp) / "many", args.nproc,
                          share)
        rows.append({"run": name, "epochs": epochs, "one": one, "one_share": one_share, "many": many})
        print(f"{name}: 1 process {one['wall_s']:.1f}s ({cores} threads), {one_share['wall_s']:.1f}s ({share}), "
              f"{args.nproc} processes {many['wall_s']:.1f}s ({share} each)", flush=True)
    import torch

    meta = {"when": datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "cpu_cores": cores, "gpus": torch.cuda.device_count(), "device": args.device, "torch": torch.__version__,
            "nproc": args.nproc, "global_batch": args.batch_size, "image_size": size, "data_dir": str(data_dir),
            "load_before": load_before, "load_after": _load()}
    write(rows, meta)
    return rows


def table(rows: list[dict], meta: dict) -> str:
    n, cores = meta["nproc"], meta["cpu_cores"]
    share = max(1, cores // n)
    def threads(k: int) -> str:
        return f"{k} thread{'s' if k > 1 else ''}"

    lines = [f"| run | epochs | 1 process, {threads(cores)}: s (epochs s) | 1 process, {threads(share)}: s (epochs s) "
             f"| {n} processes x {threads(share)}: s (epochs s) | route | final val acc (1 / {n}) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        one, one_share, many = r["one"], r["one_share"], r["many"]
        cells = " | ".join(f"{x['wall_s']:.1f} ({x['epochs_s']:.1f})" for x in (one, one_share, many))
        lines.append(f"| {r['run']} | {r['epochs']} | {cells} | {one['path']} | "
                     f"{one['final_val_acc']:.3f} / {many['final_val_acc']:.3f} |")
    lines.append("")
    lines.append(f"{cores} CPU cores, {meta['gpus']} GPUs, device {meta['device']}, torch {meta['torch']}; "
                 f"global batch {meta['global_batch']} ({meta['global_batch'] // n} per process), "
                 f"{meta['image_size']} px; load average before {meta['load_before']}, after {meta['load_after']}.")
    return "\n".join(lines)


def write(rows: list[dict], meta: dict) -> None:
    folder = ROOT / "benchmarks" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    (folder / f"distributed-{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    text = table(rows, meta)
    (folder / f"distributed-{stamp}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    run(parse_args())

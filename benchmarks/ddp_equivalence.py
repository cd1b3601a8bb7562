"""One process with batch 32 against two with batch 16, with the defaults (issue 23, case 7).

    PYTHONPATH=. python benchmarks/ddp_equivalence.py NAME [train options...]

Environment: CLASSES (default 2) and PER (training images per class, default 37) shape a generated
folder; DATA names a folder under WORK to use instead (e.g. ``../hymenoptera_data``); ARCH the
model options (default ``--arch mobilenet_v2``: its ImageNet backbone from TLCOURSE_WEIGHTS_DIR);
WORK the work folder (default a ``tlcourse-ddp`` folder in the temp dir). Trains ``python -m
tlcourse train`` with ``--batch-size 32`` and with ``--batch-size 16 --nproc-per-node 2`` (64 px,
3 epochs, seed 1, unless the options say otherwise) and prints each epoch's train_loss, val_loss,
val_acc, lr and train_images.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:           # `python benchmarks/ddp_equivalence.py` from a checkout
    sys.path.insert(0, str(REPO))
from tlcourse.synthetic import make_image_folder  # noqa: E402


def main() -> int:
    name, extra = sys.argv[1], sys.argv[2:]
    root = Path(os.environ.get("WORK", Path(tempfile.gettempdir()) / "tlcourse-ddp"))
    classes, per = int(os.environ.get("CLASSES", 2)), int(os.environ.get("PER", 37))
    data = root / os.environ.get("DATA", f"gen-{classes}x{per}")
    if not data.exists():
        make_image_folder(data, classes=tuple("abcde"[:classes]), per_class={"train": per, "val": 9}, size=(72, 64))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), TLCOURSE_DIST_TIMEOUT="300")
    base = [*os.environ.get("ARCH", "--arch mobilenet_v2").split(), "--data-dir", str(data), "--image-size", "64",
            "--epochs", "3", "--seed", "1", "--progress", "none", "--device", "cpu", "--cache-dir", str(root / "cache")]
    for label, launch in (("1x32", ["--batch-size", "32"]), ("2x16", ["--batch-size", "16", "--nproc-per-node", "2"])):
        out = root / f"{name}-{label}"
        started = time.time()
        proc = subprocess.run([sys.executable, "-m", "tlcourse", "train", *base, *extra, *launch,
                               "--output-dir", str(out)], env=env, capture_output=True, text=True)
        if proc.returncode:
            print(name, label, "FAILED", proc.stderr[-1500:])
            continue
        run = max((d for d in out.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime)
        rows = [(r["epoch"], round(r["train_loss"], 6), round(r["val_loss"], 6), round(r["val_acc"], 4),
                 round(r["lr"], 6), r["train_images"]) for r in json.loads((run / "history.json").read_text())]
        print(name, label, f"{time.time() - started:.0f}s", rows, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

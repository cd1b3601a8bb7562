"""How long the pre-training dataset check takes, and what it adds to ``make_loaders``.

    PYTHONPATH=. python benchmarks/check_dataset_speed.py [DATA_DIR] [--repeat N]

Prints the median/min/max of N runs of: the structure-only check, the full check (every image
decoded with ``open_rgb``) with 1 thread and with the default thread count, and ``make_loaders``
with ``verify_images`` on and off, with and without the in-process cache of verified files.
Defaults to the course dataset (``data/hymenoptera_data``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from tlcourse.checks import check_dataset, forget_verified
from tlcourse.data import make_loaders, resolve_data_dir


def timed(fn, repeat: int) -> str:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return f"median {statistics.median(runs):.3f} s  (min {min(runs):.3f}, max {max(runs):.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = resolve_data_dir(args.data_dir)
    first = check_dataset(root)  # also warms the file cache
    print(first.summary())
    print(f"cpu cores: {os.cpu_count()}, load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    rows = {
        "check_dataset(verify_images=False)": lambda: check_dataset(root, verify_images=False),
        "check_dataset(verify_images=True), 1 thread": lambda: check_dataset(root, workers=1, use_cache=False),
        "check_dataset(verify_images=True), default threads": lambda: check_dataset(root, use_cache=False),
        "check_dataset(verify_images=True), files seen before": lambda: check_dataset(root),
        "make_loaders(verify_images=False)": lambda: make_loaders(root, verify_images=False),
        "make_loaders(verify_images=True), first call": lambda: (forget_verified(), make_loaders(root)),
        "make_loaders(verify_images=True), again": lambda: make_loaders(root),
    }
    for name, fn in rows.items():
        print(f"{name:<55} {timed(fn, args.repeat)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

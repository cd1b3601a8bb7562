"""What hashing every image's bytes costs in the feature-cache key (issue 23, case 4).

    PYTHONPATH=. python benchmarks/cache_key_cost.py [ANTS_BEES_DIR]

The key used to cover each image's path, size and mtime (one ``stat``); it now covers the
sha256 of its bytes, so an edit that keeps size and mtime (a new EXIF orientation) is another
key. Prints, for the ants/bees images and a generated folder of 2,000 JPEG photos
(500 x 375 px, like the dataset's), the time of the old stat-only fingerprint and of the content
hash (files in the page cache, as on a second run; the in-process memo is cleared each time),
next to the time a cached run needs anyway to decode and run the backbone over the images once.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from tlcourse import feature_cache


def stat_only(samples):
    digest = hashlib.sha256()
    for path, target in samples:
        info = os.stat(path)
        digest.update(f"{os.path.abspath(path)}\0{info.st_size}\0{info.st_mtime_ns}\0{target}\n".encode())
    return digest.hexdigest()


def best_of(call, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        feature_cache._CONTENT_HASHES.clear()
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return min(times)


def decode_seconds(samples, limit: int = 100) -> float:
    """Seconds to open + decode + resize ``limit`` images (PIL), scaled to all of them."""
    from tlcourse.images import open_rgb

    part = samples[:limit]
    started = time.perf_counter()
    for path, _ in part:
        open_rgb(path).resize((224, 224))
    return (time.perf_counter() - started) * len(samples) / len(part)


def generated(root: Path, count: int = 2000) -> list[tuple[str, int]]:
    generator = torch.Generator().manual_seed(0)
    samples = []
    for i in range(count):
        path = root / f"c{i % 5}" / f"img_{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (375 // 25, 500 // 25, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).resize((500, 375), Image.BILINEAR).save(path, quality=90)
        samples.append((str(path), i % 5))
    return samples


def row(name: str, samples) -> str:
    size = sum(os.path.getsize(p) for p, _ in samples)
    old = best_of(lambda: stat_only(samples))
    new = best_of(lambda: feature_cache.fingerprint_samples(samples))
    decode = decode_seconds(samples)
    return (f"| {name} | {len(samples):,} | {size / 1e6:.1f} MB | {old * 1000:.1f} ms | {new * 1000:.0f} ms | "
            f"{size / 1e6 / new:.0f} MB/s | {decode:.1f} s |")


def main() -> int:
    torch.set_num_threads(1)
    print("| images | files | bytes | stat key (before) | content hash (now) | hash rate | decode + resize once |")
    print("|---|---|---|---|---|---|---|")
    if len(sys.argv) > 1:
        root = Path(sys.argv[1])
        samples = [(str(p), 0) for p in sorted(root.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
        print(row("ants/bees (hymenoptera)", samples))
    with tempfile.TemporaryDirectory() as tmp:
        print(row("generated 500 x 375 JPEGs", generated(Path(tmp))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

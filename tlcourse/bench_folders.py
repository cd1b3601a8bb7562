"""Generated "own data" for benchmarks: ImageFolders that are not ants and bees.

The only real dataset available offline is ants/bees. To measure what a learner gets on *their*
images (other class names, another class count, more and larger photos) these functions draw
photo-like scenes with PIL, deterministically from a seed, and save them as JPEGs:

* ``leaves`` (3 classes: ``healthy``, ``blight``, ``rust``): one leaf per image on a cluttered,
  textured background (soil, grass, stones, noise), at a random place, size, rotation and shade
  of green, with veins. ``blight`` leaves carry a few dark brown lesions with yellow halos,
  ``rust`` leaves many small orange pustules in patches; ``healthy`` leaves have none, but every
  class gets insect holes, dirt specks and brown edges as distractors, and lesions can be few and
  small. Lighting, blur, sensor noise and JPEG quality vary per image.
* ``shapes`` (4 classes: ``circle``, ``square``, ``star``, ``triangle``): several small objects of
  one shape on a cluttered background, among distractor objects of the other shapes (fewer and
  smaller), with random colours, so colour says nothing about the class.

These are synthetic images, not photographs: they show how the training defaults behave on
data other than ants/bees with a real pretrained backbone, not what accuracy a learner's own
photos will reach.

    python benchmarks/generated_folders.py leaves data/own_leaves       # 1,200 images, 512x384 (this module)
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LEAVES = ("blight", "healthy", "rust")
SHAPES = ("circle", "square", "star", "triangle")
MARKER = ".tlcourse-generated"



def _stable(text: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(text))


def _background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Soil/grass-like texture: low-frequency colour noise, clutter blobs, fine grain."""
    w, h = size
    palette = np.array([[120, 95, 70], [90, 110, 60], [130, 125, 115], [70, 60, 50], [150, 140, 100]], float)
    base = palette[rng.integers(len(palette))] + rng.normal(0, 15, 3)
    coarse = rng.normal(0, 1, (h // 24 + 2, w // 24 + 2))
    field = np.asarray(Image.fromarray(((coarse * 40) + 128).clip(0, 255).astype(np.uint8)).resize((w, h),
                                                                                                  Image.BICUBIC),
                       dtype=np.float32)[..., None] - 128
    gradient = np.linspace(-1, 1, h)[:, None, None] * rng.uniform(-25, 25)
    img = np.clip(base * (1 + (field + gradient) / 160) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(img)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(15, 45)):                       # stones, twigs, grass blades
        colour = tuple(int(c) for c in np.clip(base * rng.uniform(0.5, 1.5) + rng.normal(0, 12, 3), 0, 255))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.5:
            r = rng.uniform(3, 22)
            draw.ellipse([x - r, y - r * rng.uniform(0.5, 1), x + r, y + r * rng.uniform(0.5, 1)], fill=colour)
        else:
            a = rng.uniform(0, math.pi)
            length = rng.uniform(15, 90)
            draw.line([x, y, x + length * math.cos(a), y + length * math.sin(a)], fill=colour,
                      width=int(rng.integers(1, 5)))
    return canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))


def _finish(rng: np.random.Generator, canvas: Image.Image) -> Image.Image:
    """Camera-like variation: exposure, contrast, blur, sensor noise."""
    if rng.random() < 0.4:
        canvas = canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    a = np.asarray(canvas, dtype=np.float32)
    a = (a - 128) * rng.uniform(0.7, 1.2) + 128 + rng.uniform(-30, 30)
    a += rng.normal(0, rng.uniform(2, 12), a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _leaf_polygon(cx, cy, length, width, angle, n=40):
    points = []
    for i in range(n + 1):
        t = i / n
        x = (t - 0.5) * length
        y = width / 2 * math.sin(math.pi * t) ** 0.8
        points.append((x, y))
    points += [(x, -y) for x, y in reversed(points[1:-1])]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _inside(polygon, size):
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).polygon(polygon, fill=255)
    return mask


def leaf_image(cls: str, rng: np.random.Generator, size=(512, 384)) -> Image.Image:
    w, h = size
    canvas = _background(rng, size)
    length = rng.uniform(0.45, 0.85) * min(w, h) * 1.2
    width = length * rng.uniform(0.35, 0.6)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    angle = rng.uniform(0, 2 * math.pi)
    polygon = _leaf_polygon(cx, cy, length, width, angle)
    green = np.array([rng.uniform(40, 110), rng.uniform(110, 190), rng.uniform(30, 90)])
    leaf = Image.new("RGB", size, tuple(int(c) for c in green))
    ld = ImageDraw.Draw(leaf)
    c, s = math.cos(angle), math.sin(angle)
    vein = tuple(int(v) for v in np.clip(green + rng.uniform(-35, 45), 0, 255))
    ld.line([(cx - c * length / 2, cy - s * length / 2), (cx + c * length / 2, cy + s * length / 2)], fill=vein,
            width=max(1, int(length / 120)))
    for k in range(int(rng.integers(4, 9))):                     # side veins
        t = (k + 1) / 10 - 0.5
        px, py = cx + c * t * length, cy + s * t * length
        for side in (1, -1):
            a = angle + side * rng.uniform(0.6, 1.0)
            ld.line([(px, py), (px + math.cos(a) * width * 0.45, py + math.sin(a) * width * 0.45)], fill=vein, width=1)
    shade = np.asarray(leaf, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
    leaf = Image.fromarray(np.clip(shade, 0, 255).astype(np.uint8))
    ld = ImageDraw.Draw(leaf)

    def spot_at():
        t, u = rng.uniform(-0.4, 0.4), rng.uniform(-0.35, 0.35)
        return cx + c * t * length - s * u * width, cy + s * t * length + c * u * width

    if cls == "blight":                                           # few dark lesions with a yellow halo
        for _ in range(int(rng.integers(1, 7))):
            x, y = spot_at()
            r = rng.uniform(0.02, 0.09) * length
            halo = r * rng.uniform(1.2, 1.6)
            ld.ellipse([x - halo, y - halo, x + halo, y + halo],
                       fill=(int(rng.uniform(150, 200)), int(rng.uniform(150, 190)), int(rng.uniform(40, 80))))
            ld.ellipse([x - r, y - r * rng.uniform(0.6, 1), x + r, y + r],
                       fill=(int(rng.uniform(50, 100)), int(rng.uniform(30, 60)), int(rng.uniform(10, 40))))
    elif cls == "rust":                                           # many small orange pustules in patches
        for _ in range(int(rng.integers(1, 4))):
            px, py = spot_at()
            spread = rng.uniform(0.05, 0.2) * length
            for _ in range(int(rng.integers(8, 40))):
                x, y = px + rng.normal(0, spread), py + rng.normal(0, spread)
                r = rng.uniform(0.006, 0.016) * length
                ld.ellipse([x - r, y - r, x + r, y + r],
                           fill=(int(rng.uniform(190, 240)), int(rng.uniform(100, 150)), int(rng.uniform(20, 60))))
    for _ in range(int(rng.integers(0, 6))):                      # distractors on every class: holes and dirt
        x, y = spot_at()
        r = rng.uniform(0.004, 0.02) * length
        ld.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.uniform(20, 90, 3)))
    mask = _inside(polygon, size)
    if rng.random() < 0.5:                                        # dry brown edges on any class
        edge = mask.filter(ImageFilter.MinFilter(int(rng.integers(3, 9)) * 2 + 1))
        brown = Image.new("RGB", size, (int(rng.uniform(110, 150)), int(rng.uniform(80, 110)), 40))
        leaf = Image.composite(leaf, brown, edge)
    canvas.paste(leaf, (0, 0), mask.filter(ImageFilter.GaussianBlur(1)))
    return _finish(rng, canvas)


def _shape(draw, kind: str, x: float, y: float, r: float, angle: float, colour) -> None:
    if kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        return
    corners = {"triangle": 3, "square": 4, "star": 10}[kind]
    points = []
    for i in range(corners):
        rr = r * (0.45 if kind == "star" and i % 2 else 1.0)
        a = angle + 2 * math.pi * i / corners
        points.append((x + rr * math.cos(a), y + rr * math.sin(a)))
    draw.polygon(points, fill=colour)


def shapes_image(cls: str, rng: np.random.Generator, size=(500, 375)) -> Image.Image:
    w, h = size
    canvas = _background(rng, size)
    draw = ImageDraw.Draw(canvas)
    others = [k for k in SHAPES if k != cls]
    items = [(cls, rng.uniform(14, 40)) for _ in range(int(rng.integers(2, 6)))]
    items += [(others[int(rng.integers(len(others)))], rng.uniform(8, 24)) for _ in range(int(rng.integers(0, 4)))]
    for k in rng.permutation(len(items)):
        kind, r = items[k]
        colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
        _shape(draw, kind, rng.uniform(r, w - r), rng.uniform(r, h - r), r, rng.uniform(0, 2 * math.pi), colour)
    return _finish(rng, canvas)


DATASETS = {"leaves": (LEAVES, leaf_image, (512, 384), {"train": 300, "val": 100}),
            "shapes": (SHAPES, shapes_image, (500, 375), {"train": 100, "val": 50})}


def generate(kind: str, root: str | Path, *, per_class: dict | None = None, seed: int = 0,
             force: bool = False) -> Path:
    """Write ``root/{train,val}/<class>/*.jpg`` once (a marker records the settings); return ``root``."""
    classes, draw, size, default_counts = DATASETS[kind]
    counts = per_class or default_counts
    root = Path(root)
    stamp = f"{kind} seed={seed} per_class={sorted(counts.items())} size={size}\n"
    marker = root / MARKER
    if marker.is_file() and marker.read_text() == stamp and not force:
        return root
    if root.exists():
        shutil.rmtree(root)
    for split, count in counts.items():
        for ci, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, _stable(split), ci, i])
                image = draw(cls, rng, size)
                image.save(folder / f"{cls}_{i:04d}.jpg", quality=int(rng.integers(70, 96)))
    marker.write_text(stamp)
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="generate a synthetic ImageFolder for benchmarks")
    p.add_argument("kind", choices=sorted(DATASETS))
    p.add_argument("root")
    p.add_argument("--train", type=int, default=None, help="training images per class")
    p.add_argument("--val", type=int, default=None, help="validation images per class")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    counts = dict(DATASETS[args.kind][3])
    if args.train:
        counts["train"] = args.train
    if args.val:
        counts["val"] = args.val
    print(generate(args.kind, args.root, per_class=counts, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())

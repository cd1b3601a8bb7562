"""Property-style fuzzing (issue 11, item 3): random byte-level damage to real JPEG/PNG files and to a
real checkpoint. Every outcome is a success, a named skip or a one-line ``TLCourseError``, never
another exception type; and the checker, the training loader and ``predict`` agree on each file.

Seeded, so a failure reproduces; about 400 cases in a few seconds.
"""

from __future__ import annotations

import io
import os
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlcourse import TLCourseError
from tlcourse import checkpoints as ck
from tlcourse.checks import ImageLoadError, inspect_image
from tlcourse.data import eval_transforms, load_image
from tlcourse.models import build_model
from tlcourse.predict import Predictor

IMAGE_CASES = 150    # per format
CHECKPOINT_CASES = 60  # truncations, and as many byte flips


def photo(seed: int) -> Image.Image:
    """A smooth gradient with noise: compresses like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(0, 255, 64), np.linspace(0, 255, 48))
    pixels = np.stack([x, y, (x + y) / 2], axis=-1) + rng.normal(0, 12, (48, 64, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGB")


def encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    photo(1).save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def damage(data: bytes, rng: random.Random) -> bytes:
    """One random corruption: flipped bytes, an overwritten or zeroed span, a cut, a repeated span."""
    data = bytearray(data)
    kind = rng.choice(["flip", "flip", "span", "zero", "cut", "repeat", "header"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "header":  # the first 64 bytes hold the size fields of both formats
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(min(64, len(data)))] = rng.randrange(256)
    elif kind in ("span", "zero"):
        start = rng.randrange(len(data))
        length = rng.randint(1, 64)
        data[start:start + length] = bytes(rng.randrange(256) if kind == "span" else 0 for _ in range(length))
    elif kind == "cut":
        del data[rng.randrange(len(data)):]
    else:
        start = rng.randrange(len(data))
        data[start:start] = data[start:start + rng.randint(1, 256)]
    return bytes(data)


def structure(obj) -> str:
    """Everything a checkpoint says except tensor values: two with the same structure rebuild alike."""
    def strip(value):
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), str(value.dtype))
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return value
    return repr(strip(obj))


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    model = build_model("mobilenet_v2", 2, weights=None)
    ckpt = ck.make_checkpoint(model, epoch=1, class_names=["a", "b"], spec=model.tlcourse_spec, freeze="head",
                              image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, metrics={},
                              optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config={"epochs": 1},
                              history=[{"epoch": 1, "train_loss": 0.7, "train_acc": 0.5, "val_loss": 0.7,
                                        "val_acc": 0.5}])
    return Predictor(ck.save_checkpoint(ckpt, tmp_path_factory.mktemp("fuzz") / "real.pt"), device="cpu")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_damaged_images_are_named_errors_everywhere(fmt, tmp_path, predictor):
    rng = random.Random(f"images-{fmt}")
    original = encoded(fmt)
    transform = eval_transforms(32)
    outcomes = {"loads": 0, "error": 0}
    for case in range(IMAGE_CASES):
        path = tmp_path / f"case{case}.{fmt.lower()}"
        path.write_bytes(damage(original, rng))
        report = inspect_image(path, use_cache=False)  # the checker: never raises
        try:
            image = load_image(str(path))              # the training loader
        except ImageLoadError as exc:
            message = str(exc)
            assert message.startswith(f"{path}: ") and "\n" not in message, message
            assert report.severity == "error", (case, message)  # the check had named it
            loaded = False
        else:
            assert image.mode == "RGB" and transform(image).shape == (3, 32, 32)
            assert report.severity != "error", (case, report.message)
            loaded = True
        try:
            predictor._load(path)                         # predict
        except TLCourseError as exc:
            assert not loaded and "\n" not in str(exc), (case, str(exc))
        else:
            assert loaded, case
        outcomes["loads" if loaded else "error"] += 1
    assert outcomes["error"] > IMAGE_CASES // 10 and outcomes["loads"] > 0, outcomes  # both kinds were exercised


def test_damaged_checkpoints_are_one_line_errors(tmp_path, predictor):
    """Truncations (every one fails) and byte flips in the zip structure and the pickled metadata."""
    path = tmp_path / "damaged.pt"
    original = predictor.checkpoint_path.read_bytes()
    rng = random.Random("checkpoints")

    known = {structure(ck.load_checkpoint(predictor.checkpoint_path))}  # the intact file rebuilds (the fixture)

    def outcome() -> str:
        try:
            ckpt = ck.load_checkpoint(path)
            if structure(ckpt) not in known:  # damage that changed more than tensor values: rebuild (0.5 s)
                ck.model_from_checkpoint(ckpt, source=str(path))
            ck.check_resumable(ckpt, path)
        except TLCourseError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc), str(exc)
            return "error"
        return "loads"

    path.write_bytes(original)
    for size in sorted(rng.sample(range(len(original)), CHECKPOINT_CASES), reverse=True):
        os.truncate(path, size)  # shrinking in place: no rewrite of the whole file per case
        assert outcome() == "error", size

    with zipfile.ZipFile(io.BytesIO(original)) as zf:
        pickle = next(i for i in zf.infolist() if i.filename.endswith("data.pkl"))
        headers = [i.header_offset for i in zf.infolist()]
    # Where damage changes meaning: the pickled dict (keys, class names, shapes), headers, the directory.
    start = pickle.header_offset + 30 + len(pickle.filename) + len(pickle.extra)
    spots = ([rng.randrange(start, start + pickle.compress_size) for _ in range(CHECKPOINT_CASES * 2 // 3)]
             + [rng.choice(headers) + rng.randrange(30) for _ in range(CHECKPOINT_CASES // 6)]
             + [len(original) - 1 - rng.randrange(min(2000, len(original))) for _ in range(CHECKPOINT_CASES // 6)])
    path.write_bytes(original)
    seen = {"loads": 0, "error": 0}
    with open(path, "r+b") as fh:
        for spot in spots:
            fh.seek(spot)
            fh.write(bytes([original[spot] ^ (1 << rng.randrange(8))]))
            fh.flush()
            seen[outcome()] += 1
            fh.seek(spot)
            fh.write(original[spot:spot + 1])
    assert seen["error"] > 0 and seen["loads"] > 0, seen  # both kinds of damage were exercised
    assert Path(path).read_bytes() == original

"""Predict with an exported folder using only onnxruntime, numpy and Pillow: no torch anywhere.

This is the deployable artefact: copy the folder written by ``tlcourse.export`` to a machine
without PyTorch and run::

    from tlcourse.onnx_predict import OnnxClassifier
    clf = OnnxClassifier("exports/my_model")
    clf.predict_paths(["photo.jpg"], topk=3)

The preprocessing reproduces ``tlcourse.data.eval_transforms`` step by step on the same PIL calls
(short side resized with bilinear filtering, centre crop, /255, ImageNet mean/std), and images are
opened by ``tlcourse.images.open_rgb`` like training did, so the ONNX model sees the very pixels
PyTorch saw. The module imports nothing from tlcourse that imports torch (a test checks this in
a subprocess where ``import torch`` fails).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import TLCourseError, __version__
from .images import open_rgb

EXPORT_FORMAT = "tlcourse-export"
EXPORT_FORMAT_VERSION = 1
UNKNOWN = "unknown"
FILES = {"onnx": "model.onnx", "int8": "model.int8.onnx", "torchscript": "model.torchscript.pt",
         "labels": "labels.json", "preprocessing": "preprocessing.json", "card": "MODEL_CARD.md",
         "manifest": "export.json"}


def read_manifest(folder: str | Path) -> dict:
    """``export.json`` of an export folder, checked: one line naming the folder and the fix otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TLCourseError(f"export folder {folder} does not exist; write one with "
                            "python -m tlcourse export --checkpoint RUN/best_acc.pt --output FOLDER")
    path = folder / FILES["manifest"]
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TLCourseError(f"{folder} is not a tlcourse export (no {FILES['manifest']}); "
                            "export a checkpoint into it with python -m tlcourse export") from None
    except (OSError, ValueError) as exc:
        raise TLCourseError(f"{path} is unreadable ({type(exc).__name__}); export the checkpoint again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise TLCourseError(f"{path} is not a tlcourse export manifest; export the checkpoint again")
    if manifest.get("format_version") != EXPORT_FORMAT_VERSION:
        raise TLCourseError(f"{folder} was exported by tlcourse {manifest.get('tlcourse', '?')} in export format "
                            f"{manifest.get('format_version')!r}; this tlcourse {__version__} reads format "
                            f"{EXPORT_FORMAT_VERSION}: export the checkpoint again with this version")
    return manifest


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``Resize(size)`` on a PIL image: short side to ``size``, long side truncated."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return image
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    return image.resize((new_w, new_h), Image.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision's ``CenterCrop(size)`` (the image is at least ``size`` on both sides after resizing)."""
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess(image: Image.Image, pre: dict) -> np.ndarray:
    """One RGB image as the model's float32 CHW input."""
    image = center_crop(resize_short_side(image, pre["resize"]), pre["image_size"])
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(pre["mean"], dtype=np.float32)) / np.asarray(pre["std"], dtype=np.float32)
    return array.transpose(2, 0, 1).astype(np.float32)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class OnnxPrediction:
    path: str
    topk: tuple[tuple[str, float], ...]  # calibrated probabilities, most likely first
    unknown: bool                        # top probability below the export's threshold

    @property
    def label(self) -> str:
        return UNKNOWN if self.unknown else self.topk[0][0]


class OnnxClassifier:
    """An export folder loaded with onnxruntime; ``int8=True`` uses the quantized model."""

    def __init__(self, folder: str | Path, *, int8: bool = False, threads: int | None = None):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.labels: list[str] = json.loads((self.folder / FILES["labels"]).read_text(encoding="utf-8"))
        self.pre: dict = json.loads((self.folder / FILES["preprocessing"]).read_text(encoding="utf-8"))
        model = self.folder / FILES["int8" if int8 else "onnx"]
        if not model.is_file():
            hint = " (export with --int8)" if int8 else " (export with --format onnx)"
            raise TLCourseError(f"{model} does not exist{hint}")
        options = ort.SessionOptions()
        # No busy-waiting between calls: idle sessions must not take the CPU from other work (or timings).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.temperature = float(self.manifest.get("temperature") or 1.0)
        self.threshold = float(self.manifest.get("threshold") or 0.0)

    def load(self, path: str | Path) -> np.ndarray:
        try:
            image = open_rgb(path, self.pre.get("draft"))
        except FileNotFoundError:
            raise TLCourseError(f"image {path} does not exist") from None
        except Exception as exc:  # PIL: OSError, DecompressionBombError, SyntaxError...; ours: too large
            from .checks import describe_load_error  # torch-free, like this module

            raise TLCourseError(f"image {Path(path).name}: {describe_load_error(path, exc)}") from None
        return preprocess(image, self.pre)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def predict_arrays(self, batch: np.ndarray, topk: int = 3, paths=None) -> list[OnnxPrediction]:
        probs = softmax(self.logits(batch), self.temperature)
        topk = max(1, min(topk, len(self.labels)))
        out = []
        for i, row in enumerate(probs):
            order = np.argsort(-row, kind="stable")[:topk]
            out.append(OnnxPrediction(str(paths[i]) if paths else "", tuple((self.labels[j], float(row[j]))
                                                                            for j in order),
                                      bool(row[order[0]] < self.threshold)))
        return out

    def predict_paths(self, paths, topk: int = 3, batch_size: int = 32) -> list[OnnxPrediction]:
        paths = [Path(p) for p in paths]
        out: list[OnnxPrediction] = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            out += self.predict_arrays(np.stack([self.load(p) for p in chunk]), topk, chunk)
        return out


def main(argv: list[str] | None = None) -> int:
    """``python -m tlcourse.onnx_predict FOLDER IMAGE...``: one JSON line per image (top-3, unknown), torch-free."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        print("usage: python -m tlcourse.onnx_predict EXPORT_FOLDER IMAGE [IMAGE...]", file=sys.stderr)
        return 2
    try:
        clf = OnnxClassifier(args[0])
        for pred in clf.predict_paths(args[1:]):
            print(json.dumps({"path": pred.path, "label": pred.label, "unknown": pred.unknown,
                              "topk": pred.topk}, ensure_ascii=False))
    except TLCourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

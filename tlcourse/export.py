"""Export a checkpoint into one self-contained folder: model, labels, preprocessing, model card.

``export_checkpoint(".../best_acc.pt", "exports/ants_bees")`` writes

* ``model.onnx`` (fp32; ``formats`` may add ``model.torchscript.pt``) whose output is always one
  logit per class (a binary head's single logit z becomes ``[0, z]``),
* ``model.int8.onnx`` with ``int8=True``: ONNX Runtime static quantization (QDQ, int8 weights per
  channel, uint8 activations) calibrated on training images,
* ``labels.json``, ``preprocessing.json`` (image size, resize rule, mean/std), ``export.json``
  (versions, temperature, "unknown" threshold, score, parity) and ``MODEL_CARD.md``.

The folder is built under a temporary name beside the target and renamed into place at the end:
an existing folder is never overwritten and a failure leaves nothing half-written. Every export
is checked against PyTorch on the whole val/ split, through the torch-free preprocessing of
``tlcourse.onnx_predict`` (max |logit difference| and top-1 agreement).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import TLCourseError, __version__
from .checkpoints import load_checkpoint, versions
from .data import ImageFolderRGB, draft_size, resize_size, resolve_data_dir
from .evaluation import Evaluation, evaluate_model
from .model_card import model_card
from .onnx_predict import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, FILES, OnnxClassifier
from .predict import Predictor

FORMATS = ("onnx", "torchscript")
OPSET = 17


class LogitColumns(nn.Module):
    """The model with one logit per class: a single binary logit z becomes ``[0, z]`` (softmax = sigmoid)."""

    def __init__(self, model: nn.Module, single: bool):
        super().__init__()
        self.model, self.single = model, single

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return torch.cat([torch.zeros_like(out), out], dim=1) if self.single else out


@dataclass
class Parity:
    images: int
    max_abs_diff: float
    top1_agreement: float   # share of images whose top-1 class is the same as PyTorch's

    def line(self, name: str) -> str:
        return (f"{name} vs PyTorch on {self.images} val images: max |logit diff| {self.max_abs_diff:.2e}, "
                f"top-1 agreement {self.top1_agreement:.2%}")


@dataclass
class ExportResult:
    folder: Path
    evaluation: Evaluation
    parity: dict[str, Parity] = field(default_factory=dict)
    table: list[dict] = field(default_factory=list)   # the int8 comparison rows (empty without int8)

    def path(self, key: str) -> Path:
        return self.folder / FILES[key]

    def table_text(self) -> str:
        if not self.table:
            return "(no int8 model: export with int8=True / --int8)"
        split = self.evaluation.final.split
        head = f"{'model (1 thread)':<16} {'size MB':>8} {'ms/img b=1':>11} {'ms/img b=32':>12} {split + ' acc':>9}"
        rows = [f"{r['model']:<16} {r['size_mb']:>8.2f} {r['ms_b1']:>11.2f} {r['ms_b32']:>12.2f} {r['accuracy']:>9.4f}"
                for r in self.table]
        return "\n".join([head, *rows])

    def __str__(self) -> str:
        lines = [f"exported to {self.folder}"] + [p.line(n) for n, p in self.parity.items()]
        return "\n".join(lines + ([self.table_text()] if self.table else []))


def _temp_folder(output: Path) -> Path:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise TLCourseError(f"{output} already exists; nothing was overwritten: choose another --output "
                            "or delete that folder first")
    parent = output.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{output.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise TLCourseError(f"cannot write in {parent} ({exc.strerror or exc}); choose a folder you can write "
                            "to with --output") from None
    return tmp


def export_onnx(model: nn.Module, path: Path, image_size: int, *, dynamo: bool = False) -> None:
    """``torch.onnx.export`` with a dynamic batch axis.

    ``dynamo=False`` (default) is the TorchScript-based exporter: about 5x faster here than the
    ``torch.export`` route and enough for these convolutional models; ``dynamo=True`` needs onnxscript.
    """
    example = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"],
                                        output_names=["logits"], dynamic_shapes={"x": {0: batch}}, verbose=False)
            program.save(str(path))
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["image"],
                              output_names=["logits"], opset_version=OPSET,
                              dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})


def export_torchscript(model: nn.Module, path: Path, image_size: int) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.jit.trace(model, torch.zeros(1, 3, image_size, image_size)).save(str(path))


def val_arrays(clf: OnnxClassifier, data_dir: Path) -> tuple[np.ndarray, list[Path]]:
    """Every val/ image preprocessed by the torch-free path, in ImageFolder order."""
    pre = clf.pre
    dataset = ImageFolderRGB(data_dir / "val", draft=pre["draft"])
    paths = [Path(p) for p, _ in dataset.samples]
    return np.stack([clf.load(p) for p in paths]), paths


def parity(reference: np.ndarray, logits: np.ndarray) -> Parity:
    return Parity(len(reference), float(np.abs(reference - logits).max()),
                  float((reference.argmax(1) == logits.argmax(1)).mean()))


def onnx_logits(clf: OnnxClassifier, arrays: np.ndarray, batch_size: int = 32) -> np.ndarray:
    return np.concatenate([clf.logits(arrays[i:i + batch_size]) for i in range(0, len(arrays), batch_size)])


def ms_per_image(run, batch: np.ndarray, repeats: int = 5) -> float:
    """Median milliseconds per image of ``run(batch)`` after one warm-up call."""
    run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / len(batch)


def split_arrays(clf: OnnxClassifier, root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    dataset = ImageFolderRGB(root / split, draft=clf.pre["draft"])
    return np.stack([clf.load(p) for p, _ in dataset.samples]), np.asarray(dataset.targets)


def quantize(fp32: Path, out: Path, calibration: np.ndarray, work: Path) -> None:
    """ONNX Runtime static quantization (QDQ), calibrated on ``calibration`` (preprocessed training images)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration[i:i + 8] for i in range(0, len(calibration), 8))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    prepared = work / "model.prep.onnx"
    quant_pre_process(str(fp32), str(prepared))
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    prepared.unlink()


def int8_table(folder: Path, evaluation: Evaluation, predictor: Predictor, root: Path, threads: int = 1) -> list[dict]:
    """fp32 and int8 ONNX against PyTorch eager: size, latency at batch 1 and 32, final-split accuracy.

    Every engine runs on ``threads`` threads (default one: per-core numbers, steady even on a busy
    machine, where several threads waiting on each other suffer most from sharing the cores).
    """
    split = evaluation.final.split
    fp32, int8 = OnnxClassifier(folder, threads=threads), OnnxClassifier(folder, int8=True, threads=threads)
    arrays, labels = split_arrays(fp32, root, split)
    batch32 = np.resize(arrays, (32, *arrays.shape[1:])).astype(np.float32)
    model = predictor.model.eval()

    def eager(batch):
        with torch.no_grad():
            return model(torch.from_numpy(batch)).numpy()

    rows = [{"model": "pytorch fp32", "size_mb": None, "run": eager,
             "accuracy": evaluation.final.accuracy}]
    for name, clf, file in (("onnx fp32", fp32, FILES["onnx"]), ("onnx int8", int8, FILES["int8"])):
        acc = float((onnx_logits(clf, arrays).argmax(1) == labels).mean())
        rows.append({"model": name, "size_mb": (folder / file).stat().st_size / 1e6, "run": clf.logits,
                     "accuracy": acc})
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for row in rows:
            run = row.pop("run")
            row["ms_b1"] = ms_per_image(run, arrays[:1])
            row["ms_b32"] = ms_per_image(run, batch32, repeats=3)
    finally:
        torch.set_num_threads(before)
    rows[0]["size_mb"] = sum(p.numel() * p.element_size() for p in model.state_dict().values()) / 1e6
    return rows


def export_checkpoint(checkpoint: str | Path, output: str | Path, *, formats=("onnx",), int8: bool = False,
                      data_dir=None, target_accuracy: float = 0.95, calibration_images: int = 64,
                      dynamo: bool = False, evaluation: Evaluation | None = None) -> ExportResult:
    """Write the export folder (see the module docstring) and return its checks and numbers.

    ``evaluation``: the checkpoint's ``evaluate_checkpoint`` result on the same data, when already
    computed (a notebook has it); otherwise val/ and test/ are scored here.
    """
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise TLCourseError(f"format {unknown[0] if unknown else '(none)'!r} is not one of {', '.join(FORMATS)}")
    if "onnx" not in formats:
        formats = ("onnx", *formats)  # the torch-free artefact and the parity reference
    ckpt = load_checkpoint(checkpoint)
    output = Path(output).expanduser()
    root = resolve_data_dir(data_dir if data_dir is not None else (ckpt.get("config") or {}).get("data_dir"))
    predictor = Predictor(ckpt, device="cpu")
    model = predictor.model.eval()
    size = predictor.image_size
    with torch.no_grad():
        single = model(torch.zeros(1, 3, size, size)).shape[1] == 1
    wrapped = LogitColumns(model, single).eval()
    if evaluation is None or evaluation.data_dir != root or evaluation.class_names != predictor.class_names:
        evaluation = evaluate_model(wrapped, predictor.class_names, size, root, target_accuracy=target_accuracy,
                                    checkpoint=str(checkpoint))
    tmp = _temp_folder(output)
    try:
        norm = ckpt.get("normalization") or {}
        pre = {"image_size": size, "resize": resize_size(size), "draft": draft_size(size), "interpolation": "bilinear",
               "crop": "center", "mean": norm.get("mean"), "std": norm.get("std"), "input": "float32 NCHW, RGB",
               "steps": "open_rgb → resize short side to 'resize' (bilinear) → centre crop 'image_size' → /255 → "
                        "(x - mean) / std"}
        (tmp / FILES["preprocessing"]).write_text(json.dumps(pre, indent=2), encoding="utf-8")
        (tmp / FILES["labels"]).write_text(json.dumps(predictor.class_names, ensure_ascii=False), encoding="utf-8")
        summary = evaluation.summary()
        manifest = {"format": EXPORT_FORMAT, "format_version": EXPORT_FORMAT_VERSION, "tlcourse": __version__,
                    "versions": versions(), "checkpoint": str(Path(checkpoint).resolve()),
                    "data_dir": str(root.resolve()), "arch": ckpt["arch"],
                    "head": ckpt["head"], "weights": ckpt.get("weights"), "epoch": ckpt["epoch"],
                    "temperature": evaluation.temperature, "threshold": evaluation.threshold.value,
                    "score": summary, "files": {}}
        (tmp / FILES["manifest"]).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        export_onnx(wrapped, tmp / FILES["onnx"], size, dynamo=dynamo)
        result = ExportResult(tmp, evaluation)
        clf = OnnxClassifier(tmp)
        arrays, _ = val_arrays(clf, root)
        result.parity["onnx"] = parity(evaluation.val.logits, onnx_logits(clf, arrays))
        if "torchscript" in formats:
            export_torchscript(wrapped, tmp / FILES["torchscript"], size)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # torch.jit's deprecation notice
                scripted = torch.jit.load(str(tmp / FILES["torchscript"]))
                ts = np.concatenate([scripted(torch.from_numpy(arrays[i:i + 32])).numpy()
                                     for i in range(0, len(arrays), 32)])
            result.parity["torchscript"] = parity(evaluation.val.logits, ts)
        if int8:
            train = ImageFolderRGB(root / "train", draft=pre["draft"])
            step = max(1, len(train.samples) // calibration_images)
            calibration = np.stack([clf.load(p) for p, _ in train.samples[::step][:calibration_images]])
            quantize(tmp / FILES["onnx"], tmp / FILES["int8"], calibration, tmp)
            result.parity["int8"] = parity(evaluation.val.logits, onnx_logits(OnnxClassifier(tmp, int8=True), arrays))
            result.table = int8_table(tmp, evaluation, predictor, root)
        manifest["files"] = {k: FILES[k] for k in ("onnx", "int8", "torchscript") if (tmp / FILES[k]).is_file()}
        manifest["parity"] = {k: vars(v) for k, v in result.parity.items()}
        manifest["int8_table"] = result.table
        (tmp / FILES["manifest"]).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        (tmp / FILES["card"]).write_text(model_card(manifest, ckpt, evaluation, root), encoding="utf-8")
        if output.is_dir():
            output.rmdir()  # empty (checked above)
        os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.folder = output
    return result

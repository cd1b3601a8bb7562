"""An honest final score for a checkpoint: val/ chose it, test/ (when there is one) scores it once.

``evaluate_checkpoint`` runs the chosen checkpoint over ``val/`` and ``test/`` and reports, for
the split that gives the final word (test/, or val/ with a warning when there is no test/):
accuracy with a 95 % Wilson interval, recall per class, calibration (ECE before and after a
temperature fitted on val/, with the reliability bins) and the "unknown" threshold chosen on
val/ for a target accuracy, with the share of images it still answers.

(``tlcourse.loops.evaluate`` is the per-epoch loss/accuracy pass of training; this is the
end-of-project report.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import TLCourseError
from .calibration import (
    Bin,
    Threshold,
    accepted_share,
    as_two_columns,
    choose_threshold,
    expected_calibration_error,
    fit_temperature,
    reliability,
    softmax,
    wilson_interval,
)
from .data import ImageFolderRGB, draft_size, eval_transforms, resolve_data_dir

TEST = "test"
NO_TEST = ("no test/ split: these are validation numbers, measured on the images that chose the epoch, "
           "so they flatter the model; put held-out images in test/<class>/ for a final score")


def split_classes(root: Path, split: str) -> list[str]:
    folder = root / split
    return sorted(e.name for e in folder.iterdir() if e.is_dir() and not e.name.startswith("."))


def check_split_classes(root: Path, split: str, class_names: list[str]) -> None:
    """The split must hold exactly the model's classes: labels are indices into the sorted names."""
    found = split_classes(root, split)
    if found != list(class_names):
        extra, missing = sorted(set(found) - set(class_names)), sorted(set(class_names) - set(found))
        parts = ([f"not in the model: {', '.join(extra)}"] if extra else []) + \
                ([f"missing: {', '.join(missing)}"] if missing else [])
        raise TLCourseError(f"{root / split}: class folders differ from the model's classes "
                            f"({', '.join(class_names)}): {'; '.join(parts) or 'another order'}; "
                            f"give {split}/ one folder per class the model was trained on")


@torch.no_grad()
def split_logits(model: torch.nn.Module, root: Path, split: str, image_size: int, *, batch_size: int = 32,
                 device="cpu") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits (two columns for a binary head), labels and file paths of every image of ``root/split``."""
    dataset = ImageFolderRGB(root / split, transform=eval_transforms(image_size), draft=draft_size(image_size))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model.eval()
    chunks, labels = [], []
    for images, targets in loader:
        chunks.append(model(images.to(device)).float().cpu().numpy())
        labels.append(targets.numpy())
    logits = as_two_columns(np.concatenate(chunks)) if chunks else np.zeros((0, 2))
    return logits, np.concatenate(labels), [p for p, _ in dataset.samples]


@dataclass
class SplitScore:
    """One split scored by one model: the numbers of the report."""

    split: str
    labels: np.ndarray
    logits: np.ndarray
    class_names: list[str]
    temperature: float = 1.0

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def correct(self) -> int:
        return int((self.logits.argmax(axis=1) == self.labels).sum())

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    @property
    def recall(self) -> dict[str, float | None]:
        predicted = self.logits.argmax(axis=1)
        out = {}
        for i, name in enumerate(self.class_names):
            mine = self.labels == i
            out[name] = float((predicted[mine] == i).mean()) if mine.any() else None
        return out

    def probs(self, calibrated: bool = True) -> np.ndarray:
        return softmax(self.logits, self.temperature if calibrated else 1.0)

    def ece(self, calibrated: bool) -> float:
        return expected_calibration_error(self.probs(calibrated), self.labels)

    def bins(self, calibrated: bool) -> list[Bin]:
        return reliability(self.probs(calibrated), self.labels)


@dataclass
class Evaluation:
    checkpoint: str
    data_dir: Path
    class_names: list[str]
    val: SplitScore
    test: SplitScore | None
    temperature: float
    threshold: Threshold
    notes: list[str] = field(default_factory=list)

    @property
    def has_test(self) -> bool:
        return self.test is not None

    @property
    def final(self) -> SplitScore:
        """The split that gives the final word: test/ when there is one, else val/ (see ``notes``)."""
        return self.test if self.test is not None else self.val

    def summary(self) -> dict:
        """The numbers as plain values (the model card and ``export.json`` keep these)."""
        f = self.final
        share, acc = accepted_share(f.probs(), f.labels, self.threshold.value)
        return {"split": f.split, "images": f.n, "accuracy": f.accuracy, "interval95_wilson": list(f.interval),
                "recall": f.recall, "ece_before": f.ece(False), "ece_after": f.ece(True),
                "temperature": self.temperature, "threshold": self.threshold.value,
                "threshold_target": self.threshold.target, "accepted_share": share, "accepted_accuracy": acc,
                "has_test": self.has_test, "notes": list(self.notes)}

    def __str__(self) -> str:
        f, s = self.final, self.summary()
        low, high = f.interval
        lines = [f"checkpoint: {self.checkpoint}",
                 f"data: {self.data_dir} (val {self.val.n} images chose the epoch; "
                 + (f"test {self.test.n} images scored once)" if self.test else "no test/ split)"),
                 f"{f.split} accuracy: {f.accuracy:.4f} ({f.correct}/{f.n}), 95 % Wilson interval "
                 f"[{low:.4f}, {high:.4f}]",
                 "recall per class: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}"
                                                  for k, v in f.recall.items()),
                 f"calibration on {f.split}: ECE {s['ece_before']:.4f} before, {s['ece_after']:.4f} after "
                 f"temperature T={self.temperature:.3f} (fitted on val)",
                 f"unknown below p={self.threshold.value:.4f} (chosen on val for {self.threshold.target:.0%} "
                 f"accuracy{'' if self.threshold.reached else ', not reachable: only the most confident image'}): "
                 f"answers {s['accepted_share']:.1%} of {f.split}"
                 + ("" if s["accepted_accuracy"] is None else f" at accuracy {s['accepted_accuracy']:.4f}")]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def evaluate_model(model: torch.nn.Module, class_names: list[str], image_size: int, data_dir=None, *,
                   target_accuracy: float = 0.95, batch_size: int = 32, device="cpu",
                   checkpoint: str = "model") -> Evaluation:
    """Score ``model`` on val/ and, when present, test/ of ``data_dir`` (see the module docstring)."""
    if not 0 < target_accuracy <= 1:
        raise TLCourseError(f"target_accuracy={target_accuracy} must be in (0, 1], e.g. 0.95")
    root = resolve_data_dir(data_dir)
    if not (root / "val").is_dir():
        raise TLCourseError(f"{root} has no val/ folder; pass the data folder the model was trained on (--data-dir)")
    splits = ["val"] + ([TEST] if (root / TEST).is_dir() else [])
    for split in splits:
        check_split_classes(root, split, class_names)
    scores = {}
    for split in splits:
        logits, labels, _ = split_logits(model, root, split, image_size, batch_size=batch_size, device=device)
        scores[split] = SplitScore(split, labels, logits, list(class_names))
    val = scores["val"]
    temperature = fit_temperature(val.logits, val.labels)
    for score in scores.values():
        score.temperature = temperature
    threshold = choose_threshold(val.probs(), val.labels, target_accuracy)
    notes = [] if TEST in scores else [NO_TEST]
    return Evaluation(checkpoint, root, list(class_names), val, scores.get(TEST), temperature, threshold, notes)


def evaluate_checkpoint(checkpoint: str | Path, data_dir=None, *, target_accuracy: float = 0.95,
                        batch_size: int = 32, device="auto") -> Evaluation:
    """``evaluate_model`` for a saved checkpoint; ``data_dir`` defaults to the folder it was trained on."""
    from .checkpoints import load_checkpoint
    from .predict import Predictor

    ckpt = load_checkpoint(checkpoint)
    predictor = Predictor(ckpt, device=device)
    if data_dir is None:
        data_dir = (ckpt.get("config") or {}).get("data_dir")
    return evaluate_model(predictor.model, predictor.class_names, predictor.image_size, data_dir,
                          target_accuracy=target_accuracy, batch_size=batch_size, device=predictor.device,
                          checkpoint=str(checkpoint))

"""A run's history: one row per epoch, the best epochs, the files and the printed line.

Kept apart from the training loops so that comparisons and plots can read histories without
importing the engine.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .files import atomic_write, write_json

HISTORY_JSON, HISTORY_CSV = "history.json", "history.csv"
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def route_of(record: dict, default: str = "plain") -> str:
    """The training route a history row, ``args.json`` or a checkpoint's config records.

    Runs written before the rename call it ``path`` (history rows) or ``fast_path`` (args, checkpoints).
    """
    for key in ("route", "fast_path", "path"):
        if isinstance(record.get(key), str):
            return record[key]
    return default


def upgrade_rows(history: list[dict]) -> list[dict]:
    """History rows of an older run with the route under its current name (``route``, was ``path``)."""
    return [{("route" if key == "path" else key): value for key, value in row.items()} for row in history]


def best_from_history(history: list[dict]) -> dict:
    """Best validation accuracy and loss and their epochs (the first epoch wins a tie)."""
    if not history:
        return {"acc": None, "acc_epoch": None, "loss": None, "loss_epoch": None}
    by_acc = max(history, key=lambda r: (r["val_acc"], -r["epoch"]))
    by_loss = min(history, key=lambda r: (r["val_loss"], r["epoch"]))
    return {"acc": by_acc["val_acc"], "acc_epoch": by_acc["epoch"],
            "loss": by_loss["val_loss"], "loss_epoch": by_loss["epoch"]}


def write_history(history: list[dict], run_dir: Path) -> None:
    """``history.json`` and ``history.csv`` side by side, both written atomically."""
    write_json(history, Path(run_dir) / HISTORY_JSON)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(Path(run_dir) / HISTORY_CSV, lambda fh: fh.write(buffer.getvalue().encode()))


def format_epoch(row: dict, epochs: int, marks: str = "") -> str:
    return (f"EPOCH {row['epoch']}/{epochs}  train_loss={row['train_loss']:.4f} train_acc={row['train_acc']:.4f}  "
            f"val_loss={row['val_loss']:.4f} val_acc={row['val_acc']:.4f}  lr={row['lr']:.3g}  "
            f"time={row['seconds']:.1f}s{marks}")

"""How many images per split and class: the headcount a learner checks before training (no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .checks import OPTIONAL_SPLITS, SPLITS, DatasetCheck, check_split
from .download import resolve_data_dir


@dataclass
class DatasetSummary:
    """Images per split and class: the headcount a learner checks before training."""

    root: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        names: list[str] = []
        for per_class in self.counts.values():
            names.extend(c for c in per_class if c not in names)
        return names

    def total(self, split: str | None = None) -> int:
        splits = [split] if split else list(self.counts)
        return sum(sum(self.counts[s].values()) for s in splits)

    def rows(self) -> list[tuple[str, str, int]]:
        return [(s, c, n) for s, per in self.counts.items() for c, n in per.items()]

    def __str__(self) -> str:
        lines = [f"{'split':<6} {'class':<16} {'images':>6}"]
        for split, per in self.counts.items():
            for cls, n in per.items():
                lines.append(f"{split:<6} {cls:<16} {n:>6}")
            lines.append(f"{split:<6} {'(total)':<16} {self.total(split):>6}")
        lines.append(f"classes: {', '.join(self.class_names)}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        body = "".join(f"<tr><td>{s}</td><td>{c}</td><td style='text-align:right'>{n}</td></tr>"
                       for s, c, n in self.rows())
        return (f"<table><thead><tr><th>split</th><th>class</th><th>images</th></tr></thead>"
                f"<tbody>{body}</tbody></table><p>classes: {', '.join(self.class_names)}</p>")


def summarize(data_dir: str | Path | None = None,
              splits: Sequence[str] = (*SPLITS, *OPTIONAL_SPLITS)) -> DatasetSummary:
    """Count images per split and class folder, exactly as the loaders and ``check_dataset`` see them.

    ``test/`` is counted when the folder has one (it is optional; see ``tlcourse.evaluation``).
    """
    root = resolve_data_dir(data_dir)
    walk = DatasetCheck(root)  # only its counts are used: problems are check_dataset's business
    for split in splits:
        if (root / split).is_dir():
            check_split(root, split, walk)
    return DatasetSummary(root, walk.counts)

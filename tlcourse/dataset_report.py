"""What :func:`tlcourse.checks.check_dataset` returns: a list of problems, counts, and one-line errors.

Kept apart from the folder walk so that the report's shape (severities, the summary line, the
one-line ``TLCourseError``) reads in one place; ``data`` and ``interpret`` fill and raise it too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import TLCourseError

SEVERITIES = ("error", "warning", "info")


def printable(text: str) -> str:
    """``text`` safe for any terminal: bytes of a file name that is not UTF-8 shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Problem:
    """One finding: ``path`` is relative to the data folder (``.`` is the folder itself)."""

    severity: str
    path: str
    message: str

    def __str__(self) -> str:
        return printable(f"{self.severity:<7} {self.path}: {self.message}")


@dataclass
class DatasetCheck:
    """The result of :func:`check_dataset`: problems, image counts and what was converted."""

    data_dir: Path
    problems: list[Problem] = field(default_factory=list)
    #: Image files per split and class folder, as ``ImageFolderRGB`` will list them.
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Relative paths of image files that cannot be loaded (what ``bad_images="skip"`` drops).
    bad_files: list[str] = field(default_factory=list)
    #: Source PIL modes of the images that were opened (``RGB``, ``L``, ``P``, ``CMYK``...).
    modes: Counter = field(default_factory=Counter)
    exif_rotated: int = 0
    images_verified: int = 0
    seconds: float = 0.0

    def add(self, severity: str, path: str, message: str) -> None:
        self.problems.append(Problem(severity, path, message))

    def _of(self, severity: str) -> list[Problem]:
        return [p for p in self.problems if p.severity == severity]

    @property
    def errors(self) -> list[Problem]:
        return self._of("error")

    @property
    def warnings(self) -> list[Problem]:
        return self._of("warning")

    @property
    def infos(self) -> list[Problem]:
        return self._of("info")

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def class_names(self) -> list[str]:
        return sorted({c for per in self.counts.values() for c in per})

    def summary(self) -> str:
        splits = ", ".join(f"{s} {sum(per.values())}" for s, per in self.counts.items())
        total = sum(sum(per.values()) for per in self.counts.values())
        line = (f"{self.data_dir}: {total} images ({splits or 'no splits'}), "
                f"{len(self.class_names)} classes ({', '.join(self.class_names) or '-'}); "
                f"{len(self.errors)} errors, {len(self.warnings)} warnings, {len(self.infos)} info")
        if self.images_verified:
            line += f"; opened {self.images_verified} images in {self.seconds:.2f} s"
        return line

    def __str__(self) -> str:
        ordered = sorted(self.problems, key=lambda p: SEVERITIES.index(p.severity))
        lines = [str(p) if p.path != "." else printable(f"{p.severity:<7} {self.data_dir}: {p.message}")
                 for p in ordered]
        converted = {m: n for m, n in self.modes.items() if m != "RGB"}
        if converted or self.exif_rotated:
            parts = [f"{m} {n}" for m, n in sorted(converted.items())]
            if self.exif_rotated:
                parts.append(f"EXIF-rotated {self.exif_rotated}")
            lines.append(f"converted to RGB on load (fine): {', '.join(parts)}")
        lines.append(printable(self.summary()))
        return "\n".join(lines)

    def raise_if_errors(self, hint: str = "", *, include_bad_images: bool = True) -> None:
        """Raise a one-line ``TLCourseError`` naming the first error and how many more there are.

        ``include_bad_images=False`` raises only for structural errors (used when bad images are
        to be skipped).
        """
        errors = [p for p in self.errors if include_bad_images or p.path not in self.bad_files]
        if not errors:
            return
        first = errors[0]
        more = f" (and {len(errors) - 1} more; `python -m tlcourse data --check {self.data_dir}` lists them)" \
            if len(errors) > 1 else ""
        raise TLCourseError(f"{self.data_dir / first.path if first.path != '.' else self.data_dir}: "
                            f"{first.message}{more}{hint}")

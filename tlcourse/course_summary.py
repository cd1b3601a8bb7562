"""The course run's summary as a file: ``course-summary.json`` beside the executed notebooks.

``python -m tlcourse course`` prints a table of notebook, status, time, weights and key result;
this module keeps the same rows (plus when each notebook ran, its parameters and whether it was a
smoke run) so that tools reading the executed course, such as ``python -m tlcourse site``, show
what the run computed instead of text typed by hand. A ``--only`` run replaces its own rows and
keeps the others. The file is written atomically.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from . import TLCourseError
from .files import write_json

SUMMARY_NAME = "course-summary.json"
FORMAT = 1


def now() -> str:
    """The time a notebook finished, as the summary stores it (UTC, to the second)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def summary_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / SUMMARY_NAME


def row(result, *, smoke: bool) -> dict:
    """One notebook's row: the summary table's columns and what a reader needs to trust them."""
    output = Path(result.output) if result.output else None
    return {
        "notebook": result.name,
        "file": output.name if output else f"{result.name}.ipynb",
        "status": result.status,
        "seconds": round(result.seconds, 1),
        "weights": result.weights,
        "key_result": result.key_result,
        "error": result.error,
        "finished": getattr(result, "finished", "") or now(),
        "smoke": smoke,
        "parameters": result.parameters,
    }


def load_summary(output_dir: str | Path) -> dict:
    """The summary of ``output_dir`` (``{"notebooks": []}`` when there is none yet)."""
    path = summary_path(output_dir)
    if not path.exists():
        return {"format": FORMAT, "notebooks": []}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data["notebooks"]
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "notebook" in r for r in rows):
            raise ValueError("'notebooks' is not a list of rows")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TLCourseError(f"{path} is not a course summary ({exc}); delete it and run "
                            "`python -m tlcourse course` again") from exc
    return data


def save_summary(results, output_dir: str | Path, *, smoke: bool) -> Path:
    """Merge this run's rows into the folder's summary (rows of notebooks not run are kept)."""
    try:
        rows = {r["notebook"]: r for r in load_summary(output_dir)["notebooks"]}
    except TLCourseError:  # an unreadable old summary is replaced, not merged
        rows = {}
    rows.update({r.name: row(r, smoke=smoke) for r in results})
    data = {"format": FORMAT, "updated": now(), "notebooks": [rows[name] for name in sorted(rows)]}
    return write_json(data, summary_path(output_dir))

"""The learner's version and the instructor's autograder, made by nbgrader from the course notebooks.

The committed notebooks are nbgrader *source* notebooks: each exercise's answer cell holds the
solution between ``### BEGIN SOLUTION`` and ``### END SOLUTION``, each check cell is an
autograded test cell (1 point), and the questionnaire's answers are a solution cell too. This
module only lays out nbgrader's course folder and calls nbgrader's own commands:

* ``release``: ``nbgrader generate_assignment`` writes ``<out>/release/tlcourse/`` (solutions and
  answers removed, checks kept) and the gradebook ``<out>/gradebook.db``;
* ``autograde``: ``nbgrader autograde`` runs every submission in ``<out>/submitted/<student>/tlcourse/``
  and the scores are read back from the gradebook.

The code stub is a comment, so an untouched answer cell leaves its ``name = None`` lines and the
check says "not attempted": the learner's notebooks run to the end.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from .. import TLCourseError

ASSIGNMENT = "tlcourse"
CODE_STUB = "# YOUR CODE HERE: replace the None above, then run the check below"
TEXT_STUB = "YOUR ANSWERS HERE"

CONFIG = f'''# nbgrader configuration written by `python -m tlcourse release` (see README, "Grading").
c = get_config()  # noqa: F821
c.CourseDirectory.course_id = "tlcourse"
c.CourseDirectory.root = {{root!r}}
# The stub is a comment: the "name = None" lines above a solution stay, so untouched exercises run.
c.ClearSolutions.code_stub = {{{{"python": {CODE_STUB!r}}}}}
c.ClearSolutions.text_stub = {TEXT_STUB!r}
# Keep the stored outputs of "# NBVAL_CHECK_OUTPUT" cells: nbval compares them in the learner's version too.
c.ClearOutput.enabled = False
# Notebooks train (briefly in smoke mode): nbgrader's 30 s per cell is too short.
c.Execute.timeout = 1800
'''


def learner_notebook(nb):
    """One notebook as the release hands it out (nbgrader's ClearSolutions with our stubs), in memory."""
    import json

    import nbformat
    from nbgrader.preprocessors import ClearSolutions

    node = nbformat.reads(json.dumps(nb), as_version=4)
    node, _ = ClearSolutions(code_stub={"python": CODE_STUB}, text_stub=TEXT_STUB).preprocess(node, {})
    return node


def course_notebooks(only: list[str] | None = None) -> list[Path]:
    from ..course import find_notebooks

    return find_notebooks(None, only or None)


def nbgrader(root: Path, *args: str) -> None:
    """Run ``nbgrader <args>`` in ``root`` with this interpreter; a failure is one error line."""
    if importlib.util.find_spec("nbgrader") is None:
        raise TLCourseError("nbgrader is not installed: pip install 'tlcourse[grading]' (make student installs it)")
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={root}"]
    # nbgrader runs the `alembic` script of its environment when it creates the gradebook.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        errors = [line for line in (done.stderr + done.stdout).splitlines() if "ERROR" in line or "Error" in line]
        raise TLCourseError(f"nbgrader {args[0]} failed in {root}: {(errors or ['see its log'])[-1].strip()}")


def release(out: str | Path, only: list[str] | None = None) -> Path:
    """Write nbgrader's course folder under ``out``; returns the learner's folder (``release/tlcourse``)."""
    root = Path(out).resolve()
    source = root / "source" / ASSIGNMENT
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    for path in course_notebooks(only):
        shutil.copy2(path, source / path.name)
    (root / "nbgrader_config.py").write_text(CONFIG.format(root=str(root)))
    nbgrader(root, "generate_assignment", ASSIGNMENT, "--force")
    return root / "release" / ASSIGNMENT


def autograde(out: str | Path) -> dict[str, dict[str, tuple[float, float]]]:
    """Autograde every submission under ``out/submitted``; ``{student: {notebook: (score, max)}}``."""
    from nbgrader.api import Gradebook

    root = Path(out).resolve()
    if not (root / "gradebook.db").exists():
        raise TLCourseError(f"{root} has no gradebook.db: run `python -m tlcourse release --output {root}` first")
    students = sorted(p.name for p in (root / "submitted").glob("*") if (p / ASSIGNMENT).is_dir())
    if not students:
        raise TLCourseError(f"no submissions: put each learner's notebooks in {root}/submitted/<student>/{ASSIGNMENT}/")
    nbgrader(root, "autograde", ASSIGNMENT, "--force")
    scores: dict[str, dict[str, tuple[float, float]]] = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", course_id="tlcourse") as gb:
        for student in students:
            submission = gb.find_submission(ASSIGNMENT, student)
            scores[student] = {nb.name: (nb.score, nb.max_score) for nb in submission.notebooks}
    return scores


def score_table(scores: dict[str, dict[str, tuple[float, float]]]) -> str:
    names = sorted({nb for per in scores.values() for nb in per})
    width = max(len(n) for n in names)
    lines = [f"{'notebook':<{width}}  " + "  ".join(f"{s:>10}" for s in scores)]
    for name in names:
        cells = [f"{per[name][0]:>4g}/{per[name][1]:<5g}" if name in per else f"{'-':>10}" for per in scores.values()]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    totals = {s: (sum(v[0] for v in per.values()), sum(v[1] for v in per.values())) for s, per in scores.items()}
    lines.append(f"{'total':<{width}}  " + "  ".join(
        f"{100 * a / b if b else 0:>9.0f}%" for a, b in totals.values()))
    return "\n".join(lines)

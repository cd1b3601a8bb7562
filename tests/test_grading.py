"""The instructor's side: `python -m tlcourse release` (nbgrader generate_assignment) and `grade`
(nbgrader autograde) on the real course notebooks.

* the learner's version holds no solution line and no questionnaire answer;
* autograding one fully solved and one untouched submission per notebook gives 100 % and 0 %,
  and the untouched one runs to the end (only its check cells fail, as nbgrader test cells do);
* the learner's version runs headless through the course runner too (papermill, smoke mode).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tlcourse.course import find_notebooks
from tlcourse.exercises.release import ASSIGNMENT, autograde, release, score_table

pytestmark = pytest.mark.notebooks

# Notebooks 01-08 end with "Your turn"; 09 (Ship your model) came later, is handed out as a lesson, no points.
EXERCISED = [p for p in find_notebooks() if p.name[:2] <= "08"]
TAG = "exercise"


def split_solutions(nb: dict) -> tuple[list[str], str]:
    """(every non-empty line between ### BEGIN SOLUTION and ### END SOLUTION, the text outside them)."""
    inside_lines, outside = [], []
    for cell in nb["cells"]:
        inside = False
        for line in "".join(cell["source"]).splitlines():
            if re.match(r"\s*#+\s*BEGIN SOLUTION", line):
                inside = True
            elif re.match(r"\s*#+\s*END SOLUTION", line):
                inside = False
            elif inside:
                inside_lines += [line.strip()] if line.strip() else []
            else:
                outside.append(line)
    return inside_lines, "\n".join(outside)


def cell_text(nb: dict, exercise_only: bool) -> str:
    return "\n".join("".join(c["source"]) for c in nb["cells"]
                     if not exercise_only or TAG in c["metadata"].get("tags", []))


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grading")
    learner = release(root)
    assert sorted(p.name for p in learner.glob("*.ipynb")) == [p.name for p in find_notebooks()]
    return root


def test_release_holds_no_solution_line(course):
    learner = course / "release" / ASSIGNMENT
    for source in EXERCISED:
        nb = json.loads(source.read_text())
        lines, visible = split_solutions(nb)
        # a line the learner may see anyway ("import torch", a prompt's `optimizer.zero_grad()`) proves nothing
        secret = [line for line in lines if line not in visible]
        assert len(secret) >= 10, source.name  # code of both exercises and the questionnaire's answers
        released = json.loads((learner / source.name).read_text())
        whole = cell_text(released, exercise_only=False)
        for line in secret:
            assert line not in whole, f"{source.name}: solution line in the learner's version: {line!r}"
        assert "BEGIN SOLUTION" not in whole and "YOUR ANSWERS HERE" in whole
        lesson = [c for c in nb["cells"] if TAG not in c["metadata"].get("tags", [])]
        # the lesson itself is handed out unchanged
        assert [c["source"] for c in released["cells"][:len(lesson)]] == [c["source"] for c in lesson]


def test_autograde_solved_and_untouched(course, hymenoptera_dir, monkeypatch):
    monkeypatch.setenv("TLCOURSE_SMOKE", "1")
    monkeypatch.setenv("TLCOURSE_WEIGHTS", "none")
    for student, folder in (("solved", course / "source" / ASSIGNMENT), ("untouched", course / "release" / ASSIGNMENT)):
        shutil.copytree(folder, course / "submitted" / student / ASSIGNMENT)
    scores = autograde(course)
    print(score_table(scores))
    notebooks = {p.stem for p in EXERCISED}
    assert notebooks <= set(scores["solved"]) and notebooks <= set(scores["untouched"])
    for name in notebooks:
        score, top = scores["solved"][name]
        assert top >= 2 and score == top, (name, scores["solved"][name])
        assert scores["untouched"][name][0] == 0, (name, scores["untouched"][name])
    for student in ("solved", "untouched"):  # every cell ran; only the untouched checks failed
        for path in sorted((course / "autograded" / student / ASSIGNMENT).glob("*.ipynb")):
            nb = json.loads(path.read_text())
            for cell in nb["cells"]:
                if cell["cell_type"] != "code":
                    continue
                errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
                is_check = cell["metadata"].get("nbgrader", {}).get("grade", False)
                if student == "untouched" and is_check:
                    assert errors and "not attempted" in errors[0]["evalue"], (path.name, cell["source"])
                else:
                    assert not errors, (student, path.name, cell["source"][:200], errors[:1])


def test_learner_version_runs_in_the_course_runner(course, hymenoptera_dir, tmp_path):
    from tlcourse.course import run_course

    results = run_course(folder=course / "release" / ASSIGNMENT, output=tmp_path, smoke=True, only=["03"])
    assert [r.status for r in results] == ["ok"], [(r.name, r.status, getattr(r, "error", "")) for r in results]
    executed = json.loads(next(tmp_path.glob("03_*.ipynb")).read_text())
    outputs = [json.dumps(c.get("outputs", [])) for c in executed["cells"] if TAG in c["metadata"].get("tags", [])]
    assert sum("not attempted" in o for o in outputs) == 2


def test_learner_version_passes_nbval(course, tmp_path):
    """nbval compares the stored structure outputs of the learner's 01 and 02 (kept by the release)."""
    import os
    import subprocess
    import sys

    learner = sorted((course / "release" / ASSIGNMENT).glob("0[12]_*.ipynb"))
    assert len(learner) == 2
    env = {**os.environ, "TLCOURSE_WEIGHTS": "none", "TLCOURSE_SMOKE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           "--rootdir", str(tmp_path), *map(str, learner)]
    proc = subprocess.run(cmd, cwd=learner[0].parent, env=env, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "NBVAL_CHECK_OUTPUT" in (learner[0]).read_text()

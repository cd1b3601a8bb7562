"""The "Your turn" exercises of notebooks 01-08 and their checks (tlcourse.exercises).

The exercise cells run in this process, on a generated 3-class folder in smoke mode: every
solution (as committed) gets ✓, and every answer cell as the learner receives it (nbgrader's
ClearSolutions with the release's stub) gets "not attempted", without a traceback.
Wrong answers: tests/test_exercise_hints.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_image_folder

from tlcourse.course import find_notebooks
from tlcourse.exercises import Verdict
from tlcourse.exercises.release import learner_notebook

# Notebooks 01-08 end with "Your turn"; 09 (Ship your model) came later and has no exercises yet.
NOTEBOOKS = [p for p in find_notebooks() if p.name[:2] <= "08"]
TAG = "exercise"


def parameters_source(nb: dict) -> str:
    return next("".join(c["source"]) for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))


def run_exercises(nb: dict, data_dir: Path, monkeypatch) -> dict[str, Verdict]:
    """Execute the parameters cell, then the exercise cells; ``{grade_id: verdict}`` of the check cells."""
    monkeypatch.setenv("TLCOURSE_SMOKE", "1")
    monkeypatch.setenv("TLCOURSE_WEIGHTS", "none")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    ns: dict = {}
    exec(parameters_source(nb), ns)
    if "data_dir" in ns:
        ns["data_dir"] = str(data_dir)
    verdicts = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or TAG not in cell["metadata"].get("tags", []):
            continue
        source = "".join(cell["source"])
        grading = cell["metadata"].get("nbgrader", {})
        if grading.get("grade"):
            verdicts[grading["grade_id"]] = eval(source, ns)  # one line: check.x(...)
        else:
            exec(source, ns)
    return verdicts


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("ex"), classes=("oak", "maple", "birch"),
                             per_class={"train": 6, "val": 4}, size=(48, 36))


def test_every_notebook_has_checked_exercises_and_a_questionnaire():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        cells = [c for c in nb["cells"] if TAG in c["metadata"].get("tags", [])]
        checks = [c for c in cells if c["metadata"].get("nbgrader", {}).get("grade") and c["cell_type"] == "code"]
        assert len(checks) >= 2, path.name
        for c in checks:  # one line that calls a check
            assert len("".join(c["source"]).strip().splitlines()) == 1
            assert "".join(c["source"]).startswith("check.")
        questions = next(c for c in cells if "".join(c["source"]).startswith("### Questionnaire"))
        n = sum(1 for line in questions["source"] if line[:1].isdigit())
        assert 5 <= n <= 8, (path.name, n)
        # appended only: every exercise cell comes after every lesson cell
        tagged = [TAG in c["metadata"].get("tags", []) for c in nb["cells"]]
        assert tagged == sorted(tagged), f"{path.name}: exercise cells must be the notebook's last cells"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_solutions_pass_and_untouched_says_not_attempted(path, three_classes, monkeypatch, capsys):
    nb = json.loads(path.read_text())
    solved = run_exercises(nb, three_classes, monkeypatch)
    assert solved and all(v.ok for v in solved.values()), {k: v.line for k, v in solved.items()}
    untouched = run_exercises(learner_notebook(nb), three_classes, monkeypatch)
    assert set(untouched) == set(solved)
    assert all(v.status == "not attempted" for v in untouched.values()), {k: v.line for k, v in untouched.items()}
    assert "Traceback" not in capsys.readouterr().out


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.name[:2] in ("03", "04", "05", "08")],
                         ids=lambda p: p.name[:2])
def test_solutions_pass_on_mobilenet(path, three_classes, monkeypatch):
    """Offline, 03-08 run MobileNetV2: the exercises take their names from tlcourse.archs, not ResNet's."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if "parameters" in cell["metadata"].get("tags", []):
            cell["source"] = "".join(cell["source"]) + '\narch = "mobilenet_v2"\n'
    solved = run_exercises(nb, three_classes, monkeypatch)
    assert solved and all(v.ok for v in solved.values()), {k: v.line for k, v in solved.items()}
    assert any("features." in v.message for v in solved.values()) or path.name[:2] in ("03", "05")


def test_an_answer_of_the_wrong_type_is_a_hint_not_a_traceback():
    from tlcourse.exercises import nb01, nb07

    assert nb01.mlp_head("a head", 5).status == "not yet"
    assert nb01.mlp_head(__import__("torch").nn.Sequential(), "many").status == "not yet"
    assert nb07.class_counts(lambda d: {"train": 3, "val": 4}).status == "not yet"

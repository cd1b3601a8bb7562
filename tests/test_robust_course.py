"""The course runner refuses, before running anything, what would damage or silently ignore input
(issue 11): an output folder that holds the source notebooks, and a ``-p`` name no notebook has.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tlcourse import TLCourseError
from tlcourse.cli import main
from tlcourse.course import run_course

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sources(tmp_path) -> Path:
    """A copy of the first course notebook: the runner may be pointed at it without risk."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(sorted((ROOT / "notebooks").glob("01_*.ipynb"))[0], folder)
    return folder


def test_output_folder_holding_the_sources_is_refused(sources):
    before = {p.name: p.read_bytes() for p in sources.iterdir()}
    for output in (sources, sources / ".." / sources.name):
        with pytest.raises(TLCourseError, match=r"is the folder of the source notebooks: the executed copies "
                                                r"\(injected parameters, outputs\) would overwrite them"):
            run_course(folder=sources, output=output, smoke=True, echo=lambda line: None)
    assert {p.name: p.read_bytes() for p in sources.iterdir()} == before


def test_parameter_no_notebook_declares_is_refused(sources):
    with pytest.raises(TLCourseError, match=r"^-p epochz, wieghts: no selected notebook has such a parameter "
                                            r"\(they have: .*weights.*\); check the spelling$"):
        run_course(folder=sources, output=sources / "executed", overrides={"epochz": 3, "wieghts": None,
                                                                            "weights": None},
                   echo=lambda line: None)
    assert not (sources / "executed").exists()  # nothing ran


def test_parameter_typo_on_the_command_line_is_one_line(capsys):
    assert main(["course", "--only", "01", "-p", "wieghts", "None"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: -p wieghts: no selected notebook has such a parameter")

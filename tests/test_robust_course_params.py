"""Round three, case 3: ``course -p`` values reach a notebook as literals only, never as pasted code."""

from __future__ import annotations

import pytest

from tlcourse import TLCourseError
from tlcourse.cli import main
from tlcourse.course import check_parameter_values, parameter_problem, parse_value

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _payload(marker) -> str:
    return f'str(open("{marker}", "w").write("ran"))'


def _crafted(marker) -> list[str]:
    code = _payload(marker)
    return [
        f"('\"+{code}+\"',)",                         # a tuple: papermill pasted its str() between quotes
        f"{{'\"+{code}+\"'}}",                        # a set
        f"b'\"+{code}+\"'",                           # bytes
        "1+2j",                                       # complex
        f"[('\"+{code}+\"',)]",                       # a tuple inside a list
        f"{{1: '\"+{code}+\"'}}",                     # a dict with a non-text key
    ]


def _accepted(marker) -> list[str]:
    code = _payload(marker)
    return [f'"+{code}+"', f"'\\\"+{code}+\\\"'", f'["\\"+{code}+\\"", 1, None]', f'{{"k": "\\\\\\"+{code}"}}',
            f"{code}", "\\", '"', "a\nb\"\\'", "nan", "1e-3", "True", "[1, [2, {'a': None}]]"]


def test_crafted_values_are_refused_with_one_line_naming_the_parameter(tmp_path, capsys):
    marker = tmp_path / "ran"
    for text in _crafted(marker):
        value = parse_value(text)
        assert parameter_problem(value), text
        assert main(["course", "-p", "lr", text]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "-p lr: the value is a" in err, err
    assert not marker.exists()


def test_accepted_values_reach_the_kernel_as_the_same_literal_and_run_nothing(tmp_path):
    """What papermill injects for every accepted value is executed here as the kernel would run it."""
    from papermill.translators import translate_parameters  # what papermill's injected cell holds

    marker = tmp_path / "ran"
    for text in _accepted(marker):
        value = parse_value(text)
        check_parameter_values({"value": value})
        source = translate_parameters("python3", "python", {"value": value}, "Parameters")
        scope: dict = {}
        exec(compile(source, "<injected>", "exec"), scope)   # noqa: S102 - the very code the kernel runs
        same = scope["value"] == value or (value != value and scope["value"] != scope["value"])   # nan
        assert same, (text, source)
    assert not marker.exists()


def test_the_api_refuses_the_same_values(tmp_path):
    with pytest.raises(TLCourseError, match=r"-p arch: the value is a tuple"):
        check_parameter_values({"arch": ("a", "b")})


def test_without_the_check_papermill_would_have_run_the_crafted_tuple(tmp_path):
    """The hole the check closes is real: papermill's fallback pastes a tuple's text between quotes."""
    from papermill.translators import translate_parameters

    marker = tmp_path / "ran"
    source = translate_parameters("python3", "python", {"value": parse_value(_crafted(marker)[0])}, "Parameters")
    exec(compile(source, "<injected>", "exec"), {})   # noqa: S102
    assert marker.read_text() == "ran"

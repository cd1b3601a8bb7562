"""Notebook parameters are data: what ``course -p NAME VALUE`` may pass to a notebook.

papermill writes str/int/float/bool/None, lists and str-keyed dicts as escaped literals;
anything else (tuple, set, bytes, complex, ...) it pastes as text between quotes without
escaping, which would let a crafted value run code in the kernel. So those are refused.
"""

from __future__ import annotations

from . import TLCourseError

__all__ = ["check_parameter_values", "parameter_problem"]


def parameter_problem(value, depth: int = 0) -> str | None:
    """Why ``value`` cannot be a notebook parameter (None if it can)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    if depth > 16:
        return "is nested too deeply"
    if isinstance(value, list):
        return next((p for p in (parameter_problem(v, depth + 1) for v in value) if p), None)
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return "is a dict with non-text keys"
        return next((p for p in (parameter_problem(v, depth + 1) for v in value.values()) if p), None)
    return f"is a {type(value).__name__}"


def check_parameter_values(overrides: dict) -> None:
    """One-line ``TLCourseError`` for a ``-p`` value that is not a plain literal (see :func:`parameter_problem`)."""
    for name, value in overrides.items():
        problem = parameter_problem(value)
        if problem:
            raise TLCourseError(f"-p {name}: the value {problem}; a parameter must be a number, True/False, None, "
                                "text, or a list/dict of those (quote it to pass it as text)")

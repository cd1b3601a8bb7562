"""Self-checks for the "Your turn" exercises at the end of notebooks 01-08 (one module per notebook).

A notebook calls one check per exercise in one line (``check.layer3_count(layer3_params)``). The
check answers with a :class:`Verdict`, shown as the cell's output:

* ``✓ <why it is right>``;
* ``not yet: <a hint computed from what the learner built>`` (never the answer itself);
* ``not attempted: ...`` while the answer is still ``None`` (the stub of the learner's version),
  so an untouched notebook still runs to the end.

Under nbgrader (``NBGRADER_EXECUTION`` is set by ``nbgrader autograde`` and ``validate``) a check
that is not ✓ raises ``AssertionError`` instead, which is how nbgrader scores a test cell.
Inside a check, ``NotYet(hint)`` stops at the first problem; an exception raised by the learner's
own code becomes a hint naming it, never a traceback.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

__all__ = ["NotAttempted", "NotYet", "Verdict", "check", "require", "run_learner"]

MARKS = {"ok": "✓", "not yet": "not yet:", "not attempted": "not attempted:"}


@dataclass(frozen=True)
class Verdict:
    status: str  # "ok", "not yet" or "not attempted"
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def line(self) -> str:
        return f"{MARKS[self.status]} {self.message}"

    def __repr__(self) -> str:  # what the notebook shows for ``check.x(...)``
        return self.line

    __str__ = __repr__


class NotYet(Exception):
    """Raised inside a check with the hint for the first problem found."""


class NotAttempted(Exception):
    """Raised inside a check when the answer is still the stub's ``None``."""


def check(fn):
    """Turn ``fn`` (returns the ✓ sentence, raises NotYet/NotAttempted) into a one-line exercise check."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            verdict = Verdict("ok", fn(*args, **kwargs))
        except NotAttempted as exc:
            verdict = Verdict("not attempted", str(exc) or "replace None with your answer, then run this cell again")
        except NotYet as exc:
            verdict = Verdict("not yet", str(exc))
        except Exception as exc:  # an answer of an unexpected type or shape: a hint, never a traceback
            text = " ".join(str(exc).split())[:160]
            verdict = Verdict("not yet", f"the check could not use your answer ({type(exc).__name__}: {text}); "
                                         "compare its type and shape with what the task asks for")
        if os.environ.get("NBGRADER_EXECUTION") and not verdict.ok:
            raise AssertionError(verdict.line)
        return verdict

    return wrapper


def require(**answers) -> None:
    """NotAttempted when every answer is None; NotYet naming the first one still None otherwise."""
    missing = [name for name, value in answers.items() if value is None]
    if len(missing) == len(answers):
        raise NotAttempted(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} still None; "
                           "write your answer in the cell above and run both cells")
    if missing:
        raise NotYet(f"{missing[0]} is still None; set it too")


def run_learner(fn, *args, what: str | None = None, **kwargs):
    """Call the learner's function; an exception becomes a one-line hint instead of a traceback."""
    name = what or getattr(fn, "__name__", "your code")
    if not callable(fn):
        raise NotYet(f"{name} must be a function (def {name}(...): ...), got {type(fn).__name__}")
    try:
        return fn(*args, **kwargs)
    except (NotYet, NotAttempted):
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())[:200]
        raise NotYet(f"{name} raised {type(exc).__name__}: {text}") from None

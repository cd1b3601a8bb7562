"""Text from files (class names, cache descriptions) made safe to show.

Class names come from folder names or from a checkpoint someone else wrote: they may hold
terminal escape sequences (which could recolour, hide or rewrite what a learner reads) or a
``$`` that matplotlib would parse as mathtext (and fail on). Shown text goes through here.
"""

from __future__ import annotations

__all__ = ["plot_label", "printable", "printable_lines"]


def printable(text: object) -> str:
    """``text`` with control characters (ESC, CR, BEL, ...) shown as ``\\x1b``-style escapes."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def printable_lines(text: object) -> str:
    """:func:`printable` for each line of a multi-line text (the line breaks stay)."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


def plot_label(text: object) -> str:
    """A printable label matplotlib shows literally: ``$`` is escaped so it is never mathtext."""
    return printable(text).replace("$", r"\$")

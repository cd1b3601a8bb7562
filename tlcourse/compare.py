"""Compare training strategies (head only, last stage, everything) run by ``engine.train``.

``compare_runs({"head": r1, "last_stage": r2, "all": r3})`` returns a table value: ``str()``
of it is plain text and Jupyter renders it as HTML, like the trainable-layer report. Every
number comes from the runs themselves (their histories and models), so a notebook's comparison
can never drift from what was actually trained.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass

from .history import best_from_history
from .models import count_parameters


@dataclass(frozen=True)
class StrategyRow:
    name: str
    best_acc: float
    best_epoch: int
    final_acc: float
    trainable: int
    total: int
    seconds: float          # RunResult.seconds: the epochs plus any one-time caching
    route: str = "plain"    # which training route ran (RunResult.route)

    @property
    def percent_trainable(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


HEADERS = ("strategy", "best val_acc", "at epoch", "final val_acc", "trainable params", "time", "route")


def _cells(row: StrategyRow) -> tuple[str, ...]:
    return (row.name, f"{row.best_acc:.4f}", str(row.best_epoch), f"{row.final_acc:.4f}",
            f"{row.trainable:,} ({row.percent_trainable:.1f}%)", f"{row.seconds:.1f}s", row.route)


@dataclass(frozen=True)
class StrategyTable:
    rows: tuple[StrategyRow, ...]

    def row(self, name: str) -> StrategyRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no strategy {name!r}; have {', '.join(r.name for r in self.rows)}")

    def best(self) -> StrategyRow:
        """The strategy with the highest best val accuracy (the earlier row wins a tie)."""
        return max(self.rows, key=lambda r: r.best_acc)

    def to_text(self) -> str:
        table = [HEADERS, *(_cells(r) for r in self.rows)]
        widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
        return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
                         for line in table)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        ths = "".join(f"<th>{h}</th>" for h in HEADERS)
        body = "".join("<tr>" + "".join(f"<td style='text-align:{'left' if i == 0 else 'right'}'>{html.escape(c)}</td>"
                                        for i, c in enumerate(_cells(r))) + "</tr>" for r in self.rows)
        return f"<table><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>"


def strategy_row(name: str, result) -> StrategyRow:
    """One row from a ``RunResult`` (anything with ``history``, ``model`` and optionally ``seconds``, ``route``)."""
    history = result.history
    if not history:
        raise ValueError(f"run {name!r} has an empty history: nothing was trained")
    best = best_from_history(history)
    total, trainable = count_parameters(result.model)
    seconds = getattr(result, "seconds", None)
    if seconds is None:  # a bare record with only a history
        seconds = sum(r["seconds"] for r in history)
    return StrategyRow(name, best["acc"], best["acc_epoch"], history[-1]["val_acc"], trainable, total,
                       seconds, getattr(result, "route", "plain"))


def compare_runs(results: Mapping[str, object]) -> StrategyTable:
    """A table with one row per named run, in the mapping's order."""
    return StrategyTable(tuple(strategy_row(name, result) for name, result in results.items()))


def plot_strategies(table: StrategyTable, axes=None):
    """Bars: best val accuracy, trainable parameters and training time per strategy."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    names = [r.name for r in table.rows]
    panels = [("best val accuracy", [r.best_acc for r in table.rows], "{:.3f}"),
              ("trainable parameters (millions)", [r.trainable / 1e6 for r in table.rows], "{:.2f}"),
              ("training time (s)", [r.seconds for r in table.rows], "{:.0f}")]
    for ax, (title, values, fmt) in zip(axes, panels):
        bars = ax.bar(names, values, color=["tab:blue", "tab:orange", "tab:green", "tab:red"][:len(names)])
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], fontsize=9)
        ax.set_title(title)
        ax.margins(y=0.15)
    axes[0].set_ylim(0, 1.1)
    plt.tight_layout()
    return axes

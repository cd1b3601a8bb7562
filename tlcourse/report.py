"""The trainable-layer report: which blocks and parameters will learn, and how many weights.

``trainable_report(model)`` returns a value; ``str()`` of it is a plain-text table and
Jupyter renders it as an HTML table, so the same object works in a terminal and a notebook.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from torch import nn

from .archs import block_of


@dataclass(frozen=True)
class BlockRow:
    name: str
    params: int
    trainable: int

    @property
    def status(self) -> str:
        if self.trainable == 0:
            return "Frozen"
        return "Trainable" if self.trainable == self.params else "Partial"


@dataclass(frozen=True)
class ParamRow:
    name: str
    shape: tuple[int, ...]
    numel: int
    trainable: bool

    @property
    def status(self) -> str:
        return "Trainable" if self.trainable else "Frozen"


@dataclass(frozen=True)
class TrainableReport:
    blocks: tuple[BlockRow, ...]
    params: tuple[ParamRow, ...]
    detailed: bool = False

    @property
    def total(self) -> int:
        return sum(b.params for b in self.blocks)

    @property
    def trainable(self) -> int:
        return sum(b.trainable for b in self.blocks)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def block(self, name: str) -> BlockRow:
        return next(b for b in self.blocks if b.name == name)

    def summary_line(self) -> str:
        return f"trainable {self.trainable:,} / {self.total:,} parameters ({self.percent:.2f}%)"

    def to_text(self, detailed: bool | None = None) -> str:
        detailed = self.detailed if detailed is None else detailed
        if detailed:
            width = max(len(p.name) for p in self.params)
            lines = [f"{'parameter':<{width}}  {'shape':<18} {'count':>11}  status"]
            lines += [f"{p.name:<{width}}  {str(tuple(p.shape)):<18} {p.numel:>11,}  {p.status}" for p in self.params]
        else:
            width = max(10, *(len(b.name) for b in self.blocks))
            lines = [f"{'block':<{width}}  {'params':>11} {'trainable':>11}  status"]
            lines += [f"{b.name:<{width}}  {b.params:>11,} {b.trainable:>11,}  {b.status}" for b in self.blocks]
        lines.append(self.summary_line())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_html_(self) -> str:
        return self.to_html()

    def _repr_pretty_(self, printer, cycle) -> None:
        """IPython's text/plain (a terminal, or a front end without HTML): the table, not the dataclass."""
        printer.text(self.to_text())

    def to_html(self, summary: bool = True) -> str:
        """The table as coloured HTML, followed by the summary line unless ``summary=False``."""
        def row(cells, status):
            colour = {"Trainable": "#d7f5d7", "Frozen": "#eeeeee", "Partial": "#fff3c4"}[status]
            tds = "".join(f"<td style='text-align:{a}'>{html.escape(str(c))}</td>" for c, a in cells)
            return f"<tr style='background:{colour}'>{tds}</tr>"

        if self.detailed:
            head = ["parameter", "shape", "count", "status"]
            body = [row([(p.name, "left"), (tuple(p.shape), "left"), (f"{p.numel:,}", "right"),
                         (p.status, "left")], p.status) for p in self.params]
        else:
            head = ["block", "params", "trainable", "status"]
            body = [row([(b.name, "left"), (f"{b.params:,}", "right"), (f"{b.trainable:,}", "right"),
                         (b.status, "left")], b.status) for b in self.blocks]
        ths = "".join(f"<th>{h}</th>" for h in head)
        table = f"<table><thead><tr>{ths}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        return table + (f"<p><b>{html.escape(self.summary_line())}</b></p>" if summary else "")


def trainable_report(model: nn.Module, detailed: bool = False) -> TrainableReport:
    """Group parameters by block (``conv1``, ``bn1``, ``layer1``.. ``fc``) and list each one."""
    params = tuple(ParamRow(n, tuple(p.shape), p.numel(), p.requires_grad) for n, p in model.named_parameters())
    totals: dict[str, list[int]] = {}
    for p in params:
        entry = totals.setdefault(block_of(p.name), [0, 0])
        entry[0] += p.numel
        entry[1] += p.numel if p.trainable else 0
    rows = tuple(BlockRow(name, n, t) for name, (n, t) in totals.items())
    return TrainableReport(rows, params, detailed)

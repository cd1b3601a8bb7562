"""``FreezePanel``: tick the blocks that should learn and watch the trainable-layer report update.

The panel is a thin view over ``tlcourse.freeze``: every change of a checkbox or of the preset
selector calls ``set_trainable`` on the model and re-renders ``trainable_report``. Without a
browser (papermill, nbval) the widgets simply render as text, so headless runs are unaffected;
that text says why it is static, since a JupyterLab without the widgets extension shows it too.
"""

from __future__ import annotations

import ipywidgets as widgets
from torch import nn

from .freeze import PRESETS, blocks, preset_blocks, set_trainable, trainable_blocks
from .report import TrainableReport, trainable_report

#: The line above the controls: what a learner can do with them.
HINT = "Tick a block to let it learn, untick it to freeze it, or press a preset: the count and the table follow."
#: What the text fallback says when no live widget is shown (headless run, or no widgets extension).
STATIC_NOTE = ("(a static view: the live panel needs a running kernel and JupyterLab's widgets extension, "
               "@jupyter-widgets/jupyterlab-manager; `python -m tlcourse doctor` checks it)")
#: CSS classes of the live panel and of its count, for tests and styling.
PANEL_CLASS, COUNT_CLASS = "tlcourse-freeze-panel", "tlcourse-freeze-count"


class FreezePanel:
    """A checkbox per block plus a preset selector (head / last_stage / all) for ``model``.

    ``preset=None`` shows the model's current freezing; a preset name applies it first.
    Attributes the notebook (and the tests) can read: ``checkboxes`` (block name → Checkbox),
    ``preset`` (ToggleButtons; ``None`` when the ticked blocks match no preset), ``count``
    (HTML with the trainable-parameter count, shown once), ``table`` (HTML report) and ``report``.
    """

    def __init__(self, model: nn.Module, preset: str | None = None, *, bn_eval: bool = True,
                 detailed: bool = False):
        self.model = model
        self.bn_eval = bn_eval
        self.detailed = detailed
        self.block_names = list(blocks(model))
        if preset is not None:
            set_trainable(model, preset_blocks(model, preset), bn_eval=bn_eval)
        ticked = set(trainable_blocks(model))
        self.checkboxes = {
            name: widgets.Checkbox(value=name in ticked, description=name, indent=False,
                                   layout=widgets.Layout(width="auto", margin="0 12px 0 0"))
            for name in self.block_names
        }
        self.preset = widgets.ToggleButtons(options=list(PRESETS), value=self._matching_preset(),
                                            description="preset")
        self.count = widgets.HTML()
        self.count.add_class(COUNT_CLASS)
        self.table = widgets.HTML()
        self.report: TrainableReport = trainable_report(model, detailed)
        # While the panel itself moves controls (preset → checkboxes and back), observers ignore them.
        self._syncing = False
        for box in self.checkboxes.values():
            box.observe(self._on_checkbox, names="value")
        self.preset.observe(self._on_preset, names="value")
        self.widget = widgets.VBox([
            widgets.HTML(f"<i>{HINT}</i>"),
            self.preset,
            widgets.HBox(list(self.checkboxes.values()), layout=widgets.Layout(flex_flow="row wrap")),
            self.count,
            self.table,
        ])
        self.widget.add_class(PANEL_CLASS)
        self._render()

    # ------------------------------------------------------------------ state

    def selected(self) -> list[str]:
        """Ticked blocks, in model order."""
        return [name for name, box in self.checkboxes.items() if box.value]

    def _matching_preset(self) -> str | None:
        chosen = set(self.selected())
        for name in PRESETS:
            if set(preset_blocks(self.model, name)) == chosen:
                return name
        return None

    # ------------------------------------------------------------------ events

    def _on_checkbox(self, change) -> None:
        if self._syncing:
            return
        set_trainable(self.model, self.selected(), bn_eval=self.bn_eval)
        self._syncing = True
        try:
            self.preset.value = self._matching_preset()
        finally:
            self._syncing = False
        self._render()

    def _on_preset(self, change) -> None:
        if self._syncing or change["new"] is None:
            return
        wanted = set(preset_blocks(self.model, change["new"]))
        self._syncing = True
        try:
            for name, box in self.checkboxes.items():
                box.value = name in wanted
        finally:
            self._syncing = False
        set_trainable(self.model, self.selected(), bn_eval=self.bn_eval)
        self._render()

    # ------------------------------------------------------------------ view

    def _render(self) -> None:
        self.report = trainable_report(self.model, self.detailed)
        self.count.value = f"<b>{self.report.summary_line()}</b>"
        self.table.value = self.report.to_html(summary=False)  # the count above already says it

    def display(self) -> None:
        from IPython.display import display

        display(self)

    def _repr_mimebundle_(self, **kwargs):
        """The live widget for Jupyter, and the text report for headless runs and terminals."""
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = f"{self!r}\n{STATIC_NOTE}"
        return bundle

    def __repr__(self) -> str:  # what a terminal (or a headless log) sees
        return f"FreezePanel(blocks={self.selected()}, preset={self.preset.value!r})\n{self.report}"

"""``FreezePanel``: tick the blocks that should learn and watch the trainable-layer report update.

The panel is a thin view over ``tlcourse.freeze``: every change of a checkbox or of the preset
selector calls ``set_trainable`` on the model and re-renders ``trainable_report``. Without a
browser (papermill, nbval) the widgets simply render as text, so headless runs are unaffected.
"""

from __future__ import annotations

import ipywidgets as widgets
from torch import nn

from .freeze import PRESETS, blocks, preset_blocks, set_trainable, trainable_blocks
from .report import TrainableReport, trainable_report


class FreezePanel:
    """A checkbox per block plus a preset selector (head / last_stage / all) for ``model``.

    ``preset=None`` shows the model's current freezing; a preset name applies it first.
    Attributes the notebook (and the tests) can read: ``checkboxes`` (block name → Checkbox),
    ``preset`` (ToggleButtons; ``None`` when the ticked blocks match no preset), ``count``
    (HTML with the trainable-parameter count), ``table`` (HTML report) and ``report``.
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
        self.table = widgets.HTML()
        self.report: TrainableReport = trainable_report(model, detailed)
        # While the panel itself moves controls (preset → checkboxes and back), observers ignore them.
        self._syncing = False
        for box in self.checkboxes.values():
            box.observe(self._on_checkbox, names="value")
        self.preset.observe(self._on_preset, names="value")
        self.widget = widgets.VBox([
            self.preset,
            widgets.HBox(list(self.checkboxes.values()), layout=widgets.Layout(flex_flow="row wrap")),
            self.count,
            self.table,
        ])
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
        self.table.value = self.report._repr_html_()

    def display(self) -> None:
        from IPython.display import display

        display(self)

    def _repr_mimebundle_(self, **kwargs):
        """The live widget for Jupyter, and the text report for headless runs and terminals."""
        bundle = self.widget._repr_mimebundle_(**kwargs) or {}
        bundle["text/plain"] = repr(self)
        return bundle

    def __repr__(self) -> str:  # what a terminal (or a headless log) sees
        return f"FreezePanel(blocks={self.selected()}, preset={self.preset.value!r})\n{self.report}"

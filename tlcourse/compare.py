"""Compare training strategies (head only, last stage, everything) run by ``engine.train``.

``compare_runs({"head": r1, "last_stage": r2, "all": r3})`` returns a table value: ``str()``
of it is plain text and Jupyter renders it as HTML, like the trainable-layer report. Every
number comes from the runs themselves (their histories, configs and models), so a notebook's
comparison can never drift from what was actually trained. The settings that differ between
the rows (learning rate, epochs, schedule, smoothing, augmentation...) are columns of the table,
the others one line under it: a comparison shows what it compares.

Is one run *better*? On a validation set of a few hundred images a gap of one or two images is
noise. :func:`paired_test` answers it on the same images with the exact McNemar test: only the
images the two models disagree on count. :func:`compare_pair` runs it for two ``RunResult``s
and :func:`versus_probe` for a run against its linear-probe baseline.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .config import PRESET_DEFAULTS
from .history import best_from_history
from .models import count_parameters

__all__ = ["PairedTest", "StrategyRow", "StrategyTable", "compare_pair", "compare_runs", "mcnemar_p",
           "paired_test", "plot_strategies", "run_settings", "setup_of", "strategy_row", "val_correct", "versus_probe"]

#: The settings every row carries, in column order (``run_settings`` says how each is read).
SETTINGS = ("epochs", "lr", "schedule", "smoothing", "augmentation", "optimizer", "batch", "image size", "seed")
#: Significance level of the paired test's verdict.
ALPHA = 0.05


# --------------------------------------------------------------------------- what a run was trained with

def augmentation(cfg, path: str, preset: str) -> str:
    """What the training images were, in words, from the config and the route that ran."""
    if not cfg.augment:
        return "none"
    if path == "views":
        k = cfg.fast_views if cfg.fast_views is not None else PRESET_DEFAULTS[preset]["fast_views"]
        return "none (1 un-augmented cached view)" if k == 1 else f"{k} cached views (1 plain + {k - 1} augmented)"
    if path in ("plain", "decode"):
        return "fresh each epoch"
    return "none"


def setup_of(result) -> str:
    """What the one-time setup before the first epoch was, from the run's route: cold or warm."""
    route = _route_words(result)
    if "computed in" in route:
        return "cold: backbone pass computed" + (", part read from the feature cache" if "read from" in route else "")
    if "read from the feature cache" in route:
        return "warm: read from the feature cache"
    if route.startswith("images decoded"):
        return "images decoded once (nothing frozen to cache)"
    return "none"


def run_settings(result) -> tuple[tuple[str, str], ...]:
    """``(name, value)`` for each of ``SETTINGS``, read from ``result.config`` and its route.

    A run without a config (a bare record with a history) has no settings: ``()``.
    """
    cfg = getattr(result, "config", None)
    if cfg is None:
        return ()
    cfg = cfg.resolved()
    path = getattr(result, "route", "plain")
    if cfg.recipe == "fine_tune":
        presets = ["head", cfg.unfreeze] if cfg.freeze_epochs else [cfg.unfreeze]
        paths = path.split("+")
        augment = " → ".join(f"{p}: {augmentation(cfg, r, p)}" for p, r in zip(presets, paths))
        values = {"epochs": f"{cfg.freeze_epochs}+{cfg.epochs - cfg.freeze_epochs}",
                  "lr": f"{cfg.lr:g} (lr_mult {cfg.lr_mult:g})", "schedule": f"{cfg.phase_schedule} per phase",
                  "augmentation": augment}
    else:
        lr = f"{cfg.lr:g}" + (f" (head x{cfg.head_lr_mult:g})" if cfg.head_lr_mult != 1 else "")
        values = {"epochs": str(cfg.epochs), "lr": lr, "schedule": cfg.scheduler,
                  "augmentation": augmentation(cfg, path, cfg.freeze)}
    values |= {"smoothing": f"{cfg.label_smoothing:g}", "optimizer": cfg.optimizer + (
        f" wd {cfg.weight_decay:g}" if cfg.weight_decay else ""), "batch": str(cfg.batch_size),
        "image size": str(cfg.image_size), "seed": str(cfg.seed)}
    return tuple((name, values[name]) for name in SETTINGS)


# --------------------------------------------------------------------------- the table

@dataclass(frozen=True)
class StrategyRow:
    name: str
    best_acc: float
    best_epoch: int
    final_acc: float
    trainable: int
    total: int
    seconds: float          # RunResult.seconds: the epochs plus any one-time caching
    route: str = "plain"    # which training route ran, in words (RunResult.route_description)
    settings: tuple[tuple[str, str], ...] = ()   # run_settings(): what it was trained with
    epochs: int = 0         # epochs in the history
    images: int = 0         # validation images of the last epoch
    setup_seconds: float = 0.0   # the one-time part of ``seconds`` (backbone pass, or reading the cache)

    @property
    def percent_trainable(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def setting(self, name: str) -> str:
        return dict(self.settings)[name]


HEADERS = ("strategy", "best val_acc", "at epoch", "final val_acc", "trainable params", "time", "route")


def _time(row: StrategyRow) -> str:
    if not row.setup_seconds:
        return f"{row.seconds:.1f}s"
    return f"{row.seconds:.1f}s ({row.setup_seconds:.1f} setup)"


def _cells(row: StrategyRow, columns: Sequence[str]) -> tuple[str, ...]:
    settings = dict(row.settings)
    return (row.name, f"{row.best_acc:.4f}", f"{row.best_epoch}/{row.epochs}" if row.epochs else str(row.best_epoch),
            f"{row.final_acc:.4f}", f"{row.trainable:,} ({row.percent_trainable:.1f}%)", _time(row),
            _short_route(row.route), *(settings.get(c, "?") for c in columns))


def _route_words(result) -> str:
    """The route in words: ``RunResult.route_description`` (a bare record may hold it as ``route``)."""
    return getattr(result, "route_description", None) or getattr(result, "route", "") or ""


def _short_route(route: str) -> str:
    """The route's first clause: what was trained on, without the cache's bookkeeping."""
    return route.split(",")[0].split(" (")[0]


@dataclass(frozen=True)
class StrategyTable:
    rows: tuple[StrategyRow, ...]

    def row(self, name: str) -> StrategyRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no strategy {name!r}; have {', '.join(r.name for r in self.rows)}")

    def best(self) -> StrategyRow:
        """The row with the highest best-epoch accuracy (the earlier row wins a tie).

        Not a verdict: that accuracy is the best of several epochs, chosen on the same images it is
        scored on, and a gap of a few images is noise. Decide with :func:`compare_pair`.
        """
        return max(self.rows, key=lambda r: r.best_acc)

    def differing(self) -> tuple[str, ...]:
        """The settings whose value differs between the rows (the table's extra columns)."""
        known = [dict(r.settings) for r in self.rows if r.settings]
        return tuple(s for s in SETTINGS if len({k.get(s) for k in known}) > 1)

    def shared(self) -> tuple[tuple[str, str], ...]:
        """The settings every row has in common, with their value."""
        known = [dict(r.settings) for r in self.rows if r.settings]
        if not known:
            return ()
        return tuple((s, known[0][s]) for s in SETTINGS if s not in self.differing() and s in known[0])

    @property
    def headers(self) -> tuple[str, ...]:
        return HEADERS + self.differing()

    def notes(self) -> list[str]:
        """The lines under the table: what all rows share, and what the columns mean."""
        lines = []
        if self.shared():
            lines.append("same in every row: " + ", ".join(f"{k} {v}" for k, v in self.shared()))
        images = {r.images for r in self.rows if r.images}
        on = f"{images.pop()} validation images" if len(images) == 1 else "the validation images"
        lines.append(f"best val_acc: the best epoch, chosen on the same {on} it is scored on (optimistic); "
                     "final val_acc: the last epoch, chosen by nothing")
        if any(r.setup_seconds for r in self.rows):
            lines.append("time: epochs + one-time setup (a backbone pass when computed, a read when the feature "
                         "cache had it, or decoding the images once)")
        return lines

    def to_text(self) -> str:
        columns = self.differing()
        table = [self.headers, *(_cells(r, columns) for r in self.rows)]
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        lines = ["  ".join(c.rjust(w) if 0 < i < len(HEADERS) - 1 else c.ljust(w)
                           for i, (c, w) in enumerate(zip(line, widths))).rstrip() for line in table]
        return "\n".join(lines + self.notes())

    def __str__(self) -> str:
        return self.to_text()

    def _repr_pretty_(self, printer, cycle) -> None:   # IPython's text/plain: the table, not the dataclass
        printer.text(self.to_text())

    def _repr_html_(self) -> str:
        columns = self.differing()
        ths = "".join(f"<th>{html.escape(h)}</th>" for h in self.headers)
        body = "".join("<tr>" + "".join(f"<td style='text-align:{'right' if 0 < i < len(HEADERS) - 1 else 'left'}'>"
                                        f"{html.escape(c)}</td>" for i, c in enumerate(_cells(r, columns))) + "</tr>"
                       for r in self.rows)
        notes = "".join(f"<br>{html.escape(n)}" for n in self.notes())
        return f"<table><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table><small>{notes[4:]}</small>"


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
                       seconds, _route_words(result) or "plain", run_settings(result), len(history),
                       int(history[-1].get("val_images", 0)), float(getattr(result, "cache_seconds", 0.0) or 0.0))


def compare_runs(results: Mapping[str, object]) -> StrategyTable:
    """A table with one row per named run, in the mapping's order."""
    return StrategyTable(tuple(strategy_row(name, result) for name, result in results.items()))


# --------------------------------------------------------------------------- the paired test

def mcnemar_p(a_only: int, b_only: int) -> float:
    """Exact (binomial) two-sided McNemar p-value from the two discordant counts."""
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


@dataclass(frozen=True)
class PairedTest:
    """Two models' right and wrong answers on the same images, and what they say."""

    names: tuple[str, str]
    images: int
    correct: tuple[int, int]        # images each model got right
    a_only: int                     # right by the first model only
    b_only: int                     # right by the second model only
    p_value: float                  # exact McNemar
    alpha: float = ALPHA

    @property
    def difference(self) -> int:
        """How many more images the first model got right (negative: fewer)."""
        return self.correct[0] - self.correct[1]

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha

    @property
    def winner(self) -> str | None:
        """The better model's name, or None when the test cannot tell them apart."""
        if not self.significant or self.difference == 0:
            return None
        return self.names[0] if self.difference > 0 else self.names[1]

    def verdict(self) -> str:
        """One line: the accuracies, the gap in images, the disagreements, the p-value, the verdict."""
        (a, b), (ca, cb), n = self.names, self.correct, self.images
        gap = abs(self.difference)
        said = (f"{self.winner} is better here" if self.winner else "indistinguishable here")
        return (f"{a} vs {b} on the same {n} images: {ca} vs {cb} right ({ca / n:.4f} vs {cb / n:.4f}), "
                f"{gap} image{'s' if gap != 1 else ''} apart; they disagree on {self.a_only + self.b_only} "
                f"({self.a_only} only {a} right, {self.b_only} only {b} right); exact McNemar p = "
                f"{self.p_value:.3g}{' <' if self.significant else ' >='} {self.alpha:g}: {said}")

    def __str__(self) -> str:
        return self.verdict()


def paired_test(correct_a, correct_b, names: tuple[str, str] = ("A", "B"), alpha: float = ALPHA) -> PairedTest:
    """Exact McNemar test on two models' per-image correctness (booleans, same images, same order)."""
    a, b = [bool(x) for x in _flat(correct_a)], [bool(x) for x in _flat(correct_b)]
    if len(a) != len(b):
        raise ValueError(f"the two models were scored on {len(a)} and {len(b)} images; a paired test needs "
                         "the same images")
    if not a:
        raise ValueError("no images to compare")
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    return PairedTest(tuple(names), len(a), (sum(a), sum(b)), a_only, b_only, mcnemar_p(a_only, b_only), alpha)


def _flat(values) -> list:
    return values.flatten().tolist() if hasattr(values, "flatten") else list(values)


# --------------------------------------------------------------------------- per-image correctness of runs

def val_correct(result, which: str = "final"):
    """``(correct, targets)``: for each validation image, whether the run's model gets it right.

    ``which="final"``: the weights after the last epoch (``result.model``, chosen by nothing);
    ``"best"``: ``best_acc.pt``'s. A run on a cached route is scored on its cached validation inputs
    (no backbone pass); otherwise one pass over the validation images (evaluation transforms).
    """
    import torch

    from .checkpoints import load_checkpoint
    from .heads import predictions
    from .loops import evaluate

    if which not in ("final", "best"):
        raise ValueError(f"which={which!r}: choose 'final' or 'best'")
    model = result.model
    fast = getattr(result, "fast", None)
    if fast is not None:
        forward, loader = fast.forward_model or model, fast.val_loader
    else:
        from .data import loaders_for

        forward, loader = model, loaders_for(result.config.replace(augment=False)).val
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()} if which == "best" else None
    try:
        if saved is not None:
            model.load_state_dict(load_checkpoint(result.best_acc_path)["model"])
        out = evaluate(forward, loader, None, device, return_outputs=True)
    finally:
        if saved is not None:
            model.load_state_dict(saved)
        for m, mode in modes.items():
            m.training = mode
    with torch.no_grad():
        return predictions(out["outputs"]) == out["targets"], out["targets"]


def compare_pair(runs: Mapping[str, object], a: str, b: str, which: str = "final") -> PairedTest:
    """The paired test of runs ``a`` and ``b`` (names in ``runs``) on their validation images."""
    import torch

    (correct_a, targets_a), (correct_b, targets_b) = val_correct(runs[a], which), val_correct(runs[b], which)
    if not torch.equal(targets_a, targets_b):
        raise ValueError(f"{a} and {b} were validated on different images; a paired test needs the same ones")
    return paired_test(correct_a, correct_b, (a, b))


def versus_probe(result, name: str = "run", which: str = "final") -> PairedTest:
    """The paired test of a run against its linear-probe baseline, on the same validation images."""
    import torch

    from .probe import probe_correct

    fast, probe = getattr(result, "fast", None), getattr(result, "probe", None)
    if probe is None or fast is None or fast.probe_data is None:
        raise ValueError(f"{name} has no linear probe to compare with (head-only and last_stage runs fit one)")
    correct, targets = val_correct(result, which)
    probe_right, probe_targets = probe_correct(fast.probe_data, probe.l2, len(result.class_names))
    if not torch.equal(targets, probe_targets):
        raise ValueError(f"{name} and its probe were validated on different images")
    return paired_test(correct, probe_right, (name, "linear probe"))


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

"""``python -m tlcourse lr-find``: the learning-rate range test for a training config."""

from __future__ import annotations

import argparse

from ._args import positive_int
from .config_options import add_config_arguments, config_overrides


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def add(sub) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: suggests an lr and plots loss against lr",
                       description="Builds the model, data and freezing a `train` with the same options would use, "
                                   "sweeps the learning rate exponentially (on the fast path when the frozen part "
                                   "allows it), prints the suggestion and writes the plot. The model is not saved.")
    p.add_argument("--start-lr", type=_positive_float, default=1e-7, help="first learning rate (default: 1e-7)")
    p.add_argument("--end-lr", type=_positive_float, default=10.0, help="last learning rate (default: 10)")
    p.add_argument("--steps", type=positive_int, default=200, help="batches in the sweep (default: 200)")
    p.add_argument("--plot", default="lr_find.png", help="where to write the plot (default: lr_find.png)")
    add_config_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")

    from .. import TLCourseError
    from ..lr_find import lr_find

    if args.steps < 2:
        raise TLCourseError(f"--steps {args.steps}: the sweep needs at least 2 steps")
    if args.start_lr >= args.end_lr:
        raise TLCourseError(f"--start-lr {args.start_lr} must be smaller than --end-lr {args.end_lr}")
    result = lr_find(start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, **config_overrides(args))
    plot = Path(args.plot)
    plot.parent.mkdir(parents=True, exist_ok=True)
    ax = result.plot()
    ax.figure.savefig(plot, dpi=110)
    print(f"route: {result.route}")
    print(result.summary())
    print(f"suggested lr: {result.suggestion:.3g}")
    print(f"plot: {plot.resolve()}")
    return 0

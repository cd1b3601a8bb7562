"""``python -m tlcourse report``: which layers a freeze preset leaves trainable."""

from __future__ import annotations

from ..archs import ARCHS
from ..config import HEADS, MAX_CLASSES, PRESETS
from ._args import int_between


def add(sub) -> None:
    p = sub.add_parser("report", help="show which layers a freeze preset leaves trainable")
    p.add_argument("--arch", default="resnet18", choices=list(ARCHS))
    p.add_argument("--num-classes", type=int_between(2, MAX_CLASSES), default=2)
    p.add_argument("--head", default="linear", choices=HEADS)
    p.add_argument("--freeze", default="head", choices=PRESETS)
    p.add_argument("--detailed", action="store_true", help="one line per parameter tensor")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..freeze import apply_freeze
    from ..models import build_model
    from ..report import trainable_report

    # The report is about structure, so random init is enough (and works offline).
    model = build_model(args.arch, args.num_classes, weights=None, head=args.head)
    apply_freeze(model, args.freeze)
    print(f"{args.arch}, head={args.head}, freeze={args.freeze}")
    print(trainable_report(model, detailed=args.detailed))
    return 0

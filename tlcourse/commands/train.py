"""``python -m tlcourse train``: train or resume a run; one option per ``TrainConfig`` field."""

from __future__ import annotations

from ..config import add_config_arguments, config_overrides


def add(sub) -> None:
    p = sub.add_parser("train", help="train (or resume) a transfer-learning run",
                       description="Every TrainConfig field is an option. Options left out take TrainConfig's "
                                   "defaults, or the checkpoint's when resuming.")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue a run from its latest.pt")
    p.add_argument("--print-model", action="store_true",
                   help="print the pretrained model and the transfer version, then train")
    add_config_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..checkpoints import BEST_ACC, BEST_LOSS, LATEST
    from ..engine import train

    overrides = config_overrides(args)
    if args.print_model:
        _print_models(overrides.get("arch", "resnet18"), overrides.get("head", "linear"))
    result = train(resume=args.resume, **overrides)
    print(result.summary())
    for name in (BEST_ACC, BEST_LOSS, LATEST):
        print(f"{name[:-3]}: {result.run_dir / name}")
    return 0


def _print_models(arch: str, head: str) -> None:
    from torchvision import models as tvm

    from ..heads import replace_head

    base = tvm.get_model(arch, weights=None)
    print(f"--- {arch} as published (ImageNet head) ---\n{base}")
    print(f"--- after replacing the head ({head}) ---\n{replace_head(base, 2, head)}")

"""``python -m tlcourse <command>``: the course's command line.

Each command is a small ``add_<command>`` function that declares its arguments and the function
that runs it. Errors the user can fix (``TLCourseError``) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import TLCourseError, __version__


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


# --------------------------------------------------------------------------- data

def add_data(sub) -> None:
    p = sub.add_parser("data", help="download the ants/bees dataset and count its images, or check a dataset folder")
    p.add_argument("--root", default=None, help="folder to put the dataset in (default: data/)")
    p.add_argument("--mirror", default=None, help="local path or URL of hymenoptera_data.zip (or TLCOURSE_DATA_MIRROR)")
    p.add_argument("--force", action="store_true", help="download and extract again")
    p.add_argument("--check", metavar="DIR", default=None,
                   help="list every problem of DIR/{train,val}/<class>/* instead (exit status 1 on errors)")
    p.add_argument("--no-verify-images", dest="verify_images", action="store_false",
                   help="with --check: check the folder structure only, do not open the images")
    p.set_defaults(run=run_data)


def run_data(args) -> int:
    if args.check is not None:
        from .checks import check_dataset  # PIL only: no torch import, so the check starts at once

        check = check_dataset(args.check, verify_images=args.verify_images)
        print(check)
        return 0 if check.ok else 1

    from .data import fetch, summarize

    path = fetch(args.root, args.mirror, force=args.force)
    print(f"dataset: {path}")
    print(summarize(path))
    return 0


# --------------------------------------------------------------------------- report

def add_report(sub) -> None:
    from .freeze import PRESETS
    from .models import ARCHS, HEADS

    p = sub.add_parser("report", help="show which layers a freeze preset leaves trainable")
    p.add_argument("--arch", default="resnet18", choices=list(ARCHS))
    p.add_argument("--num-classes", type=_positive_int, default=2)
    p.add_argument("--head", default="linear", choices=HEADS)
    p.add_argument("--freeze", default="head", choices=PRESETS)
    p.add_argument("--detailed", action="store_true", help="one line per parameter tensor")
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from .freeze import apply_freeze
    from .models import build_model
    from .report import trainable_report

    # The report is about structure, so random init is enough (and works offline).
    model = build_model(args.arch, args.num_classes, weights=None, head=args.head)
    apply_freeze(model, args.freeze)
    print(f"{args.arch}, head={args.head}, freeze={args.freeze}")
    print(trainable_report(model, detailed=args.detailed))
    return 0


# --------------------------------------------------------------------------- train

def add_train(sub) -> None:
    from .freeze import PRESETS
    from .models import ARCHS, HEADS
    from .optim import OPTIMIZERS, SCHEDULERS

    p = sub.add_parser("train", help="train (or resume) a transfer-learning run",
                       description="Options left out take TrainConfig's defaults, or the checkpoint's when resuming.")
    # default=None everywhere: only options the user typed override the config (or a resumed run's).
    a = p.add_argument
    a("--data-dir", default=None, help="ImageFolder root with train/ and val/ (default: data/hymenoptera_data)")
    a("--arch", default=None, choices=list(ARCHS))
    a("--weights", default=None, help="DEFAULT, IMAGENET1K_V1, none, or a local .pth file")
    a("--head", default=None, choices=HEADS)
    a("--dropout", type=float, default=None, help="dropout of the mlp head")
    a("--freeze", default=None, choices=PRESETS, help="head (feature extraction), last_stage (layer4+fc), all")
    a("--epochs", type=_positive_int, default=None)
    a("--batch-size", type=_positive_int, default=None)
    a("--lr", type=_positive_float, default=None)
    a("--head-lr-mult", type=_positive_float, default=None, help="learning-rate multiplier for the new head")
    a("--weight-decay", type=float, default=None)
    a("--optimizer", default=None, choices=OPTIMIZERS)
    a("--scheduler", default=None, choices=SCHEDULERS)
    a("--image-size", type=_positive_int, default=None)
    a("--no-augment", dest="augment", action="store_const", const=False, default=None,
      help="train on evaluation transforms (no random crops/flips)")
    a("--seed", type=int, default=None)
    a("--num-workers", type=int, default=None)
    a("--device", default=None, help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    a("--amp", action="store_const", const=True, default=None, help="mixed precision (autocast)")
    a("--channels-last", action="store_const", const=True, default=None)
    a("--subset", type=_positive_int, default=None, help="at most N images per split (quick runs)")
    a("--max-batches", type=_positive_int, default=None, help="at most N batches per epoch (quick runs)")
    a("--run-name", default=None, help="run folder prefix (default: <arch>_<freeze>)")
    a("--output-dir", default=None, help="where run folders go (default: checkpoints/)")
    a("--progress", default=None, choices=["auto", "bar", "epoch", "none"])
    a("--resume", default=None, metavar="CHECKPOINT", help="continue a run from its latest.pt")
    a("--print-model", action="store_true", help="print the pretrained model and the transfer version, then train")
    p.set_defaults(run=run_train)


_NOT_CONFIG = {"command", "run", "resume", "print_model"}


def run_train(args) -> int:
    from .engine import TrainConfig, train

    overrides = {k: v for k, v in vars(args).items() if v is not None and k not in _NOT_CONFIG}
    if isinstance(overrides.get("weights"), str) and overrides["weights"].lower() == "none":
        overrides["weights"] = None
    if args.print_model:
        _print_models(TrainConfig(**{k: v for k, v in overrides.items() if k in ("arch", "head")}))
    result = train(resume=args.resume, **overrides)
    print(result.summary())
    for name in ("best_acc", "best_loss", "latest"):
        print(f"{name}: {result.run_dir / (name + '.pt')}")
    return 0


def _print_models(cfg) -> None:
    from torchvision import models as tvm

    from .models import replace_head

    base = tvm.get_model(cfg.arch, weights=None)
    print(f"--- {cfg.arch} as published (ImageNet head) ---\n{base}")
    print(f"--- after replacing the head ({cfg.head}) ---\n{replace_head(base, 2, cfg.head)}")


# --------------------------------------------------------------------------- predict

def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-k predictions for an image, a folder or a random sample")
    p.add_argument("--image", required=True, help="an image file, or a folder of images")
    p.add_argument("--checkpoint", required=True, help="a checkpoint such as checkpoints/<run>/best_acc.pt")
    p.add_argument("--topk", type=_positive_int, default=2)
    p.add_argument("--random", type=int, choices=[0, 1], default=0, help="1: pick --n random images under --image")
    p.add_argument("--n", type=_positive_int, default=5)
    p.add_argument("--seed", type=int, default=None, help="seed for --random 1")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=run_predict)


def run_predict(args) -> int:
    from pathlib import Path

    from .predict import Predictor, accuracy, format_predictions

    predictor = Predictor(args.checkpoint, device=args.device)
    target = Path(args.image)
    if args.random:
        preds = predictor.predict_random(target, n=args.n, topk=args.topk, seed=args.seed)
    elif target.is_dir():
        preds = predictor.predict_folder(target, topk=args.topk, batch_size=args.batch_size)
    else:
        preds = [predictor.predict_image(target, topk=args.topk)]
    print(format_predictions(preds))
    acc = accuracy(preds)
    if len(preds) > 1 and acc is not None:
        print(f"\n{len(preds)} images, accuracy against folder names: {acc:.4f}")
    return 0
# --------------------------------------------------------------------------- course

def add_course(sub) -> None:
    p = sub.add_parser("course", help="run every notebook headless (papermill) into notebooks/executed/")
    p.add_argument("--smoke", action="store_true",
                   help="fast run: weights=None, a small subset, 1 epoch, a few batches")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="pass a parameter to every notebook that declares it (VALUE: a Python literal or text)")
    p.add_argument("--only", action="append", default=[], metavar="NN",
                   help="run only notebooks whose name starts with NN (repeatable), e.g. --only 03")
    p.add_argument("--output", default=None, help="folder for executed notebooks (default: notebooks/executed/)")
    p.add_argument("--timeout", type=_positive_int, default=None, help="seconds allowed per cell")
    p.add_argument("--refresh-outputs", action="store_true",
                   help="re-execute the source notebooks offline-safe and store their checked outputs (for authors)")
    p.set_defaults(run=run_course)


def run_course(args) -> int:
    from .course import find_notebooks, parse_value, refresh_outputs
    from .course import run_course as run

    only = [o for item in args.only for o in item.split(",") if o]
    if args.refresh_outputs:
        refresh_outputs(find_notebooks(only=only))
        return 0
    overrides = {name: parse_value(value) for name, value in args.parameter}
    results = run(output=args.output, smoke=args.smoke, overrides=overrides, only=only, timeout=args.timeout)
    return 0 if all(r.status == "ok" for r in results) else 1


# --------------------------------------------------------------------------- main


# --------------------------------------------------------------------------- bench

def _bench_module():
    """benchmarks/transfer.py of the checkout (the benchmark is not part of the installed package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "transfer.py"
    if not path.is_file():
        raise TLCourseError(f"{path} not found; run the benchmark from a checkout of the course repository")
    spec = importlib.util.spec_from_file_location("tlcourse_bench_transfer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="CPU benchmark: the plain loop against tlcourse's fast path, side by side")
    try:
        _bench_module().add_arguments(p)
    except TLCourseError:
        pass  # the error is reported when the command runs
    p.set_defaults(run=run_bench)


def run_bench(args) -> int:
    _bench_module().run(args)
    return 0


COMMANDS = [add_data, add_report, add_train, add_predict, add_course, add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tlcourse", description="tlcourse: transfer learning with torchvision, from the command line.")
    parser.add_argument("--version", action="version", version=f"tlcourse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except TLCourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

"""``python -m tlcourse predict``: top-k for an image, a folder or a random sample."""

from __future__ import annotations

from ..config import FIELDS
from ._args import device_name, int_between, positive_int


def add(sub) -> None:
    p = sub.add_parser("predict", help="top-k predictions for an image, a folder or a random sample")
    p.add_argument("--image", required=True, help="an image file, or a folder of images")
    p.add_argument("--checkpoint", required=True, help="a checkpoint such as checkpoints/<run>/best_acc.pt")
    p.add_argument("--topk", type=positive_int, default=2)
    p.add_argument("--random", type=int, choices=[0, 1], default=0, help="1: pick --n random images under --image")
    p.add_argument("--n", type=positive_int, default=5)
    p.add_argument("--seed", type=int, default=None, help="seed for --random 1")
    p.add_argument("--batch-size", type=int_between(1, FIELDS["batch_size"].metadata["high"]), default=32)
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from ..predict import Predictor, accuracy, format_predictions

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

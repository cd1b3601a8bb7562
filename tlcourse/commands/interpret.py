"""``python -m tlcourse interpret``: confusion matrix, top losses, Grad-CAM and a report for a checkpoint."""

from __future__ import annotations

from ._args import positive_int


def add(sub) -> None:
    p = sub.add_parser("interpret", help="what a trained model gets wrong: confusion matrix, top losses, Grad-CAM",
                       description="Runs a checkpoint over a split of its dataset and writes confusion.png, "
                                   "top_losses.png, gradcam.png, report.md and report.html.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint such as checkpoints/<run>/best_acc.pt")
    p.add_argument("--data-dir", default=None,
                   help="ImageFolder root holding the split (default: the dataset the checkpoint was trained on)")
    p.add_argument("--split", default="val", help="sub-folder of the data folder to interpret (default: val)")
    p.add_argument("--out", default=None, help="folder for the figures and report (default: <run>/interpret_<split>/)")
    p.add_argument("--k", type=positive_int, default=9, help="images in the top-losses grid (default: 9)")
    p.add_argument("--cams", type=positive_int, default=8,
                   help="images in the Grad-CAM figure: wrong predictions first, then confident right ones "
                        "(default: 8)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default="auto")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")   # files only: no window, works without a display

    from ..interpret import interpret, write_report
    from ..text import printable, printable_lines

    interp = interpret(args.checkpoint, data_dir=args.data_dir, split=args.split, batch_size=args.batch_size,
                       device=args.device, k=args.k)      # a split smaller than --k: refused before the pass
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / f"interpret_{args.split}"
    files = write_report(interp, out, k=args.k, cams=min(args.cams, len(interp)))
    print(printable_lines(interp.summary()))          # class names from a checkpoint: no raw escape sequences
    print(printable_lines(str(interp.per_class())))
    confused = interp.most_confused(3)
    print(printable("most confused: " + ("; ".join(f"{c.true} -> {c.predicted} ({c.count})" for c in confused)
                                         if confused else "none (every image is right)")))
    for name, path in files.items():
        print(f"{name}: {path}")
    return 0

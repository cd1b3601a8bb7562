"""``python -m tlcourse evaluate``: the honest final score of a checkpoint (test/ once, val/ chose it)."""

from __future__ import annotations

from ._args import positive_int, probability


def add(sub) -> None:
    p = sub.add_parser("evaluate", help="final score: accuracy with a 95%% interval, recall, calibration, unknown",
                       description="Scores a checkpoint on test/ (or val/ when there is none, and says so): accuracy "
                                   "with a 95%% Wilson interval, recall per class, ECE before/after a temperature "
                                   "fitted on val/, and the 'unknown' threshold chosen on val/.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint such as checkpoints/<run>/best_acc.pt")
    p.add_argument("--data-dir", default=None,
                   help="ImageFolder root with val/ and optionally test/ (default: the checkpoint's dataset)")
    p.add_argument("--target-accuracy", type=probability, default=0.95,
                   help="accuracy the 'unknown' threshold aims for on the images it accepts (default: 0.95)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--device", default="auto")
    p.add_argument("--plot", default=None, help="write the reliability diagram to this PNG file")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..evaluation import evaluate_checkpoint

    ev = evaluate_checkpoint(args.checkpoint, args.data_dir, target_accuracy=args.target_accuracy,
                             batch_size=args.batch_size, device=args.device)
    print(ev)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..calibration import plot_reliability

        ax = plot_reliability(ev.final.bins(False), ev.final.bins(True), title=f"{ev.final.split}: reliability")
        ax.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        plt.close(ax.figure)
        print(f"reliability diagram: {args.plot}")
    return 0

"""``python -m tlcourse export``: model, labels, preprocessing and model card in one folder (ONNX, int8)."""

from __future__ import annotations

from ._args import positive_int, probability


def add(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (torchscript, int8) with labels and a model card",
                       description="Writes model.onnx, labels.json, preprocessing.json, export.json and "
                                   "MODEL_CARD.md into a new folder, checks the export against PyTorch on every "
                                   "val image, and with --int8 adds an ONNX Runtime static-quantized model and a "
                                   "size/latency/accuracy table.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint such as checkpoints/<run>/best_acc.pt")
    p.add_argument("--output", default=None, help="a new folder (default: exports/<run folder name>)")
    p.add_argument("--format", action="append", choices=["onnx", "torchscript"], default=None,
                   help="onnx (default; always written) and/or torchscript; repeat for both")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static quantization)")
    p.add_argument("--calibration-images", type=positive_int, default=64,
                   help="training images that calibrate the int8 ranges (default: 64)")
    p.add_argument("--data-dir", default=None, help="the dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--target-accuracy", type=probability, default=0.95,
                   help="accuracy the 'unknown' threshold aims for (default: 0.95)")
    p.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from ..export import export_checkpoint

    output = args.output or str(Path("exports") / Path(args.checkpoint).resolve().parent.name)
    result = export_checkpoint(args.checkpoint, output, formats=tuple(args.format or ["onnx"]), int8=args.int8,
                               data_dir=args.data_dir, target_accuracy=args.target_accuracy,
                               calibration_images=args.calibration_images)
    print(result.evaluation)
    print(result)
    return 0

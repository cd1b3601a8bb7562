"""``python -m tlcourse serve``: a Gradio web demo of an export folder or a checkpoint, on 127.0.0.1."""

from __future__ import annotations

from ._args import int_between, positive_int


def add(sub) -> None:
    p = sub.add_parser("serve", help="web demo (Gradio): upload a photo, see top-k, 'unknown' and Grad-CAM",
                       description="Serves an export folder (--model) or a checkpoint (--checkpoint) as a web page "
                                   "on 127.0.0.1 (this machine only) unless --host says otherwise.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", default=None, help="an export folder written by python -m tlcourse export")
    source.add_argument("--checkpoint", default=None, help="a checkpoint such as checkpoints/<run>/best_acc.pt")
    p.add_argument("--data-dir", default=None, help="dataset for the example images (default: the model's own)")
    p.add_argument("--int8", action="store_true", help="serve the export's int8 model")
    p.add_argument("--topk", type=positive_int, default=3)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 exposes the demo to your network)")
    p.add_argument("--port", type=int_between(1, 65535), default=7860)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..serve import build_demo, check_port, launch

    check_port(args.host, args.port)  # before loading anything: a port in use is a one-line error at once
    demo = build_demo(model_dir=args.model, checkpoint=args.checkpoint, data_dir=args.data_dir, int8=args.int8,
                      topk=args.topk)
    print(f"serving on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    launch(demo, host=args.host, port=args.port, block=True)
    return 0

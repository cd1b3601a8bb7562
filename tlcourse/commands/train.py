"""``python -m tlcourse train``: train or resume a run; one option per ``TrainConfig`` field.

With ``--nproc-per-node N`` (and, across machines, ``--nnodes``, ``--node-rank``, ``--master-addr``,
``--master-port`` or the ``--rdzv-*`` options) it starts N processes through ``torch.distributed.run``
(torchrun), each running this same command; ``torchrun -m tlcourse train ...`` works as well. These
launcher options belong to the processes, not to the run, so they are not ``TrainConfig`` fields.
"""

from __future__ import annotations

import argparse
import os

from ..settings import DIST_TIMEOUT_DEFAULT, ENV_DIST_TIMEOUT
from ._args import positive_int
from .config_options import add_config_arguments, config_arguments, config_overrides

#: The torchrun options (``argparse`` destinations) that make ``train`` start several processes.
LAUNCHER_OPTIONS = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "rdzv_backend",
                    "rdzv_endpoint", "rdzv_id")


def _nproc(text: str) -> str:
    if text in ("auto", "gpu", "cpu"):
        return text
    return str(positive_int(text))


def _nnodes(text: str) -> str:
    parts = text.split(":")
    if len(parts) > 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"must be a number of machines such as 2 (or MIN:MAX), got {text!r}")
    return text


def _node_rank(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be 0 for the first machine, 1 for the second..., got {text!r}")
    return int(text)


def add(sub) -> None:
    p = sub.add_parser("train", help="train (or resume) a transfer-learning run",
                       description="Every TrainConfig field is an option. Options left out take TrainConfig's "
                                   "defaults, or the checkpoint's when resuming.")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue a run from its latest.pt")
    p.add_argument("--print-model", action="store_true",
                   help="print the pretrained model and the transfer version, then train")
    add_config_arguments(p)
    g = p.add_argument_group("several processes (torchrun, DistributedDataParallel)",
                             "--batch-size is per process: a step sees batch-size x processes images")
    g.add_argument("--nproc-per-node", type=_nproc, default=None, metavar="N",
                   help="start N training processes on this machine through torchrun (one per GPU; gloo on a "
                        "CPU); auto: one per GPU, else one per CPU core")
    g.add_argument("--nnodes", type=_nnodes, default=None, metavar="N", help="number of machines (default: 1)")
    g.add_argument("--node-rank", type=_node_rank, default=None, metavar="R",
                   help="this machine's number, 0 .. nnodes-1 (with --master-addr)")
    g.add_argument("--master-addr", default=None, metavar="HOST", help="address of machine 0, reachable from all")
    g.add_argument("--master-port", type=positive_int, default=None, metavar="PORT",
                   help="a free port on machine 0 (e.g. 29500)")
    g.add_argument("--rdzv-backend", default=None, metavar="NAME", help="torchrun rendezvous backend (e.g. c10d)")
    g.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT", help="torchrun rendezvous endpoint")
    g.add_argument("--rdzv-id", default=None, metavar="ID", help="torchrun rendezvous id (the same on all machines)")
    g.add_argument("--dist-timeout", type=positive_int, default=None, metavar="SECONDS",
                   help=f"a process gives up after waiting this long for the others (default: "
                        f"{DIST_TIMEOUT_DEFAULT}; env {ENV_DIST_TIMEOUT})")
    p.set_defaults(run=run)


def worker_arguments(args, overrides: dict) -> list[str]:
    """What each process started by the launcher runs after ``python -m tlcourse``."""
    argv = ["train", *config_arguments(overrides)]
    if args.resume is not None:
        argv += ["--resume", args.resume]
    if getattr(args, "debug", False):
        argv.append("--debug")
    return argv


def run(args) -> int:
    overrides = config_overrides(args)
    if args.print_model:
        _print_models(overrides.get("arch", "resnet18"), overrides.get("head", "linear"))
    if args.dist_timeout is not None:
        os.environ[ENV_DIST_TIMEOUT] = str(args.dist_timeout)   # read by every process's process group
    launcher = {name: getattr(args, name) for name in LAUNCHER_OPTIONS if getattr(args, name) is not None}
    if launcher:
        from ..distributed import launch

        return launch(worker_arguments(args, overrides), debug=getattr(args, "debug", False), **launcher)

    from ..checkpoints import BEST_ACC, BEST_LOSS, LATEST
    from ..distributed import is_main_process, report_errors
    from ..engine import train

    with report_errors(debug=getattr(args, "debug", False)):   # under torchrun: the error reaches the launcher
        result = train(resume=args.resume, **overrides)
    if is_main_process():
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

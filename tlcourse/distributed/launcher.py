"""``python -m tlcourse train --nproc-per-node N``: the torchrun command line, its start, and its one-line failure."""

from __future__ import annotations

import logging
import os
import sys

import torch.distributed as dist

from .. import TLCourseError
from .process import ENV_LAUNCHED, timeout_seconds, under_torchrun


def _failure_detail(failure) -> dict:
    message = failure.error_file_data.get("message") if isinstance(failure.error_file_data, dict) else None
    if isinstance(message, dict):
        return {"line": message.get("message"), **message.get("extraInfo", {}).get("tlcourse", {})}
    return {"line": message if isinstance(message, str) and message not in ("", "<NONE>") else None}


def root_failure(failures: dict) -> tuple[int, str, int]:
    """(rank, one line, exit status) of the failure that caused the others.

    A rank's own error beats one that only reports a lost peer; among those the earliest (then the
    lowest rank) wins. Ranks stopped by torchrun after the first failure have no recorded line.
    """
    def key(item):
        rank, failure = item
        detail = _failure_detail(failure)
        return (detail["line"] is None, bool(detail.get("peer")), detail.get("time", failure.timestamp), rank)

    rank, failure = min(failures.items(), key=key)
    detail = _failure_detail(failure)
    line = detail["line"]
    if line is None:
        line = (f"killed by {failure.signal_name()}" if failure.exitcode < 0
                else f"exited with status {failure.exitcode} without a message")
    code = detail.get("exitcode") or (failure.exitcode if failure.exitcode > 0 else 1)
    return rank, line, code


def torchrun_arguments(worker: list[str], *, nproc_per_node: str | int = 1, nnodes: str | int = 1,
                       node_rank: int | None = None, master_addr: str | None = None, master_port: int | None = None,
                       rdzv_backend: str | None = None, rdzv_endpoint: str | None = None,
                       rdzv_id: str | None = None, script: str | None = None) -> list[str]:
    """The ``torchrun`` command line (without ``torchrun``) that starts ``python -m tlcourse <worker>``.

    One machine with no address given runs ``--standalone`` (a free local port, so several runs can
    share a machine); otherwise the rendezvous options are passed on as given.
    """
    argv = ["--nproc-per-node", str(nproc_per_node), "--nnodes", str(nnodes)]
    rendezvous = {"--node-rank": node_rank, "--master-addr": master_addr, "--master-port": master_port,
                  "--rdzv-backend": rdzv_backend, "--rdzv-endpoint": rdzv_endpoint, "--rdzv-id": rdzv_id}
    given = {flag: value for flag, value in rendezvous.items() if value is not None}
    if str(nnodes) in ("1", "1:1") and not set(given) - {"--node-rank"}:
        argv.append("--standalone")
    else:
        for flag, value in given.items():
            argv += [flag, str(value)]
    argv += ["--module", "tlcourse"] if script is None else [script]
    return argv + list(worker)


def launch(worker: list[str], *, debug: bool = False, **options) -> int:
    """Start the workers through ``torch.distributed.run`` (torchrun) and wait; return the exit status.

    ``worker`` is the command line of each process after ``python -m tlcourse`` (e.g. ``["train",
    "--epochs", "3"]``); ``options`` are :func:`torchrun_arguments`' rendezvous settings. When a rank
    fails, torchrun stops the others and this prints its one-line error once.
    """
    if under_torchrun():
        raise TLCourseError("this process was already started by torchrun; drop --nproc-per-node/--nnodes "
                            "(torchrun decides the processes)")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import get_args_parser, run

    from ..launch_checks import bounded_rendezvous, check_process_count, rendezvous_failure, say, waiting_line

    nproc = str(options.get("nproc_per_node", 1))
    check_process_count(nproc)
    wait = timeout_seconds()
    argv = bounded_rendezvous(torchrun_arguments(worker, **options), wait)
    if waiting_line(options, wait):
        say(waiting_line(options, wait))
    if nproc.isdigit() and "OMP_NUM_THREADS" not in os.environ:
        # torchrun would set 1 with a warning; share this machine's cores between its processes instead.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(nproc)))
    os.environ[ENV_LAUNCHED] = "1"
    if not debug:   # torchrun logs every stop and failure; the one line below says what matters
        for name in list(logging.root.manager.loggerDict):
            if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as exc:
        rank, line, code = root_failure(exc.failures)
        others = "; the other processes were stopped" if len(exc.failures) > 1 or _world(options) > 1 else ""
        if code == 130:
            print("interrupted", file=sys.stderr)
        else:
            print(f"error: {line} (rank {rank}{others})", file=sys.stderr)
        return code
    except (KeyboardInterrupt, SignalException):
        print("interrupted", file=sys.stderr)
        return 130
    except (dist.DistError, RendezvousError, RuntimeError) as exc:   # the rendezvous: machines that never joined
        if waiting_line(options, wait) is None:
            raise
        say(rendezvous_failure(exc, options, wait))
        return 1
    return 0


def _world(options: dict) -> int:
    nproc, nnodes = str(options.get("nproc_per_node", 1)), str(options.get("nnodes", 1))
    return (int(nproc) if nproc.isdigit() else 2) * (int(nnodes) if nnodes.isdigit() else 2)

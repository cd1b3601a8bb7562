"""Bounds for starting several processes: how many, and how long to wait for the other machines.

``torchrun`` waits for the other machines of ``--nnodes 2`` for its own default (ten minutes or
more, silently), and starts however many processes it is asked for. These checks run in the
launcher before anything starts: a process count the machine cannot hold is refused in one line,
and a multi-machine rendezvous waits at most ``--dist-timeout`` seconds, says so first, and ends
with one line naming the settings to check.
"""

from __future__ import annotations

import os
import sys

from . import TLCourseError

__all__ = ["bounded_rendezvous", "check_process_count", "rendezvous_failure"]

#: Processes per CPU core (or per GPU) accepted: more only thrash the machine.
PER_DEVICE = 2


def check_process_count(nproc: str) -> None:
    """One-line ``TLCourseError`` for ``--nproc-per-node N`` beyond what this machine can run."""
    if not str(nproc).isdigit():
        return                                  # auto / gpu / cpu: torchrun counts the devices itself
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = os.cpu_count() or 1
    most = max(gpus, cores * PER_DEVICE)
    if int(nproc) > most:
        raise TLCourseError(f"--nproc-per-node {nproc}: this machine has {cores} CPU core(s) and {gpus} GPU(s); "
                            f"start at most {most} processes (one per GPU, or --nproc-per-node auto)")


def bounded_rendezvous(argv: list[str], timeout: int) -> list[str]:
    """``argv`` with the rendezvous bounded by ``timeout`` seconds when machines must join (not --standalone)."""
    if "--standalone" in argv or "--rdzv-conf" in argv:
        return argv
    return ["--rdzv-conf", f"timeout={timeout},join_timeout={timeout},last_call_timeout=1", *argv]


def waiting_line(options: dict, timeout: int) -> str | None:
    """What a launcher that waits for other machines prints first (None on one machine)."""
    nnodes = str(options.get("nnodes", 1))
    if nnodes in ("1", "1:1"):
        return None
    where = options.get("rdzv_endpoint") or (f"{options.get('master_addr') or '127.0.0.1'}:"
                                             f"{options.get('master_port') or 29500}")
    return (f"waiting up to {timeout} s (--dist-timeout) for {nnodes} machines to join at {where}; this is "
            f"machine {options.get('node_rank') or 0}")


def rendezvous_failure(exc: BaseException, options: dict, timeout: int) -> str:
    """One line for a rendezvous that did not complete."""
    detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return (f"error: the {options.get('nnodes')} machines did not all join within {timeout} s ({detail}); start the "
            "same command on every machine with its own --node-rank and the same --master-addr/--master-port, "
            "or raise --dist-timeout")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

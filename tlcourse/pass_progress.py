"""Progress lines for the one-time caching pass when nobody watches a terminal.

On a terminal or in a notebook the pass is quiet until its summary line; piped to a file or a
CI log, a long pass (minutes on a CPU) would show nothing at all, so every tenth of the images
gets one flushed line: how many are done, the rate and the time left.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

__all__ = ["pass_progress", "watched"]


def watched() -> bool:
    """Whether someone sees output live: a terminal, or a Jupyter notebook."""
    if sys.stdout is not None and sys.stdout.isatty():
        return True
    shell = sys.modules.get("IPython") and getattr(sys.modules["IPython"], "get_ipython", lambda: None)()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def pass_progress(total: int, progress: str, steps: int = 10) -> Callable[[int], None] | None:
    """A ``report(done)`` that prints a line each ``total / steps`` images; None when not wanted."""
    if progress == "none" or watched() or total <= 0:
        return None
    started = time.perf_counter()
    every = max(1, -(-total // steps))
    state = {"next": every}

    def report(done: int) -> None:
        if done < state["next"] or done >= total:
            return
        state["next"] = (done // every + 1) * every
        seconds = time.perf_counter() - started
        rate = done / max(seconds, 1e-9)
        print(f"caching pass: {done}/{total} images ({100 * done // total} %), {rate:.0f} images/s, about "
              f"{(total - done) / max(rate, 1e-9):.0f} s left", flush=True)
    return report

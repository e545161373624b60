"""Processes a training run starts die with it: no DataLoader worker outlives a killed run.

DataLoader workers start from a fork server (see `windows.py`), so each worker's parent is
the server, and the server's parent is the training process. When the run is killed (kill -9,
an out-of-memory kill), nothing tells them: they used to keep running, holding ~700 MB each.
`die_with_parent()` asks the kernel (Linux `prctl(PR_SET_PDEATHSIG)`) to kill the calling
process when its parent ends; the server calls it as it starts (`forkserver_preload`), each
worker in its `worker_init_fn`, so the chain unwinds from the top. Elsewhere it does nothing.
"""
from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """SIGKILL this process when its parent process ends (Linux; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the request took hold
        os._exit(1)

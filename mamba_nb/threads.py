"""One torch thread for a stretch of tiny CPU ops: a decoding step, the scan's per-step loop.

Split over threads, an op of a few thousand elements costs a thread-pool wake-up and a barrier
worth more than its work, and on shared cores every op waits for the slowest thread (measured:
benchmarks/bench_generate.py, and the scan's loop: 255 steps took 126 ms to 3.7 s on 2 busy
threads, 21-37 ms on one). Big ops (whole-tensor passes, matmuls of a batch) keep every thread.
"""
from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread(device: torch.device, when: bool = True):
    """torch runs on one thread within, for ops on the CPU `device` (and `when`); elsewhere nothing changes."""
    threads = torch.get_num_threads()
    if not when or device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

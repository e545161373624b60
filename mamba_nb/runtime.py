"""The process a training run lives in: its `torchrun` group, its device, and the signals that stop it.

- `init_distributed` joins the group `torchrun` describes (DDP; gloo on CPU, nccl on CUDA) and
  `Dist` says which rank this is; `any_rank` / `mean_over_ranks` keep the ranks in step.
- `pick_device` resolves `--device auto`.
- `StopRequest`: Ctrl-C and SIGTERM ask the loop to stop after the current step (and save).

Not here: what a step does (`train.py`).
"""
from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import Optional

import torch


class TrainingError(RuntimeError):
    """The run cannot start or go on; the message says why and what to change."""


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str) -> Dist:
    """Join the process group `torchrun` describes in the environment (RANK, WORLD_SIZE, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    started = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        started = True
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), started)


def pick_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device={name!r} but torch sees no GPU; pass --device cpu (or auto)")
    if name == "cuda":  # one GPU per rank: torchrun's LOCAL_RANK
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return torch.device(name)


class StopRequest:
    """Ctrl-C and SIGTERM set a flag; the loop saves at the end of the step and returns.

    A second Ctrl-C interrupts at once (no save). Handlers are installed only in the
    main thread (Python's rule) and put back afterwards.
    """

    def __init__(self):
        self.reason: Optional[str] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank if it is true on one: all ranks must stop at the same step."""
    if not d.on:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.on:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values = values / d.world_size
    return values


def min_over_ranks(value: float, d: Dist, device: torch.device) -> float:
    """The smallest of each rank's `value` (every rank must run the same schedule: the slowest's)."""
    if not d.on:
        return value
    import torch.distributed as dist

    t = torch.tensor([float(value)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.item()

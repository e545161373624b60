"""Big scratch tensors kept across training steps (the scan's (L, B, N, D) states), on CPU, and the
guard that no backward reads them after they went back."""
from __future__ import annotations

import threading

import torch


class _Workspace:
    """Reuses the big (L, B, N, D) scratch tensors across steps, on CPU only.

    Why: a fresh 64 MB tensor is served by the OS page by page (glibc maps blocks this big and
    unmaps them on free), which made each allocation cost three times the multiply that fills it.
    CUDA and MPS have caching allocators already. Buffers come back only when the scan is done
    with them (end of backward, or end of forward when nothing needs a gradient); at most
    `max_bytes` are kept. `clear()` hands them back to the OS.
    """

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self._free: dict[tuple, list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple, like: torch.Tensor) -> torch.Tensor:
        key = (tuple(shape), like.dtype, like.device)
        with self._lock:
            bucket = self._free.get(key)
            if bucket:
                return bucket.pop()
        return torch.empty(shape, dtype=like.dtype, device=like.device)

    def give(self, *tensors: torch.Tensor) -> None:
        for t in tensors:
            # an inference tensor (made under torch.inference_mode) can never join autograd again:
            # pooled, it would crash the next training step that borrows it
            if t.device.type != "cpu" or t.is_inference():
                continue
            with self._lock:
                held = sum(b.numel() * b.element_size() for bucket in self._free.values() for b in bucket)
                if held + t.numel() * t.element_size() <= self.max_bytes:
                    self._free.setdefault((tuple(t.shape), t.dtype, t.device), []).append(t)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()


WORKSPACE = _Workspace()


def backward_once(ctx) -> None:
    """Refuse a second backward through one graph: the buffers it reads went back to the workspace
    after the first (and may hold another step's states by now)."""
    if ctx.done:
        raise RuntimeError(
            "the fast selective scan's backward ran twice on one graph (retain_graph=True); its buffers "
            "are reused after the first backward. Run the forward again, or use the scan path 'reference' (--scan reference)"
        )
    ctx.done = True

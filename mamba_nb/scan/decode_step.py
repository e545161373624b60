"""One generated token through a whole Mamba-1 block in the C kernel: `Block.step` in one call.

`block_step(block, h, state)` returns what `model.lm.Block.step` returns (h + mixer(norm(h)), with
the block's conv window and scan state advanced in place), computed by `mamba1_block_step` in
`scan_kernel.c`, or None where that cannot run; the caller then takes the PyTorch step. It runs
for a plain Mamba-1 block on CPU in float32, with the C kernel built (`compiled.available`, and
not `compiled.turned_off`), and no gradient wanted. A peft-wrapped projection (LoRA) is not a
plain `nn.Linear`: its adapters would be skipped, so such a block keeps the PyTorch step.

Why: a token is about 40 tiny tensor ops per block, each a few microseconds of dispatch for a few
hundred multiply-adds; generation at batch 1 was per-op overhead, not arithmetic
(`benchmarks/bench_generate.py` prints the step against the memory bound). Rows are split over
`torch.get_num_threads()` threads (one, inside `generate.decode_threads` for small batches).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import nn

from . import compiled


def _plain(block) -> bool:
    """A Mamba-1 block whose every weight the kernel may read directly."""
    from mamba_nb.model.mamba1 import MambaMixer

    mixer = block.mixer
    return (isinstance(mixer, MambaMixer) and mixer.scan_path in ("auto", "fast")
            and all(type(m) is nn.Linear for m in (mixer.in_proj, mixer.x_proj, mixer.dt_proj, mixer.out_proj))
            and type(mixer.conv1d) is nn.Conv1d)


def block_step(block, h: torch.Tensor, state) -> Optional[torch.Tensor]:
    """h (b, H) → h + mixer(norm(h)) (b, H), `state` (a `generate.LayerState`) advanced; None: not here."""
    if not _plain(block):
        return None
    mixer = block.mixer
    weights = [block.norm.weight, mixer.in_proj.weight, mixer.in_proj.bias, mixer.conv1d.weight, mixer.conv1d.bias,
               mixer.x_proj.weight, mixer.dt_proj.weight, mixer.dt_proj.bias, mixer.A_log, mixer.D,
               mixer.out_proj.weight, mixer.out_proj.bias]
    tensors = [h, state.conv, state.ssm] + [w for w in weights if w is not None]
    # plain tensors only (not an FSDP shard's DTensor): the kernel reads their memory as one array
    if not (compiled.runs_on(*tensors) and all(type(t.data) is torch.Tensor and t.is_contiguous() for t in tensors)):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None  # a graph is wanted: the kernel has no backward
    h = h.detach()
    batch, H = h.shape
    D, N = mixer.A_log.shape
    out = torch.empty_like(h)
    ptr = compiled._ptr
    lib = compiled._kernel().lib
    failed = compiled._run([functools.partial(
        lib.mamba1_block_step, batch, b0, b1, H, D, N, mixer.R, mixer.K, block.norm.eps, ptr(h), ptr(out),
        *(ptr(w) for w in weights[:5]), ptr(state.conv), *(ptr(w) for w in weights[5:10]), ptr(state.ssm),
        *(ptr(w) for w in weights[10:]))
        for b0, b1 in compiled._split(batch, torch.get_num_threads())])
    if any(failed):
        raise MemoryError("the C decoding step could not allocate its row buffers")
    return out

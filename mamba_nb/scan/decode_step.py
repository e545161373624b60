"""One generated token through a whole Mamba-1 block in the C kernel: `Block.step` in one call.

`block_step(block, h, state)` returns what `model.lm.Block.step` returns (h + mixer(norm(h)), with
the block's conv window and scan state advanced in place), computed by `mamba1_block_step` in
`scan_kernel.c`, or None where that cannot run; the caller then takes the PyTorch step. It runs
for a plain Mamba-1 block on CPU in float32 where the mixer would not take the CUDA kernels, with
the C kernel built (`compiled.available`, and not `compiled.turned_off`), and no gradient wanted.
A peft-wrapped projection (LoRA) is not a plain `nn.Linear`: its adapters would be skipped, so
such a block keeps the PyTorch step.

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

from mamba_nb.model import scan as model_scan

from . import compiled


def _plain(block) -> bool:
    """A Mamba-1 block whose every weight the kernel may read directly."""
    from mamba_nb.model.mamba1 import MambaMixer

    mixer = block.mixer
    return (isinstance(mixer, MambaMixer)
            and all(type(m) is nn.Linear for m in (mixer.in_proj, mixer.x_proj, mixer.dt_proj, mixer.out_proj))
            and type(mixer.conv1d) is nn.Conv1d)


_PLAIN = (torch.Tensor, nn.Parameter)  # the types whose memory is the tensor's own array


def _takes(tensors, grad: bool = True) -> bool:
    """The kernel may read these: plain CPU float32 arrays (not an FSDP shard's DTensor), contiguous,
    none wanting a gradient (`grad`: checked; the kernel has no backward)."""
    grad = grad and torch.is_grad_enabled()
    for t in tensors:
        if (type(t) not in _PLAIN or t.dtype is not torch.float32 or t.device.type != "cpu"
                or not t.is_contiguous() or grad and t.requires_grad):
            return False
    return True


def _weights(block) -> Optional[tuple]:
    """The block's weights in the kernel's order (biases may be None), or None: not a block it runs."""
    if not _plain(block):
        return None
    mixer = block.mixer
    weights = (block.norm.weight, mixer.in_proj.weight, mixer.in_proj.bias, mixer.conv1d.weight, mixer.conv1d.bias,
               mixer.x_proj.weight, mixer.dt_proj.weight, mixer.dt_proj.bias, mixer.A_log, mixer.D,
               mixer.out_proj.weight, mixer.out_proj.bias)
    return weights if _takes([w for w in weights if w is not None], grad=False) else None


def block_step(block, h: torch.Tensor, state) -> Optional[torch.Tensor]:
    """h (b, H) → h + mixer(norm(h)) (b, H), `state` (a `generate.LayerState`) advanced; None: not here.

    The block's weights are looked up once per generation and kept in `state.weights` (module
    attribute lookups cost more than the kernel's arithmetic here); a state belongs to one call
    of `generate` or `infill`, over which the model does not change."""
    if state.weights is None:
        state.weights = _weights(block) or ()
    weights = state.weights
    mixer = block.mixer
    # the mixer's own path decides, each step: the reference loop, or the CUDA kernels, are not ours to replace
    if not weights or not compiled.runs_on() or not _takes((h, state.conv, state.ssm)) or (
            mixer.scan_path == "reference" or model_scan.kernels_for(mixer.scan_path, h) is not None) or (
            torch.is_grad_enabled() and any(w is not None and w.requires_grad for w in weights)):
        return None
    batch, H = h.shape
    D, N = mixer.A_log.shape
    out = torch.empty_like(h)
    p = [None if w is None else w.data_ptr() for w in weights]
    call = functools.partial(compiled._kernel().lib.mamba1_block_step, batch)
    rest = (H, D, N, mixer.R, mixer.K, block.norm.eps, h.data_ptr(), out.data_ptr(), *p[:5], state.conv.data_ptr(),
            *p[5:10], state.ssm.data_ptr(), *p[10:])
    threads = torch.get_num_threads()
    if batch == 1 or threads == 1:  # (the usual case: no pool, no split)
        failed = [call(0, batch, *rest)]
    else:
        failed = compiled._run([functools.partial(call, b0, b1, *rest) for b0, b1 in compiled._split(batch, threads)])
    if any(failed):
        raise MemoryError("the C decoding step could not allocate its row buffers")
    return out

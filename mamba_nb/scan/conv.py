"""The Mamba-1 mixer's causal convolution with its taps cut at document starts.

Before the scan, each channel goes through a causal depthwise convolution of width K (4): position
t mixes the tokens t-K+1 .. t. In a window packed from several documents, the first K-1 tokens of a
document would still see the last tokens of the one before. Given `doc_starts` ((batch, L) bool,
True at a document's first token), a tap is kept only when the token it reads belongs to the same
document, the same numbers as convolving each document on its own (zeros before its start).

- `causal_conv1d`: PyTorch, HF's `causal_conv1d_fn` signature plus `doc_starts`; autograd gives its
  backward (K shifted multiply-adds, cheap next to the scan).
- `causal_conv1d_kernel`: the `causal-conv1d` CUDA kernel, which cuts taps itself from a `seq_idx`
  (one number per document). It needs CUDA and the package, so the tests here never run it (they run
  its plumbing against a stand-in).
- `positions_in_document`: how far each token is from its document's start (also the Llama peer's
  position ids).

What this module does not do: decide when to reset (the window's starts reach it through our mixer's
`doc_starts`, `model/mamba1.py`) or reset the scan state (`selective.py`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def positions_in_document(doc_starts: torch.Tensor) -> torch.Tensor:
    """(batch, L) long: 0 at each document start (and at position 0), then 1, 2, ... up to the next."""
    L = doc_starts.shape[-1]
    pos = torch.arange(L, device=doc_starts.device)
    last_start = torch.where(doc_starts, pos, 0).cummax(-1).values  # (batch, L): the start at or before t
    return pos - last_start


def _activate(out: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    if activation is None:
        return out
    if activation in ("silu", "swish"):
        return F.silu(out)
    from transformers.activations import ACT2FN

    return ACT2FN[activation](out)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  activation: Optional[str] = None, *, doc_starts: torch.Tensor, **unused) -> torch.Tensor:
    """x (batch, D, L), weight (D, K), bias (D,) → (batch, D, L): HF's causal convolution, no tap
    reaching back across a document start."""
    batch, D, L = x.shape
    if doc_starts.shape != (batch, L):
        raise ValueError(f"doc_starts has shape {tuple(doc_starts.shape)}, the convolution's input (batch, D, L) "
                         f"{tuple(x.shape)}: pass one flag per (batch, position)")
    K = weight.shape[-1]
    since = positions_in_document(doc_starts)  # (batch, L)
    xw = x.to(weight.dtype)
    # F.conv1d with padding K-1 computes out[t] = sum_lag weight[K-1-lag] * x[t-lag]; here term by term,
    # each lag masked where the token it reads lies in an earlier document
    out = xw * weight[:, K - 1, None]  # lag 0: the token itself
    for lag in range(1, min(K, L)):
        same_doc = (since >= lag).unsqueeze(1).to(xw.dtype)  # (batch, 1, L)
        shifted = F.pad(xw[..., : L - lag], (lag, 0))  # x[t - lag], zeros before the window
        out = out + shifted * same_doc * weight[:, K - 1 - lag, None]
    if bias is not None:
        out = out + bias[:, None]
    return _activate(out, activation).to(x.dtype)


def causal_conv1d_kernel(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                         activation: Optional[str] = None, *, doc_starts: torch.Tensor, **unused) -> torch.Tensor:
    """The same through the `causal-conv1d` CUDA kernel and its `seq_idx` (CUDA only; not run by the tests)."""
    from causal_conv1d import causal_conv1d_fn

    # seq_idx: (batch, L) int32, one number per document; the kernel takes it in the channel-last
    # layout only (x.stride(1) == 1)
    seq_idx = torch.cumsum(doc_starts, dim=-1, dtype=torch.int32)
    x = x.transpose(1, 2).contiguous().transpose(1, 2)
    return causal_conv1d_fn(x, weight, bias, seq_idx=seq_idx, activation=activation)

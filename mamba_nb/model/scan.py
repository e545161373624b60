"""Mamba-1's sequence operators, with the choice of implementation made here and nowhere else.

The mixer (`mamba1.py`) calls five functions; each picks its path from `path` and the tensors:

- `selective_scan`: the selective scan over a sequence, softplus(dt + dt_bias) inside;
  `selective_scan_time_major`, the fast one on (L, b, d) tensors (the mixer's CPU path).
- `causal_conv`: the causal depthwise convolution + SiLU (taps cut at document starts if given);
  `causal_conv_time_major`, the same on (L, b, c) tensors (the mixer's CPU path).
- `conv_state_of`, `conv_step`, `ssm_step`: the conv window and scan state a prompt leaves, and one
  O(1) step of each for a generated token.
- `fused_inner`: mamba-ssm's whole-mixer training kernel (`mamba_inner_fn`), or None.

Paths (`PATHS`): "kernels" (mamba-ssm / causal-conv1d, CUDA; `kernels.py` imports their public
functions), "fast" (our PyTorch scan, `mamba_nb.scan.selective`, whose recurrence runs in the C
kernel on CPU float32), "reference" (`reference_scan`, the recurrence one step at a time as the
paper writes it: slow, the tests' yardstick), "auto" (kernels when they import and the tensors are
on CUDA, else fast). With document starts the kernels path keeps causal-conv1d (its `seq_idx`)
but scans with ours: released mamba-ssm's `selective_scan_fn` takes no `seq_idx`.

What this module does not do: hold weights (`mamba1.py`), Mamba-2's scan (`ssd.py`), or the scan
math of the fast path (`mamba_nb/scan/`).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from mamba_nb.scan import compiled
from mamba_nb.scan import conv as cut_conv
from mamba_nb.scan import selective as fast

from . import kernels

PATHS = ("auto", "kernels", "fast", "reference")


def check_path(path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"scan path {path!r} is not one of {PATHS}; use 'auto' unless comparing paths")
    return path


def runs_on_cuda(t: torch.Tensor) -> bool:
    """Whether the kernels may take `t` (a function of its own so tests can stand in for a GPU)."""
    return t.is_cuda


def kernels_for(path: str, t: torch.Tensor) -> Optional[kernels.Kernels]:
    """The kernels when `path` runs them for tensor `t`, else None ("kernels" that cannot run: an error)."""
    if check_path(path) in ("fast", "reference") or (path == "auto" and not runs_on_cuda(t)):
        return None  # (auto on CPU: not even a probe)
    found = kernels.loaded()
    if path == "kernels":
        if not found.complete:
            raise RuntimeError(f"scan path 'kernels' requested but the kernels are not available: {found.why_not}")
        if not runs_on_cuda(t):
            raise RuntimeError(f"scan path 'kernels' needs tensors on CUDA, these are on {t.device}; "
                               "move the model with .to('cuda'), or use path 'fast'")
    return found if found.complete and runs_on_cuda(t) else None


def reference_scan(u, dt, A, B, C, D=None, z=None, dt_bias=None, doc_starts=None):
    """The selective scan one step at a time: u, dt, z (b, d, L); A (d, n); B, C (b, n, L); D, dt_bias (d,).

    Returns y (b, d, L) and the last state h (b, d, n). Plain autograd, float32 at least.
    """
    compute = torch.promote_types(u.dtype, torch.float32)
    u, dt, A, B, C = (t.to(compute) for t in (u, dt, A, B, C))
    dt = F.softplus(dt if dt_bias is None else dt + dt_bias.to(compute)[:, None])  # (b, d, L), > 0
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])  # (b, d, n)
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(dt[:, :, t, None] * A)  # (b, d, n) in (0, 1): A < 0
        if doc_starts is not None:  # a document's first token: forget the previous one
            decay = decay * (~doc_starts[:, t]).to(compute)[:, None, None]
        h = decay * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]  # discretised B (ZOH-Euler) x u
        ys.append((h @ C[:, :, t, None]).squeeze(-1))  # (b, d): read the state out through C
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(compute)[:, None] * u  # the skip connection
    if z is not None:
        y = y * F.silu(z.to(compute))  # the gate
    return y, h


def selective_scan(u, dt, A, B, C, D=None, z=None, dt_bias=None, *, doc_starts=None,
                   return_last_state: bool = False, path: str = "auto"):
    """`(y, last)`: the scan on the chosen path (shapes as `reference_scan`; `last` None unless asked).

    doc_starts: (b, L) bool, True where the state starts afresh. y is float32 (float64 stays float64).
    """
    if check_path(path) == "reference":
        y, h = reference_scan(u, dt, A, B, C, D, z, dt_bias, doc_starts)
        return y, (h if return_last_state else None)
    found = kernels_for(path, u)
    if found is not None and doc_starts is None:
        out = found.selective_scan_fn(u, dt, A, B, C, D, z, dt_bias, delta_softplus=True,
                                      return_last_state=return_last_state)
    else:
        out = fast.selective_scan(u, dt, A, B, C, D, z=z, delta_bias=dt_bias, delta_softplus=True,
                                  return_last_state=return_last_state, doc_starts=doc_starts)
    return out if return_last_state else (out, None)


def selective_scan_time_major(u, dt, A, B, C, D=None, z=None, dt_bias=None, *, doc_starts=None):
    """`(y, last)` on the fast scan in its own layout: u, dt, z (L, b, d); B, C (L, b, n); doc_starts (b, L).

    The mixer's CPU path (`mamba1.MambaMixer.forward_time_major`): no permute copies around the scan,
    and on CPU float32 softplus(dt + dt_bias), the D skip and the gate run inside the C kernel.
    """
    return fast.scan_time_major(u, dt, A, B, C, D, z, dt_bias, starts=None if doc_starts is None else doc_starts.t())


def causal_conv(x, weight, bias=None, *, doc_starts=None, path: str = "auto"):
    """x (b, c, L), weight (c, K), bias (c,) → SiLU(causal depthwise conv of x) (b, c, L)."""
    found = kernels_for(path, x)
    if found is not None:
        seq_idx = None
        if doc_starts is not None:  # one number per document; the kernel wants x channel-last for it
            seq_idx = torch.cumsum(doc_starts, dim=-1, dtype=torch.int32)
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
        return found.causal_conv1d_fn(x, weight, bias, seq_idx=seq_idx, activation="silu")
    if doc_starts is not None:
        return cut_conv.causal_conv1d(x, weight, bias, "silu", doc_starts=doc_starts)
    L, K = x.shape[-1], weight.shape[-1]
    # padding K-1 on both sides, keep the first L outputs: position t sees x[t-K+1 .. t] only
    out = F.conv1d(x.to(weight.dtype), weight[:, None, :], bias, padding=K - 1, groups=x.shape[1])[..., :L]
    return F.silu(out).to(x.dtype)


class _ShiftConv(torch.autograd.Function):
    """out[t] = bias + sum_j weight[:, K-1-j] * x[t-j] * keep_j[t], time-major, with its own backward.

    x (L, b, c), weight (c, K), bias (c,) or None, keep (L, b, 1) float or None: how far each token is
    from its document's start (a tap j is kept where it is >= j). Its own backward because autograd
    through K in-place slice updates writes a zeroed full-size gradient and a copy per slice (over
    half of the conv's cost); here each tap is one multiply-add per direction. On CPU in float32 the
    forward runs in the C kernel (`compiled.conv_forward`: each output row written once).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, since):
        L, K = x.shape[0], weight.shape[-1]
        if compiled.runs_on(*(t for t in (x, weight, bias) if t is not None)):
            out = compiled.conv_forward(x, weight, bias, since)  # the same sum, each output row written once
        else:
            out = x * weight[:, K - 1] if bias is None else torch.addcmul(bias, x, weight[:, K - 1])  # lag 0
            for lag in range(1, min(K, L)):
                term = x[: L - lag] * weight[:, K - 1 - lag]  # (L-lag, b, c): x[t-lag] for t >= lag
                if since is not None:
                    term.mul_(since[lag:] >= lag)  # the tap stays inside the document
                out[lag:] += term
        ctx.save_for_backward(x, weight, since)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight, since = ctx.saved_tensors
        L, K = x.shape[0], weight.shape[-1]
        g = g.contiguous()
        grad_x = g * weight[:, K - 1]
        grad_w = torch.empty_like(weight)
        grad_w[:, K - 1] = (g * x).sum((0, 1))
        for lag in range(1, K):
            if lag >= L:
                grad_w[:, K - 1 - lag] = 0
                continue
            g_lag = g[lag:] if since is None else g[lag:] * (since[lag:] >= lag)  # (L-lag, b, c)
            grad_x[: L - lag].addcmul_(g_lag, weight[:, K - 1 - lag])
            grad_w[:, K - 1 - lag] = (g_lag * x[: L - lag]).sum((0, 1))
        grad_b = g.sum((0, 1)) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def causal_conv_time_major(x, weight, bias=None, *, doc_starts=None):
    """x (L, b, c) time-major, weight (c, K), bias (c,) → SiLU(causal depthwise conv of x) (L, b, c).

    The conv as K shifted multiply-adds over whole (b, c) rows: position t reads x[t-K+1 .. t], a tap
    dropped where the token it reads lies before the current document's start (`doc_starts` (b, L)).
    Why not F.conv1d: on CPU its depthwise backward took seconds a layer on a 2,048-token row (over
    80 % of a training step there); these few whole-tensor passes take milliseconds.
    """
    since = None if doc_starts is None else cut_conv.positions_in_document(doc_starts).t()[:, :, None]  # (L, b, 1)
    return F.silu(_ShiftConv.apply(x.to(weight.dtype), weight, bias, since))


def conv_state_of(x: torch.Tensor, K: int) -> torch.Tensor:
    """The conv window after a prompt x (b, c, L): its last K inputs (b, c, K), zeros before its start."""
    window = x[..., -K:]
    return F.pad(window, (K - window.shape[-1], 0)).contiguous()


def conv_step(x, conv_state, weight, bias=None, *, path: str = "auto"):
    """One token: x (b, c) enters the window conv_state (b, c, K) in place → SiLU(conv) (b, c)."""
    found = kernels_for(path, x)
    if found is not None:
        return found.causal_conv1d_update(x, conv_state, weight, bias, activation="silu")
    # drop the oldest input, append x: one new window, copied into the state (a step is a few dozen
    # tiny ops, so each one saved counts)
    conv_state.copy_(torch.cat([conv_state[:, :, 1:], x.unsqueeze(-1)], dim=-1))
    out = (conv_state * weight).sum(-1)  # (b, c): the window against the taps
    if bias is not None:
        out = out + bias
    return F.silu(out)


def ssm_step(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, *, path: str = "auto"):
    """One token of the scan: state (b, d, n) updated in place; x, dt, z (b, d); B, C (b, n) → y (b, d)."""
    found = kernels_for(path, x)
    if found is not None:
        return found.selective_state_update(state, x, dt, A, B, C, D, z=z, dt_bias=dt_bias, dt_softplus=True)
    return fast.selective_state_update(state, x, dt, A, B, C, D, dt_bias=dt_bias, dt_softplus=True, z=z)


def fused_inner(path: str, xz: torch.Tensor):
    """mamba-ssm's `mamba_inner_fn` (conv, x_proj, dt_proj, scan, gate and out_proj in one kernel with
    its own backward) when `path` runs kernels for `xz`, else None (the mixer's step-by-step form)."""
    found = kernels_for(path, xz)
    return None if found is None else found.mamba_inner_fn

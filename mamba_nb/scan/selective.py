"""Mamba-1's selective scan in plain PyTorch, with a hand-written backward that is linear in length.

What it computes (the same function as `mamba_ssm`'s `selective_scan_fn` and HF's reference loop,
zero initial state):

    dt[b,d,t]   = softplus(delta[b,d,t] + delta_bias[d])            (each optional)
    h[b,d,n,t]  = exp(dt[b,d,t] * A[d,n]) * h[b,d,n,t-1] + dt[b,d,t] * u[b,d,t] * B[b,n,t]
    y[b,d,t]    = sum_n C[b,n,t] * h[b,d,n,t] + D[d] * u[b,d,t]
    out[b,d,t]  = y[b,d,t] * silu(z[b,d,t])                          (z optional)

and, when asked, the final state h[..., L-1] (what HF keeps in the cache as the ssm state).

Why it is fast without a custom kernel. HF's fallback indexes one time step at a time out of
full-size tensors; autograd then writes a full-size zero gradient for every slice, so its
backward is O(L^2). Here one `torch.autograd.Function` owns the recurrence: the forward keeps
every state (L, B, D, N) and the decays, the backward runs the adjoint recurrence in reverse over
the same buffers, and everything else (the contractions with B, C and the gradients of dt and A)
is done in a few whole-tensor passes: batched matmuls and in-place products. Each time step costs
one in-place `addcmul_` on a (B, D, N) slice, forward and backward. Work and memory are linear in
L. `exp` only ever sees dt * A <= 0 (dt >= 0 after softplus, A < 0), so nothing can overflow;
the recurrence is the reference's, step for step, so no chunk-size or cumulative-sum
stability question arises.

Tensor operations it relies on (all standard, CPU, CUDA and MPS): permute/contiguous/view,
mul/mul_, exp_, addcmul_, bmm, mm, softplus, silu, zero_, clone, empty/zeros. Nothing is
compiled and there is no CPU-only extension.

What it does not do: it does not take an initial state (neither does the kernel HF calls; HF's
prefill starts from zero too), it does not do Mamba-2's scalar-decay scan (HF's chunked path
already uses matmuls there), and it does not touch the model: `mamba_nb.scan.patch` plugs it in.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


class _Recurrence(torch.autograd.Function):
    """h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t (outer) B_t ;  y_t = h_t . C_t   (time-major).

    Inputs: dt, x (L, B, D); A (D, N); Bm, Cm (L, B, N). Outputs: y (L, B, D), last state (B, D, N).
    """

    @staticmethod
    def forward(ctx, dt, x, A, Bm, Cm):
        L, batch, D = dt.shape
        N = A.shape[1]
        LB = L * batch
        dtx = dt * x  # (L, B, D)
        # H starts as the inputs dt*x*B and becomes the states in place: one fused op per step.
        H = dtx.unsqueeze(-1) * Bm.unsqueeze(2)  # (L, B, D, N)
        decay = torch.mul(dt.unsqueeze(-1), A).exp_()  # (L, B, D, N), entries in (0, 1]
        for t in range(1, L):
            H[t].addcmul_(H[t - 1], decay[t])
        y = torch.bmm(H.view(LB, D, N), Cm.view(LB, N, 1)).view(L, batch, D)
        ctx.save_for_backward(dt, x, A, Bm, Cm, dtx, H, decay)
        return y, H[L - 1].clone()

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        dt, x, A, Bm, Cm, dtx, H, decay = ctx.saved_tensors
        L, batch, D = dt.shape
        N = A.shape[1]
        LB = L * batch
        if grad_y is None:
            grad_y = torch.zeros_like(dtx)
        grad_y = grad_y.contiguous()
        # G[t] = dLoss/dh_t, the adjoint state: starts as the direct term C_t * grad_y_t and
        # accumulates from the future in place, the mirror image of the forward.
        G = grad_y.unsqueeze(-1) * Cm.unsqueeze(2)  # (L, B, D, N)
        if grad_last is not None:
            G[L - 1].add_(grad_last)
        for t in range(L - 2, -1, -1):
            G[t].addcmul_(G[t + 1], decay[t + 1])
        Gv, Hv = G.view(LB, D, N), H.view(LB, D, N)
        grad_C = torch.bmm(grad_y.view(LB, 1, D), Hv).view(L, batch, N)
        grad_B = torch.bmm(dtx.view(LB, 1, D), Gv).view(L, batch, N)
        grad_dtx = torch.bmm(Gv, Bm.view(LB, N, 1)).view(L, batch, D)
        # P = dLoss/d(dt*A) = G_t * h_{t-1} * decay_t (h_{-1} = 0), computed in G's buffer.
        P = G.mul_(decay)
        P[1:].mul_(H[: L - 1])
        P[0].zero_()
        # dA[d, n] = sum_{t,b} P * dt: a batched (over d) dot product along t*b.
        grad_A = torch.bmm(dt.view(LB, D).t().unsqueeze(1), P.view(LB, D, N).transpose(0, 1)).view(D, N)
        # d dt via the decay: sum_n P * A  (P is no longer needed, scale it in place)
        grad_dt_decay = torch.mm(P.mul_(A).view(LB * D, N), A.new_ones(N, 1)).view(L, batch, D)
        grad_dt = grad_dtx * x + grad_dt_decay
        grad_x = grad_dtx * dt
        return grad_dt, grad_x, grad_A, grad_B, grad_C


def selective_scan(
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    z: Optional[torch.Tensor] = None,
    delta_bias: Optional[torch.Tensor] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    **unused,
):
    """The selective scan with the signature and layout of HF's `mamba_selective_scan`.

    hidden_states (the scan input u), dt (before bias and softplus), z: (batch, D, L);
    A: (D, N); B, C: (batch, N, L); D, delta_bias: (D,).
    Returns out (batch, D, L) and, if `return_last_state`, the final state (batch, D, N).
    Computes in float32 at least (float64 stays float64), like the kernel; `**unused` swallows
    HF's extra switches (`use_mambapy`, ...) so it is a drop-in for HF's function.
    """
    if B.dim() != 3 or C.dim() != 3:
        raise ValueError(
            f"selective_scan takes input-dependent B and C of shape (batch, state, length); got B "
            f"{tuple(B.shape)} and C {tuple(C.shape)} (variable-group or time-invariant B/C are not supported)"
        )
    compute = torch.promote_types(hidden_states.dtype, torch.float32)
    dt = dt.to(compute)
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    uc = hidden_states.to(compute)

    def time_major(t):  # (batch, X, L) -> (L, batch, X), contiguous for per-step slices
        return t.to(compute).permute(2, 0, 1).contiguous()

    y, last = _Recurrence.apply(time_major(dt), time_major(uc), A.to(compute).contiguous(),
                                time_major(B), time_major(C))
    out = y.permute(1, 2, 0)  # (batch, D, L)
    if D is not None:
        out = out + uc * D.to(compute)[:, None]
    if z is not None:
        out = out * F.silu(z.to(compute))
    if return_last_state:
        return out, last
    return out

"""Mamba-1's selective scan in plain PyTorch, with a hand-written backward that is linear in length.

What it computes (the same function as `mamba_ssm`'s `selective_scan_fn` and HF's reference loop,
zero initial state):

    dt[b,d,t]   = softplus(dt_in[b,d,t] + delta_bias[d])            (each step optional)
    h[b,d,n,t]  = exp(dt[b,d,t] * A[d,n]) * h[b,d,n,t-1] + dt[b,d,t] * u[b,d,t] * B[b,n,t]
    y[b,d,t]    = sum_n C[b,n,t] * h[b,d,n,t] + D[d] * u[b,d,t]
    out[b,d,t]  = y[b,d,t] * silu(z[b,d,t])                          (z optional)

and, when asked, the final state h[..., L-1] (what HF keeps in the cache as the ssm state).

Resets at document starts (`doc_starts`, (batch, L) bool, optional): where it is True the state
starts afresh, h[b,d,n,t] = dt * u * B, as if the window began there. That is the decay
exp(dt * A) set to 0 at those positions, nothing else: the forward loop then forgets the previous
document, and the backward, which runs the adjoint recurrence through the same stored decays, stops
there too (no gradient crosses the boundary, and the zeroed decay has no gradient for dt or A).
Used to keep the documents of a packed training window apart (`mamba_nb.doc_reset`).

Why it is fast without a custom kernel. HF's fallback indexes one time step at a time out of
full-size tensors; autograd then writes a full-size zero gradient for every slice, so its
backward is O(L^2). Here one `torch.autograd.Function` owns the recurrence: the forward keeps
every state (L, B, N, D) and the decays, the backward runs the adjoint recurrence in reverse over
the same buffers, and everything else (the contractions with B and C, the gradients of dt and A)
is a few whole-tensor passes: batched matrix-vector products and in-place products. Each time
step costs one in-place `addcmul_` on a (B, N, D) slice, forward and backward. Work and memory
are linear in L. `exp` only ever sees dt * A <= 0 (dt >= 0 after softplus, A < 0), so nothing can
overflow, and the recurrence is the reference's, step for step: no chunk size, no cumulative
sums, no stability trade-off. (A chunked variant was considered: on CPU every extra whole-tensor
pass costs about as much as the 256 per-step ops it would save.)

Tensor operations it relies on (all standard; CPU, CUDA and MPS): permute, transpose, view,
contiguous, clone, mul/mul_ (with out=), exp_, addcmul_, add_, bmm, sum, zero_, softplus, silu,
empty, zeros_like.

On CPU in float32 the recurrence itself runs in a small C kernel instead (`compiled.py`, built on
first use with the system's C compiler): the same function, with each (row, channel)'s state kept
in cache instead of a dozen passes over the (L, B, N, D) tensors, 1.38-1.47x the course step's speed
(benchmarks/bench_train_cpu.py). `_Recurrence` below is what runs everywhere else (GPU, float64,
no compiler) and what the kernel is tested against.

What it does not do: it does not take an initial state (neither does mamba-ssm's kernel; a
prefill starts from zero too), it does not do Mamba-2's scalar-decay scan (`model/ssd.py`, chunked,
already matmuls), and it does not hold weights: our mixer (`mamba_nb.model.mamba1`) calls
`scan_time_major`, the same scan on the time-major tensors the recurrence runs in (no permute
copies), through `model/scan.py`, which chooses the path.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from mamba_nb.threads import one_thread

from . import compiled
from .workspace import WORKSPACE, backward_once


class _Recurrence(torch.autograd.Function):
    """h_t = exp(dt_t * A) * h_{t-1} + dt_t * x_t (outer) B_t ;  y_t = C_t . h_t   (time-major).

    Inputs: dt, x (L, B, D); A (D, N); Bm, Cm (L, B, N); resets: None, or the time-major flat
    indices t * B + b (long) where the state starts afresh. Outputs: y (L, B, D), last state
    (B, D, N). States are laid out (L, B, N, D): D innermost makes every broadcast a contiguous
    row operation and every contraction over n or d a batched matrix-vector product, the layout
    measured fastest for these shapes on CPU.
    """

    @staticmethod
    def forward(ctx, dt, x, A, Bm, Cm, resets):
        L, batch, D = dt.shape
        N = A.shape[1]
        LB = L * batch
        At = A.t().contiguous()  # (N, D)
        dtx = dt * x  # (L, B, D)
        # H starts as the inputs B (outer) dt*x and becomes the states in place: one fused op per step.
        H = torch.mul(Bm.unsqueeze(-1), dtx.unsqueeze(2), out=WORKSPACE.take((L, batch, N, D), dt))
        decay = torch.mul(dt.unsqueeze(2), At, out=WORKSPACE.take((L, batch, N, D), dt)).exp_()  # in (0, 1]
        if resets is not None:
            # a zero decay drops h_{t-1}: the state starts afresh at a document's first token. The backward
            # reads the same buffer, so it stops there too.
            decay.view(LB, N, D).index_fill_(0, resets, 0.0)
        with one_thread(dt.device):
            for t in range(1, L):
                H[t].addcmul_(H[t - 1], decay[t])
        y = torch.bmm(Cm.view(LB, 1, N), H.view(LB, N, D)).view(L, batch, D)
        last = H[L - 1].transpose(1, 2).clone(memory_format=torch.contiguous_format)  # (B, D, N), HF's; a copy: H is reused
        if any(ctx.needs_input_grad):
            ctx.save_for_backward(dt, x, At, Bm, Cm, dtx, H, decay)
            ctx.done = False
        else:
            WORKSPACE.give(H, decay)
        return y, last

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        backward_once(ctx)
        dt, x, At, Bm, Cm, dtx, H, decay = ctx.saved_tensors
        L, batch, D = dt.shape
        N = At.shape[0]
        LB = L * batch
        grad_y = torch.zeros_like(dtx) if grad_y is None else grad_y.contiguous()
        # G[t] = dLoss/dh_t, the adjoint state: starts as the direct term C_t (outer) grad_y_t and
        # accumulates from the future in place, the mirror image of the forward.
        G = torch.mul(Cm.unsqueeze(-1), grad_y.unsqueeze(2), out=WORKSPACE.take((L, batch, N, D), dt))
        if grad_last is not None:
            G[L - 1].add_(grad_last.transpose(1, 2))
        with one_thread(dt.device):
            for t in range(L - 2, -1, -1):
                G[t].addcmul_(G[t + 1], decay[t + 1])
        Gv, Hv = G.view(LB, N, D), H.view(LB, N, D)
        grad_C = torch.bmm(Hv, grad_y.view(LB, D, 1)).view(L, batch, N)
        grad_B = torch.bmm(Gv, dtx.view(LB, D, 1)).view(L, batch, N)
        grad_dtx = torch.bmm(Bm.view(LB, 1, N), Gv).view(L, batch, D)
        # P = dLoss/d(dt*A) = G_t * h_{t-1} * decay_t (h_{-1} = 0), in G's buffer.
        P = G.mul_(decay)
        P[1:].mul_(H[: L - 1])
        P[0].zero_()
        # d dt through the decay: sum_n P * A (into decay's buffer, free now)
        grad_dt_decay = torch.mul(P, At, out=decay).sum(2)  # (L, B, D)
        # dA[d, n] = sum_{t,b} P * dt
        grad_A = P.mul_(dt.unsqueeze(2)).view(LB, N, D).sum(0).t()
        WORKSPACE.give(H, decay, G)
        grad_dt = grad_dtx * x + grad_dt_decay
        grad_x = grad_dtx * dt
        return grad_dt, grad_x, grad_A, grad_B, grad_C, None


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
    doc_starts: Optional[torch.Tensor] = None,
    **unused,
):
    """The selective scan with the signature and layout of HF's `mamba_selective_scan`.

    hidden_states (the scan input u), dt (before bias and softplus), z: (batch, D, L);
    A: (D, N); B, C: (batch, N, L); D, delta_bias: (D,). doc_starts: (batch, L) bool, True where
    the state starts afresh (module docstring, "Resets"); None: one stream.
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

    def time_major(t):  # (batch, X, L) -> (L, batch, X), contiguous for per-step slices
        return t.permute(2, 0, 1).to(compute).contiguous()

    if doc_starts is not None and doc_starts.shape != (hidden_states.shape[0], hidden_states.shape[2]):
        raise ValueError(f"doc_starts has shape {tuple(doc_starts.shape)}, the scan's input (batch, D, L) "
                         f"{tuple(hidden_states.shape)}: pass one flag per (batch, position)")
    y, last = scan_time_major(time_major(hidden_states), time_major(dt), A, time_major(B), time_major(C), D,
                              None if z is None else time_major(z), delta_bias, delta_softplus,
                              starts=None if doc_starts is None else doc_starts.t())
    out = y.permute(1, 2, 0)  # (batch, D, L), a view: HF transposes it back to (batch, L, D)
    if return_last_state:
        return out, last
    return out


def scan_time_major(x, dt, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = True, *,
                    starts: Optional[torch.Tensor] = None):
    """The same scan on time-major tensors: x, dt, z (L, batch, D); B, C (L, batch, N); A (D, N); D,
    delta_bias (D,); starts (L, batch) bool or None. Returns y (L, batch, D) and the last state (batch, D, N).

    The layout the recurrence runs in, so a caller that already holds its tensors time-major (the
    mixer's CPU path, `mamba_nb.model.mamba1`) pays no permute copies around the scan.
    """
    compute = torch.promote_types(x.dtype, torch.float32)
    if delta_softplus and None not in (delta_bias, D, z) and compiled.runs_on(dt, x):
        # the whole of it in the C kernel: softplus(dt + bias) before the recurrence, D skip and gate after
        # it, each row while it is in cache (forward and backward), instead of ~15 whole-tensor passes
        return compiled.fused_scan(dt, x, A.contiguous(), B, C, delta_bias, D, z, starts)
    # Everything around the recurrence also runs time-major on contiguous tensors: mixing the
    # (batch, D, L) views HF passes with permuted ones made these few elementwise ops (and their
    # backward) cost over half as much as the scan itself.
    dt, x = dt.to(compute), x.to(compute)
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)
    if delta_softplus:
        dt = F.softplus(dt)
    A, B, C = A.to(compute).contiguous(), B.to(compute).contiguous(), C.to(compute).contiguous()
    if compiled.runs_on(dt, x):  # the C kernel: the same recurrence, one pass (compiled.py)
        y, last = compiled.recurrence(dt, x, A, B, C, starts)
    else:
        resets = None if starts is None else starts.reshape(-1).nonzero().squeeze(1)  # flat indices t * batch + b
        y, last = _Recurrence.apply(dt.contiguous(), x.contiguous(), A, B, C, resets)
    if D is not None:
        y = torch.addcmul(y, x, D.to(compute))
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y, last


def selective_state_update(
    state: torch.Tensor,
    hidden_states: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    dt_bias: Optional[torch.Tensor] = None,
    dt_softplus: bool = False,
    z: Optional[torch.Tensor] = None,
    **unused,
) -> torch.Tensor:
    """One step of the recurrence for cached generation, with the signature of HF's
    `mamba_selective_state_update`: `state` (batch, D, N) is updated in place, the output
    (batch, D) returned.

    Shapes: hidden_states, dt, z: (batch, D); A: (D, N); B, C: (batch, N); D, dt_bias: (D,).
    The same function as HF's reference, in about half the tensor operations (the state is
    decayed and fed in place, the read-out is one batched matrix-vector product): a generated
    token costs ~40 small operations across a 4-layer model, so each one counts.
    """
    compute = torch.promote_types(hidden_states.dtype, torch.float32)
    dt = dt.to(compute)
    if dt_bias is not None:
        dt = dt + dt_bias.to(compute)
    if dt_softplus:
        dt = F.softplus(dt)
    x = hidden_states.to(compute)
    h = state if state.dtype == compute else state.to(compute)
    h.mul_(torch.mul(dt.unsqueeze(-1), A.to(compute)).exp_())  # decay: exp(dt * A), (batch, D, N)
    h.addcmul_((dt * x).unsqueeze(-1), B.to(compute).unsqueeze(1))  # + dt * x (outer) B
    if h is not state:
        state.copy_(h)
    out = torch.bmm(h, C.to(compute).unsqueeze(-1)).squeeze(-1)  # C . h, (batch, D)
    if D is not None:
        out = torch.addcmul(out, x, D.to(compute))
    if z is not None:
        out = out * F.silu(z.to(compute))
    return out.to(hidden_states.dtype)

"""Mamba-2's scan (SSD, Dao & Gu 2024): the chunked form for a sequence, the recurrence for one step.

Mamba-2 restricts A to one scalar per head, so the state h (b, heads, head_dim, n) of head k decays
by a single number exp(dt_t A_k) per token:

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t (outer) B_t ;   y_t = C_t . h_t + D x_t

`ssd_reference` runs exactly that, one token at a time (the tests' yardstick). `ssd_chunked`
computes the same numbers as matrix products: inside a chunk of Q tokens the output is a masked
"attention" C_t . B_s weighted by the decay from s to t (the diagonal blocks); across chunks a
short recurrence carries one state per chunk boundary (the off-diagonal blocks). Work is
O(L Q) per head instead of a length-L loop, every step a batched matmul. `ssd_step` is one token of
the recurrence on a cached state. B and C come in `n_groups` groups shared by heads // n_groups
heads each (like grouped-query attention). Document starts (`doc_starts`, (b, L) bool): the state
starts afresh at each, as if every document were its own sequence; the recurrence zeroes the decay
into a start, the chunked form masks every decay that would cross one (`_same_document`).

Shapes: x (b, L, heads, p); dt (b, L, heads) before bias and softplus; A, D, dt_bias (heads,);
B, C (b, L, groups, n). `dt_limit` clamps the step size after softplus (HF's `time_step_limit`).
What this module does not do: the projections, convolution, gated norm (`mamba2.py`), or run the
CUDA SSD kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def step_sizes(dt, dt_bias, dt_limit=(0.0, float("inf"))):
    """softplus(dt + dt_bias), clamped to dt_limit: (b, L, heads) or (b, heads), float32 at least."""
    dt = F.softplus(dt.float() + dt_bias.float())
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def _per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., groups, n) → (..., heads, n): each group's B or C serves heads // groups consecutive heads."""
    return t.float().repeat_interleave(heads // t.shape[-2], dim=-2)


def ssd_reference(x, dt, A, B, C, D, dt_bias, dt_limit=(0.0, float("inf")), doc_starts=None):
    """`(y, last)`: y (b, L, heads, p) and the final state (b, heads, p, n), one token at a time.
    doc_starts (b, L) bool: the state starts afresh there (the decay into that token is 0)."""
    b, L, heads, p = x.shape
    dt = step_sizes(dt, dt_bias, dt_limit)  # (b, L, heads)
    B, C, x = _per_head(B, heads), _per_head(C, heads), x.float()  # (b, L, heads, n)
    h = x.new_zeros(b, heads, p, B.shape[-1])
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A.float())  # (b, heads): one number per head
        if doc_starts is not None:
            decay = decay * (~doc_starts[:, t, None]).float()
        h = decay[:, :, None, None] * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    y = torch.stack(ys, dim=1) + D.float()[:, None] * x
    return y, h


def segment_sums(a: torch.Tensor) -> torch.Tensor:
    """a (..., Q) → S (..., Q, Q) with S[t, s] = a[s+1] + ... + a[t] for s <= t, -inf above the diagonal.

    exp(S) is the decay from token s to token t inside a chunk (1 on the diagonal, 0 in the future).
    Built from masked cumulative sums, not differences of one cumsum: no cancellation.
    """
    Q = a.shape[-1]
    ones = torch.ones(Q, Q, dtype=torch.bool, device=a.device)
    rows = a[..., :, None].expand(*a.shape, Q)  # rows[k, s] = a[k]
    sums = rows.masked_fill(~ones.tril(-1), 0).cumsum(-2)  # [t, s] = sum of a[k] for s < k <= t
    return sums.masked_fill(~ones.tril(0), -torch.inf)


def _same_document(doc_starts, chunks):
    """The four masks that keep the chunked SSD inside documents (None without starts), each True where
    the decay it multiplies does not cross a document start: (token t, token s) of a chunk; token s and
    its chunk's end; chunk ends z and c (the recurrence across chunks); token t and the state entering
    its chunk (the previous chunk's end). Shapes as the decays they mask, heads broadcast."""
    if doc_starts is None:
        return None
    doc = chunks(torch.cumsum(doc_starts.long(), dim=1), fill_last=True)  # (b, c, Q): which document
    end = doc[..., -1]  # (b, c): the document each chunk ends in
    before = F.pad(end, (1, 0), value=-1)  # (b, c+1): the document of the state entering chunk z
    return (doc[:, :, :, None] == doc[:, :, None, :])[:, None], (doc == end[..., None])[:, None], \
        (before[:, :, None] == before[:, None, :])[:, None], (doc == before[:, :-1, None])[:, None]


def ssd_chunked(x, dt, A, B, C, D, dt_bias, chunk_size: int, dt_limit=(0.0, float("inf")), doc_starts=None):
    """`(y, last)`: the same as `ssd_reference`, in chunks of `chunk_size` tokens (module docstring);
    with doc_starts (b, L) bool every decay that would cross a document start is masked to 0."""
    b, L, heads, p = x.shape
    dt = step_sizes(dt, dt_bias, dt_limit)  # (b, L, heads)
    B, C, x = _per_head(B, heads), _per_head(C, heads), x.float()
    skip = D.float()[:, None] * x  # (b, L, heads, p)
    pad = (-L) % chunk_size  # zero tokens at the end: no input, no decay (dt A = 0), the state passes
    Q = chunk_size

    def chunks(t, fill_last=False):  # (b, L, ...) → (b, c, Q, ...); the padding: zeros (or the last value)
        if fill_last:
            t = torch.cat([t, t[:, -1:].expand(b, pad, *t.shape[2:])], dim=1)
        else:
            t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.reshape(b, -1, Q, *t.shape[2:])

    xdt, a = chunks(x * dt[..., None]), chunks(dt * A.float())  # (b, c, Q, heads, p), (b, c, Q, heads)
    B, C = chunks(B), chunks(C)  # (b, c, Q, heads, n)
    a = a.permute(0, 3, 1, 2)  # (b, heads, c, Q)
    a_cum = a.cumsum(-1)  # log-decay from the chunk's start to each token
    masks = _same_document(doc_starts, chunks)
    # 1. inside each chunk: y_t = sum_{s<=t} (C_t . B_s) exp(a_{s+1} + .. + a_t) dt_s x_s
    decay_in = torch.exp(segment_sums(a))  # (b, heads, c, Q_t, Q_s)
    if masks is not None:
        decay_in = decay_in * masks[0]
    y = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, decay_in, xdt)
    # 2. each chunk's own contribution to the state at its end
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, heads, c, Q)
    if masks is not None:
        to_end = to_end * masks[1]
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, to_end, xdt)  # (b, c, heads, p, n)
    # 3. across chunks: the state entering chunk c, a recurrence over the chunk boundaries
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)  # (b, c+1, heads, p, n)
    decay_across = torch.exp(segment_sums(F.pad(a_cum[..., -1], (1, 0))))  # (b, heads, c+1, c+1)
    if masks is not None:
        decay_across = decay_across * masks[2]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_across, states)
    entering, last = states[:, :-1], states[:, -1]
    # 4. what the entering state adds to each token, decayed from the chunk's start
    from_start = torch.exp(a_cum) if masks is None else torch.exp(a_cum) * masks[3]  # (b, heads, c, Q)
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", C, entering, from_start)
    return y.reshape(b, -1, heads, p)[:, :L] + skip, last


def ssd_step(state, x, dt, A, B, C, D, dt_bias, dt_limit=(0.0, float("inf"))):
    """One token: state (b, heads, p, n) updated in place; x (b, heads, p); dt (b, heads);
    B, C (b, groups, n) → y (b, heads, p)."""
    heads = x.shape[1]
    dt = step_sizes(dt, dt_bias, dt_limit)  # (b, heads)
    B, C = _per_head(B, heads), _per_head(C, heads)  # (b, heads, n)
    state.mul_(torch.exp(dt * A.float())[:, :, None, None])
    state.add_((dt[:, :, None] * x.float())[..., None] * B[:, :, None, :])
    y = (state @ C[..., None]).squeeze(-1)  # (b, heads, p)
    return y + D.float()[:, None] * x.float()

"""The Mamba-1 mixer (Gu & Dao 2023, Algorithm 2), in the paper's order, with HF's parameter names.

One mixer maps hidden states (b, L, H) to (b, L, H):

    x, z  = in_proj(h)                       expand H -> 2 * D: the scan's input and its gate
    x     = SiLU(causal depthwise conv(x))   each channel mixes its last K tokens
    dt, B, C = x_proj(x)                     the *selective* part: step size and B, C depend on x
    dt    = softplus(dt_proj(dt))            a low-rank (R) step size per channel, > 0
    y     = selective_scan(x, dt, A, B, C)   h_t = exp(dt A) h_{t-1} + dt B x_t ;  y_t = C h_t
    y     = (y + D x) * SiLU(z)              skip connection, then the gate
    out   = out_proj(y)                      back to H

Parameter names and shapes are HF's `MambaMixer`'s (in_proj, conv1d, x_proj, dt_proj, A_log, D,
out_proj), so HF checkpoints load as they are (`hf_format.py`). An `attention_mask` (b, L) zeroes
padded positions before in_proj and after the convolution, as HF does (so a left-padded prompt
leaves the same state as the unpadded one when in_proj has no bias). `doc_starts` (b, L) bool
restarts the conv and the scan at each document's first token. Which implementation runs (CUDA
kernels, our fast scan, the reference) is decided in `scan.py` from `self.scan_path`.

What this module does not do: the residual stack, norms and head (`lm.py`), or generation's loop
(`generate.py`); `step` is one token of the recurrence.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import scan


def masked(h: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """h (b, L, c) with padded positions (attention_mask 0) set to zero; no mask: h itself."""
    return h if attention_mask is None else (h * attention_mask[:, :, None]).to(h.dtype)


def inverse_softplus_steps(n: int, config) -> torch.Tensor:
    """n step-size offsets b with softplus(b) log-uniform in [time_step_min, time_step_max] (floored)."""
    lo, hi = math.log(config.time_step_min), math.log(config.time_step_max)
    dt = torch.exp(torch.rand(n) * (hi - lo) + lo).clamp(min=config.time_step_floor)
    return dt + torch.log(-torch.expm1(-dt))  # softplus^-1(dt)


class MambaMixer(nn.Module):
    def __init__(self, config):
        super().__init__()
        if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"hidden_act={config.hidden_act!r}: this Mamba-1 implements SiLU only (every public "
                             "checkpoint uses it); set hidden_act to 'silu'")
        H, D, N = config.hidden_size, config.intermediate_size, config.state_size
        self.R, self.N, self.K = int(config.time_step_rank), N, config.conv_kernel
        # (declared before in_proj, as HF's mixer does: parameter order is what an optimizer's saved
        # state is matched by, so a run HF's class trained resumes on ours)
        # depthwise: one K-tap filter per channel, weight (D, 1, K) as HF stores it
        self.conv1d = nn.Conv1d(D, D, self.K, groups=D, padding=self.K - 1, bias=config.use_conv_bias)
        self.in_proj = nn.Linear(H, 2 * D, bias=config.use_bias)
        self.x_proj = nn.Linear(D, self.R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(self.R, D, bias=True)  # its bias is the step size's offset (init: softplus^-1)
        self.A_log = nn.Parameter(torch.empty(D, N))  # A = -exp(A_log) (D, N): kept negative by construction
        self.D = nn.Parameter(torch.empty(D))
        self.out_proj = nn.Linear(D, H, bias=config.use_bias)
        self.scan_path = "auto"

    @torch.no_grad()
    def init_weights(self, config) -> None:
        """The paper's (and HF's) initialisation of what is Mamba's own: A = -(1, 2, .., N) per channel
        (S4D-real), D = 1, step sizes log-uniform in [time_step_min, time_step_max], the conv and out_proj
        Kaiming-uniform. The other projections are `lm.py`'s (normal, std initializer_range)."""
        self.A_log.copy_(torch.log(torch.arange(1, self.N + 1, dtype=torch.float32)).repeat(self.A_log.shape[0], 1))
        self.D.fill_(1.0)
        std = self.R ** -0.5 * getattr(config, "time_step_scale", 1.0)
        if getattr(config, "time_step_init_scheme", "random") == "constant":
            nn.init.constant_(self.dt_proj.weight, std)
        else:
            nn.init.uniform_(self.dt_proj.weight, -std, std)
        self.dt_proj.bias.copy_(inverse_softplus_steps(self.dt_proj.out_features, config))
        nn.init.kaiming_uniform_(self.conv1d.weight, a=math.sqrt(5))
        if self.conv1d.bias is not None:
            nn.init.zeros_(self.conv1d.bias)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))

    def forward(self, h, attention_mask=None, doc_starts=None, state=None):
        """h (b, L, H) → (b, L, H). `state`: a `generate.LayerState` to fill with the conv window and the
        final scan state (a prompt's prefill), else None.

        Two forms of the same steps: channels-first (b, D, L), the layout mamba-ssm's kernels and the
        reference take; and time-major (L, b, D), the layout our fast scan's recurrence runs in, used
        wherever the kernels are not (CPU): there every (b, L, D) tensor would need a permute copy on
        its way into the scan and out of it (about a tenth of a training step).
        """
        if self.scan_path == "reference" or scan.kernels_for(self.scan_path, h) is not None:
            return self.forward_channels_first(h, attention_mask, doc_starts, state)
        return self.forward_time_major(h, attention_mask, doc_starts, state)

    def forward_time_major(self, h, attention_mask=None, doc_starts=None, state=None):
        """`forward` on the fast scan, every D-wide tensor time-major (L, b, ·): only h (b, L, H), a
        quarter of in_proj's output, is transposed, on the way in and out."""
        xz = self.in_proj(masked(h, attention_mask).transpose(0, 1))  # (L, b, 2D)
        mask = None if attention_mask is None else attention_mask.t()[:, :, None]  # (L, b, 1)
        A = -torch.exp(self.A_log.float())  # (D, N), < 0: every mode decays
        x, z = xz.chunk(2, dim=-1)  # (L, b, D) each: the scan's input and its gate
        if state is not None:
            state.conv.copy_(scan.conv_state_of(x.permute(1, 2, 0), self.K))
        x = scan.causal_conv_time_major(x, self.conv1d.weight[:, 0], self.conv1d.bias, doc_starts=doc_starts)
        if mask is not None:
            x = (x * mask).to(x.dtype)
        dt, B, C = self.x_proj(x).split([self.R, self.N, self.N], dim=-1)  # (L, b, R), (L, b, N), (L, b, N)
        dt = F.linear(dt, self.dt_proj.weight)  # (L, b, D); its bias and softplus: inside the scan
        y, last = scan.selective_scan_time_major(x, dt, A, B, C, self.D.float(), z, self.dt_proj.bias.float(),
                                                 doc_starts=doc_starts)
        if state is not None:
            state.ssm.copy_(last)
        return self.out_proj(y.to(h.dtype)).transpose(0, 1)  # (b, L, H)

    def forward_channels_first(self, h, attention_mask=None, doc_starts=None, state=None):
        """`forward` in the (b, D, L) layout: mamba-ssm's kernels (and their fused training kernel), the reference."""
        xz = self.in_proj(masked(h, attention_mask)).transpose(1, 2)  # (b, 2D, L)
        A = -torch.exp(self.A_log.float())  # (D, N), < 0: every mode decays
        plain = attention_mask is None and doc_starts is None and state is None
        inner = scan.fused_inner(self.scan_path, xz) if self.training and plain else None
        if inner is not None:  # the CUDA kernel that does everything below in one pass
            return inner(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                         self.out_proj.weight, self.out_proj.bias, A, None, None, self.D.float(),
                         delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        x, z = xz.chunk(2, dim=1)  # (b, D, L) each: the scan's input and its gate
        if state is not None:
            state.conv.copy_(scan.conv_state_of(x, self.K))
        x = scan.causal_conv(x, self.conv1d.weight[:, 0], self.conv1d.bias, doc_starts=doc_starts,
                             path=self.scan_path)
        x = masked(x.transpose(1, 2), attention_mask)  # (b, L, D)
        dt, B, C = self.x_proj(x).split([self.R, self.N, self.N], dim=-1)  # (b, L, R), (b, L, N), (b, L, N)
        dt = self.dt_proj.weight @ dt.transpose(1, 2)  # (b, D, L); its bias and softplus: inside the scan
        y, last = scan.selective_scan(x.transpose(1, 2), dt, A, B.transpose(1, 2), C.transpose(1, 2),
                                      self.D.float(), z, self.dt_proj.bias.float(), doc_starts=doc_starts,
                                      return_last_state=state is not None, path=self.scan_path)
        if state is not None:
            state.ssm.copy_(last)
        return self.out_proj(y.transpose(1, 2).to(h.dtype))  # (b, L, H)

    def step(self, h, state):
        """One token: h (b, H) → (b, H), `state` (its conv window and scan state) advanced in place."""
        x, z = self.in_proj(h).chunk(2, dim=-1)  # (b, D) each
        x = scan.conv_step(x, state.conv, self.conv1d.weight[:, 0], self.conv1d.bias, path=self.scan_path)
        dt, B, C = self.x_proj(x).split([self.R, self.N, self.N], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # (b, D); bias and softplus inside the step
        A = -torch.exp(self.A_log.float())
        y = scan.ssm_step(state.ssm, x, dt, A, B, C, self.D.float(), z, self.dt_proj.bias.float(),
                          path=self.scan_path)
        return self.out_proj(y.to(h.dtype))

    def state_shapes(self, batch: int) -> tuple[tuple, tuple]:
        """Shapes of (conv window, scan state) for `batch` rows: (b, D, K), (b, D, N)."""
        D = self.in_proj.out_features // 2
        return (batch, D, self.K), (batch, D, self.N)

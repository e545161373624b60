"""The Mamba-2 mixer (Dao & Gu 2024), with HF's `Mamba2Mixer` parameter names and shapes.

    z, xBC, dt = in_proj(h)                the gate (D), the conv's input (D + 2 G N), a step per head
    xBC        = SiLU(causal conv(xBC))    x, B and C are convolved together (one conv over all three)
    x, B, C    = split(xBC)                x (heads, head_dim); B, C (groups, N)
    y          = SSD(x, dt, A, B, C) + D x (ssd.py: chunked for a sequence, recurrent for a token)
    y          = RMSNorm(y * SiLU(z))      the gated norm, per group
    out        = out_proj(y)

Parameters: in_proj, conv1d, dt_bias, A_log, D (one per head), norm.weight, out_proj. The mask
(`attention_mask`, (b, L)) zeroes padded positions before in_proj and after the conv, as HF does;
`doc_starts` (b, L) bool restarts the conv and the SSD state at each document's first token.
`scan_path` "reference" runs the token-by-token SSD (tests); anything else the chunked form; the
conv goes through `scan.causal_conv` (causal-conv1d's kernel on CUDA when it imports).

What this module does not do: the CUDA SSD kernels (mamba-ssm's `mamba_chunk_scan_combined` is not
wired in yet), or the residual stack (`lm.py`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import scan, ssd
from .mamba1 import inverse_softplus_steps, masked


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * SiLU(z)) over groups of `group_size` channels (HF's `MambaRMSNormGated`)."""

    def __init__(self, size: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.group_size, self.eps = group_size, eps

    def forward(self, y, z):
        dtype = y.dtype
        y = y.float() * F.silu(z.float())
        groups = y.view(*y.shape[:-1], -1, self.group_size)  # (..., G, D / G)
        groups = groups * torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * groups.view(y.shape).to(dtype)


class Mamba2Mixer(nn.Module):
    def __init__(self, config):
        super().__init__()
        if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"hidden_act={config.hidden_act!r}: this Mamba-2 implements SiLU only; set it to 'silu'")
        H, self.heads, self.head_dim = config.hidden_size, config.num_heads, config.head_dim
        self.D_inner = int(config.expand * H)
        if self.heads * self.head_dim != self.D_inner:
            raise ValueError(f"num_heads * head_dim = {self.heads} * {self.head_dim} must equal expand * hidden_size "
                             f"= {self.D_inner}; set num_heads to {self.D_inner // self.head_dim}")
        self.groups, self.N, self.K = config.n_groups, config.state_size, config.conv_kernel
        self.chunk_size, self.dt_limit = config.chunk_size, tuple(config.time_step_limit)
        self.conv_dim = self.D_inner + 2 * self.groups * self.N  # x, B and C go through the conv together
        # conv1d before in_proj, as HF's mixer declares them (the parameter order optimizer states follow)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.K, groups=self.conv_dim, padding=self.K - 1,
                                bias=config.use_conv_bias)
        self.in_proj = nn.Linear(H, self.D_inner + self.conv_dim + self.heads, bias=config.use_bias)
        self.dt_bias = nn.Parameter(torch.empty(self.heads))  # the step size's offset, one per head
        self.A_log = nn.Parameter(torch.empty(self.heads))  # A = -exp(A_log): one decay rate per head
        self.D = nn.Parameter(torch.empty(self.heads))
        self.norm = GatedRMSNorm(self.D_inner, self.D_inner // self.groups, config.layer_norm_epsilon)
        self.out_proj = nn.Linear(self.D_inner, H, bias=config.use_bias)
        self.scan_path = "auto"

    @torch.no_grad()
    def init_weights(self, config) -> None:
        """HF's initialisation of Mamba-2's own parameters: A = -(1, .., heads), D = 1, step sizes
        log-uniform in [time_step_min, time_step_max], conv and out_proj Kaiming-uniform, norm 1."""
        self.A_log.copy_(torch.log(torch.arange(1, self.heads + 1, dtype=torch.float32)))
        self.D.fill_(1.0)
        self.dt_bias.copy_(inverse_softplus_steps(self.heads, config))
        nn.init.kaiming_uniform_(self.conv1d.weight, a=math.sqrt(5))
        if self.conv1d.bias is not None:
            nn.init.zeros_(self.conv1d.bias)
        nn.init.kaiming_uniform_(self.out_proj.weight, a=math.sqrt(5))
        self.norm.weight.fill_(1.0)

    def _split(self, zxbcdt):
        return zxbcdt.split([self.D_inner, self.conv_dim, self.heads], dim=-1)

    def forward(self, h, attention_mask=None, doc_starts=None, state=None):
        """h (b, L, H) → (b, L, H); `state` (a `generate.LayerState`) is filled for generation if given."""
        b, L, _ = h.shape
        z, xBC, dt = self._split(self.in_proj(masked(h, attention_mask)))  # (b, L, D), (b, L, conv_dim), (b, L, heads)
        xBC = xBC.transpose(1, 2)  # (b, conv_dim, L)
        if state is not None:
            state.conv.copy_(scan.conv_state_of(xBC, self.K))
        conv_path = "fast" if self.scan_path == "reference" else self.scan_path
        xBC = scan.causal_conv(xBC, self.conv1d.weight[:, 0], self.conv1d.bias, doc_starts=doc_starts, path=conv_path)
        x, B, C = masked(xBC.transpose(1, 2), attention_mask).split(
            [self.D_inner, self.groups * self.N, self.groups * self.N], dim=-1)
        run = ssd.ssd_reference if self.scan_path == "reference" else ssd.ssd_chunked
        extra = {} if self.scan_path == "reference" else {"chunk_size": self.chunk_size}
        y, last = run(x.view(b, L, self.heads, self.head_dim), dt, -torch.exp(self.A_log.float()),
                      B.view(b, L, self.groups, self.N), C.view(b, L, self.groups, self.N), self.D, self.dt_bias,
                      dt_limit=self.dt_limit, doc_starts=doc_starts, **extra)
        if state is not None:
            state.ssm.copy_(last)
        y = self.norm(y.reshape(b, L, self.D_inner), z)
        return self.out_proj(y.to(h.dtype))

    def step(self, h, state):
        """One token: h (b, H) → (b, H), `state` advanced in place."""
        b = h.shape[0]
        z, xBC, dt = self._split(self.in_proj(h))
        conv_path = "fast" if self.scan_path == "reference" else self.scan_path
        xBC = scan.conv_step(xBC, state.conv, self.conv1d.weight[:, 0], self.conv1d.bias, path=conv_path)
        x, B, C = xBC.split([self.D_inner, self.groups * self.N, self.groups * self.N], dim=-1)
        y = ssd.ssd_step(state.ssm, x.view(b, self.heads, self.head_dim), dt, -torch.exp(self.A_log.float()),
                         B.view(b, self.groups, self.N), C.view(b, self.groups, self.N), self.D, self.dt_bias,
                         dt_limit=self.dt_limit)
        y = self.norm(y.reshape(b, self.D_inner).to(h.dtype), z)
        return self.out_proj(y.to(h.dtype))

    def state_shapes(self, batch: int) -> tuple[tuple, tuple]:
        """Shapes of (conv window, scan state): (b, conv_dim, K), (b, heads, head_dim, N)."""
        return (batch, self.conv_dim, self.K), (batch, self.heads, self.head_dim, self.N)

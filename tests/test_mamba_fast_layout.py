"""The mixer's time-major CPU path against what it stands in for, values and gradients, with document
starts: `model/scan.py`'s shift conv against the channel-first convs, and the C kernel's fused scan
(softplus, D skip and gate inside) against the PyTorch recurrence with those as tensor ops."""
import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.model import scan
from mamba_nb.scan import compiled
from mamba_nb.scan import conv as cut_conv
from mamba_nb.scan import selective


def starts_of(rows, length, p, gen):
    return torch.rand(rows, length, generator=gen) < p


@settings(max_examples=20, deadline=None)
@given(length=st.integers(1, 12), rows=st.integers(1, 3), K=st.integers(1, 4), bias=st.booleans(),
       starts_p=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16))
def test_time_major_conv_equals_the_channel_first_one(length, rows, K, bias, starts_p, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 5, length, generator=gen, dtype=torch.float64, requires_grad=True)  # (b, c, L)
    w = torch.randn(5, K, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True) if bias else None
    starts = starts_of(rows, length, starts_p, gen) if starts_p else None
    if starts is None:
        want = scan.causal_conv(x, w, b, path="fast")
    else:
        want = cut_conv.causal_conv1d(x, w, b, "silu", doc_starts=starts)
    got = scan.causal_conv_time_major(x.permute(2, 0, 1), w, b, doc_starts=starts).permute(1, 2, 0)
    torch.testing.assert_close(got, want)
    weights = torch.randn(want.shape, generator=gen, dtype=torch.float64)
    params = [t for t in (x, w, b) if t is not None]
    want_grads = torch.autograd.grad((want * weights).sum(), params)
    got_grads = torch.autograd.grad((got * weights).sum(), params)
    for g, wg in zip(got_grads, want_grads):
        torch.testing.assert_close(g, wg)


@settings(max_examples=10, deadline=None)
@given(length=st.integers(1, 9), rows=st.integers(1, 3), starts_p=st.sampled_from([0.0, 0.4]),
       seed=st.integers(0, 2**16))
def test_fused_kernel_scan_equals_the_pytorch_one(length, rows, starts_p, seed):
    """softplus(dt + bias), the D skip and the gate inside the C kernel: the same values, final state and
    gradient of every input as the PyTorch recurrence with those steps as tensor ops."""
    if not compiled.available():
        pytest.skip(f"no C kernel here: {compiled.why_not()}")
    gen = torch.Generator().manual_seed(seed)
    D, N = 6, 3
    x, dt, z = (torch.randn(length, rows, D, generator=gen).requires_grad_() for _ in range(3))
    B, C = (torch.randn(length, rows, N, generator=gen).requires_grad_() for _ in range(2))
    A = (-torch.rand(D, N, generator=gen) - 0.1).requires_grad_()
    Dskip, bias = (torch.randn(D, generator=gen).requires_grad_() for _ in range(2))
    starts = (torch.rand(length, rows, generator=gen) < starts_p) if starts_p else None
    inputs = [x, dt, A, B, C, Dskip, z, bias]
    outs = []
    for off in (False, True):
        with compiled.turned_off() if off else contextlib.nullcontext():
            y, last = selective.scan_time_major(x, dt, A, B, C, Dskip, z, bias, starts=starts)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        wl = torch.randn(last.shape, generator=torch.Generator().manual_seed(2))
        outs.append((y, last, torch.autograd.grad((y * w).sum() + (last * wl).sum(), inputs)))
    (y, last, grads), (want_y, want_last, want_grads) = outs
    torch.testing.assert_close(y, want_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(last, want_last, rtol=1e-5, atol=1e-5)
    for g, want in zip(grads, want_grads):
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)

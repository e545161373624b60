"""The scan's C kernel (mamba_nb/scan/compiled.py) against the PyTorch recurrence it replaces.

- property-based: random shapes (length 1 included), with and without resets at document
  starts, with and without the final state's gradient: outputs and every gradient equal the
  PyTorch recurrence's (float32, relative 1e-5); without a gradient, the same outputs;
- the model still takes it (`selective_scan` dispatches to it on CPU float32, the PyTorch
  recurrence elsewhere: float64 here) and a run names it;
- never required: turned off, no compiler, or a compiler that fails → the PyTorch recurrence,
  with the reason; a failed build leaves nothing in the cache that could be loaded later;
- the cache: a second process loads the built library instead of compiling again;
- loading it leaves the process's floating point alone (no flush of subnormals to zero, which a
  library linked with -ffast-math would switch on for every op after it).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.scan import compiled, selective_scan
from mamba_nb.scan.selective import _Recurrence

if not compiled.available():
    if os.environ.get("MAMBA_NB_REQUIRE_SCAN_KERNEL") == "1":  # CI installs a compiler: the kernel must build
        raise RuntimeError(f"MAMBA_NB_REQUIRE_SCAN_KERNEL=1 but the scan kernel is unavailable: {compiled.why_not()}")
    pytest.skip(f"no scan kernel here: {compiled.why_not()}", allow_module_level=True)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def inputs(gen, L, batch, d, n):
    dt = torch.nn.functional.softplus(torch.randn(L, batch, d, generator=gen) * 1.5)
    x = torch.randn(L, batch, d, generator=gen)
    A = -torch.exp(torch.randn(d, n, generator=gen))
    Bm, Cm = torch.randn(L, batch, n, generator=gen), torch.randn(L, batch, n, generator=gen)
    return [t.requires_grad_(True) for t in (dt, x, A, Bm, Cm)]


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 40), batch=st.integers(1, 5), d=st.integers(1, 24), n=st.integers(1, 9),
       reset_rate=st.sampled_from([0.0, 0.1, 0.5]), grad_last=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_kernel_equals_the_pytorch_recurrence_values_and_gradients(L, batch, d, n, reset_rate, grad_last, seed):
    gen = torch.Generator().manual_seed(seed)
    ins = inputs(gen, L, batch, d, n)
    starts = torch.rand(L, batch, generator=gen) < reset_rate if reset_rate else None
    flat = None if starts is None else starts.reshape(-1).nonzero().squeeze(1)
    gy = torch.randn(L, batch, d, generator=gen)
    gl = torch.randn(batch, d, n, generator=gen) if grad_last else None

    def grads(y, last):  # the last state's gradient only when it has one (HF's cache does not, in training)
        return torch.autograd.grad((y, last) if grad_last else (y,), ins, (gy, gl) if grad_last else (gy,))

    y_ref, last_ref = _Recurrence.apply(*ins, flat)
    ref = grads(y_ref, last_ref)
    y, last = compiled.recurrence(*ins, starts)
    got = grads(y, last)

    assert rel(y, y_ref) < 1e-5 and rel(last, last_ref) < 1e-5
    for name, g, r in zip(["dt", "x", "A", "B", "C"], got, ref):
        assert rel(g, r) < 1e-5, name
    with torch.no_grad():
        y0, last0 = compiled.recurrence(*ins, starts)
    assert rel(y0, y_ref) < 1e-5 and rel(last0, last_ref) < 1e-5


def test_selective_scan_takes_the_kernel_for_float32_only(monkeypatch):
    calls = []
    real = compiled.recurrence
    monkeypatch.setattr(compiled, "recurrence", lambda *a: calls.append(a[0].dtype) or real(*a))
    gen = torch.Generator().manual_seed(0)
    u, dt, z = (torch.randn(2, 6, 9, generator=gen) for _ in range(3))
    A, B, C = -torch.rand(6, 3, generator=gen), torch.randn(2, 3, 9, generator=gen), torch.randn(2, 3, 9, generator=gen)
    out32 = selective_scan(u, dt, A, B, C, z=z, delta_softplus=True)
    out64 = selective_scan(u.double(), dt.double(), A.double(), B.double(), C.double(), z=z.double(), delta_softplus=True)
    assert calls == [torch.float32]  # float64 went through the PyTorch recurrence
    assert rel(out32.double(), out64) < 1e-5


def test_a_second_backward_on_one_graph_is_a_clear_error():
    ins = inputs(torch.Generator().manual_seed(0), 5, 2, 4, 3)
    y, _ = compiled.recurrence(*ins, None)
    y.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        y.sum().backward()


def _fresh_kernel(monkeypatch, tmp_path, **env):
    monkeypatch.setenv("MAMBA_NB_KERNEL_CACHE", str(tmp_path))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    compiled._kernel.cache_clear()
    try:
        return compiled.available(), compiled.why_not()
    finally:
        compiled._kernel.cache_clear()  # the next test sees this machine's kernel again


def test_turned_off_it_says_so(monkeypatch, tmp_path):
    assert _fresh_kernel(monkeypatch, tmp_path, MAMBA_NB_SCAN_KERNEL="0") == (False, "turned off (MAMBA_NB_SCAN_KERNEL=0)")


def test_without_a_compiler_the_pytorch_recurrence_runs(monkeypatch, tmp_path):
    monkeypatch.setattr(compiled, "_compiler", lambda: None)
    ok, why = _fresh_kernel(monkeypatch, tmp_path)
    assert not ok and "no C compiler" in why


def test_a_failing_compiler_falls_back_and_leaves_nothing_loadable(monkeypatch, tmp_path):
    ok, why = _fresh_kernel(monkeypatch, tmp_path, CC="false")
    assert not ok and "did not build" in why
    assert list(tmp_path.iterdir()) == []  # no half-written library under any name


def test_a_second_process_loads_the_cached_library(tmp_path):
    code = ("import sys, time; from mamba_nb.scan import compiled; t = time.perf_counter(); "
            "ok = compiled.available(); print(ok, time.perf_counter() - t)")
    env = {**os.environ, "MAMBA_NB_KERNEL_CACHE": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    built = sorted(p.name for p in tmp_path.iterdir())
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert first.stdout.split()[0] == second.stdout.split()[0] == "True"
    assert len(built) == 1 and built[0].startswith("scan_kernel-")
    assert sorted(p.name for p in tmp_path.iterdir()) == built  # loaded, not rebuilt under another name


def test_loading_the_kernel_keeps_subnormal_floats(tmp_path):
    code = ("from mamba_nb.scan import compiled; import sys, torch; assert compiled.available(); "
            "tiny = torch.tensor([1e-40], dtype=torch.float32); "
            "print(float((tiny * 1.0)[0]) > 0, sys.float_info.min / 2 > 0)")
    env = {**os.environ, "MAMBA_NB_KERNEL_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_without_a_gradient_no_state_buffer_is_taken(monkeypatch):
    """Inference keeps only the running state: no (L, B, N, D) tensor, which at a long prompt is most of
    the memory (and one that nothing would hand back to the workspace)."""
    from mamba_nb.scan import workspace

    taken = []
    real = workspace.WORKSPACE.take
    monkeypatch.setattr(workspace.WORKSPACE, "take", lambda shape, like: taken.append(shape) or real(shape, like))
    ins = inputs(torch.Generator().manual_seed(0), 7, 2, 5, 3)
    with torch.no_grad():
        compiled.recurrence(*ins, None)
    assert taken == []
    compiled.recurrence(*ins, None)
    assert taken == [(7, 2, 3, 5)]


def test_a_compiler_refusing_the_tuned_flags_builds_with_plain_ones(monkeypatch, tmp_path):
    """Some compilers (older Apple clang on arm64) refuse -march=native or -fopenmp-simd: the kernel is
    then built without them rather than not at all."""
    import shutil

    picky = tmp_path / "picky-cc"
    picky.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in -march=native|-fopenmp-simd) exit 1;; esac; done\n'
                     f'exec {shutil.which("cc") or shutil.which("gcc")} "$@"\n')
    picky.chmod(0o755)
    cache = tmp_path / "cache"
    ok, why = _fresh_kernel(monkeypatch, cache, CC=str(picky))
    assert ok, why
    assert len(list(cache.glob("scan_kernel-*.so"))) == 1


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 30), batch=st.integers(1, 4), c=st.integers(1, 20), K=st.integers(1, 5),
       with_bias=st.booleans(), reset_rate=st.sampled_from([None, 0.0, 0.2, 0.6]), view=st.booleans(),
       threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**31 - 1))
def test_kernel_conv_equals_the_shift_conv(L, batch, c, K, with_bias, reset_rate, view, threads, seed):
    """The mixer's causal conv in the kernel (the forward of model/scan.py's _ShiftConv) against its PyTorch
    multiply-adds: documents cut anywhere, x a view into a wider tensor (as in_proj's output is), under one
    torch thread or two. Its backward stays PyTorch's, so the gradients are the same code."""
    from mamba_nb.model.scan import _ShiftConv
    from mamba_nb.scan.conv import positions_in_document

    gen = torch.Generator().manual_seed(seed)
    wide = torch.randn(L, batch, 2 * c, generator=gen)
    x = wide[..., :c] if view else wide[..., :c].contiguous()
    weight, bias = torch.randn(c, K, generator=gen), torch.randn(c, generator=gen) if with_bias else None
    since = None
    if reset_rate is not None:
        starts = torch.rand(batch, L, generator=gen) < reset_rate
        since = positions_in_document(starts).t()[:, :, None]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = _ShiftConv.apply(x, weight, bias, since)
        with compiled.turned_off():
            want = _ShiftConv.apply(x, weight, bias, since)
    finally:
        torch.set_num_threads(before)
    assert got.shape == want.shape == (L, batch, c)
    assert rel(got, want) <= 1e-5

"""The selective scan's recurrence as a small C kernel (`scan_kernel.c`), compiled on first use.

`recurrence(dt, x, A, Bm, Cm, resets)` is a drop-in for `selective._Recurrence.apply` on CPU
float32 tensors: the same inputs and outputs, the same numbers up to float rounding (tested
against it), forward and backward. `fused_scan` is the same with the elementwise steps around the
recurrence inside the kernel too (softplus(dt + bias) before it, (y + D x) * silu(z) after it, and
their gradients), done while each row is in cache: `selective.scan_time_major` takes it when all
three are given. Where it cannot run (no C compiler, a failed build, another
device or dtype) `available()` says why and `selective.py` keeps its PyTorch recurrence: the
kernel is never required, and each run prints which one it uses (`scan_name`).

How it is built: the system's C compiler (`$CC`, else cc, gcc or clang) compiles the one C file
into a shared library in `~/.cache/mamba_nb/kernels/` (`MAMBA_NB_KERNEL_CACHE` elsewhere), named
by a hash of the source, the flags, the compiler and this machine's CPU, written under a temporary
name and renamed into place (concurrent processes and an interrupted build never load half a
file). It is loaded with ctypes, which releases the GIL while the C code runs: Python threads
split the batch (forward: rows and channels; backward: rows), `torch.get_num_threads()` of them.
`MAMBA_NB_SCAN_KERNEL=0` turns it off (the PyTorch recurrence everywhere). The same library holds
generation's one-token step of a whole Mamba-1 block (`decode_step.py`) and the forward of the mixer's
causal conv (`conv_forward`, for `model/scan.py`'s `_ShiftConv`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch

from .workspace import WORKSPACE, backward_once

SOURCE = Path(__file__).with_name("scan_kernel.c")
# -ffast-math lets the compiler vectorize expf (glibc's vector math) and the sums over channels;
# the inputs are finite and exp only sees dt * A <= 0, so nothing it relaxes matters here. It is a
# compile flag only: linked with it, gcc and clang add a start-up routine that flushes subnormal
# floats to zero in the whole process (every torch op after the library loads), so the link is a
# separate step without it.
FLAGS = ["-O3", "-ffast-math", "-fopenmp-simd", "-march=native", "-fPIC"]
# set by `turned_off()`: the PyTorch recurrence within (a same-run comparison, benchmarks/bench_train_cpu.py)
_OFF: contextvars.ContextVar[bool] = contextvars.ContextVar("mamba_nb_scan_kernel_off", default=False)
_P = ctypes.c_void_p
_I = ctypes.c_int64


class _Kernel:
    """The loaded library, or why there is none."""

    def __init__(self, lib: Optional[ctypes.CDLL], why_not: str = ""):
        self.lib, self.why_not = lib, why_not
        if lib is not None:
            lib.scan_forward.argtypes = [_I] * 8 + [_P] * 6 + [_P, _I, _P] + [_P] * 4
            lib.scan_forward.restype = ctypes.c_int
            lib.scan_backward.argtypes = [_I] * 6 + [_P] * 14 + [_P] * 7
            lib.scan_backward.restype = ctypes.c_int
            lib.mamba1_block_step.argtypes = [_I] * 8 + [ctypes.c_float] + [_P] * 16
            lib.mamba1_block_step.restype = ctypes.c_int
            lib.conv_forward.argtypes = [_I] * 4 + [_P, _I, _P, _P, _P, _P]
            lib.conv_forward.restype = None


def _compiler() -> Optional[str]:
    for name in filter(None, [os.environ.get("CC"), "cc", "gcc", "clang"]):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cpu_id() -> str:
    """What -march=native depends on: the CPU model (a cache shared by machines must not mix them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    return Path(os.environ.get("MAMBA_NB_KERNEL_CACHE", Path.home() / ".cache" / "mamba_nb" / "kernels"))


def _build(cc: str) -> Path:
    """Compile (or find) the library; with plain flags when the compiler refuses the tuned ones."""
    try:
        return _build_with(cc, FLAGS)
    except RuntimeError:
        return _build_with(cc, [f for f in FLAGS if f not in ("-march=native", "-fopenmp-simd")])


def _build_with(cc: str, flags: list[str]) -> Path:
    """Compile (or find) the library for this source, compiler, flags and CPU; return its path."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, cc.encode(), " ".join(flags).encode(), _cpu_id().encode()]))
    target = cache_dir() / f"scan_kernel-{key.hexdigest()[:16]}{'.dll' if os.name == 'nt' else '.so'}"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".building-", suffix=target.suffix)
    os.close(fd)
    try:
        obj = tmp + ".o"
        for cmd in ([cc, *flags, "-c", str(SOURCE), "-o", obj], [cc, "-shared", obj, "-o", tmp, "-lm"]):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, tmp + ".o"):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return target


@functools.lru_cache(maxsize=1)
def _kernel() -> _Kernel:
    if os.environ.get("MAMBA_NB_SCAN_KERNEL", "1") == "0":
        return _Kernel(None, "turned off (MAMBA_NB_SCAN_KERNEL=0)")
    cc = _compiler()
    if cc is None:
        return _Kernel(None, "no C compiler found (cc, gcc, clang or $CC)")
    try:
        return _Kernel(ctypes.CDLL(str(_build(cc))))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        return _Kernel(None, f"the C kernel did not build or load: {err}")


def available() -> bool:
    return _kernel().lib is not None


def why_not() -> str:
    """Why the kernel is not used ("" when it is)."""
    return _kernel().why_not


def runs_on(*tensors: torch.Tensor) -> bool:
    """True when the kernel can take these tensors: CPU, float32, and the kernel built (and not turned off)."""
    return (not _OFF.get() and all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and available())


@contextlib.contextmanager
def turned_off():
    """Within: every scan runs the PyTorch recurrence (to compare the two in one process)."""
    token = _OFF.set(True)
    try:
        yield
    finally:
        _OFF.reset(token)


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else t.data_ptr()


@functools.lru_cache(maxsize=4)
def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="mamba-nb-scan")


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return [(edges[i], edges[i + 1]) for i in range(parts)]


def _run(jobs: list) -> list:
    if len(jobs) == 1:
        return [jobs[0]()]
    return [f.result() for f in [_pool(len(jobs)).submit(job) for job in jobs]]


def _forward(dt, x, At, Bm, Cm, resets, keep: bool, fused=(None, None, None)):
    """y (L, B, D), the last state (B, D, N), all states (L, B, N, D) when `keep` (else None), and the
    output before the gate (L, B, D) when `keep` and fused with a gate (else None).

    fused: (bias, Dk, z), each None or contiguous: dt is then raw (softplus(dt + bias) in the kernel),
    and y = (C . h + Dk * x) * silu(z) (`fused_scan`)."""
    L, batch, D = dt.shape
    N = At.shape[0]
    bias, Dk, z = fused
    lib = _kernel().lib
    # the states, kept for the backward; without a gradient only the running one (batch, N, D)
    H = WORKSPACE.take((L, batch, N, D), dt) if keep else torch.empty((batch, N, D), dtype=dt.dtype)
    y = torch.empty_like(dt)
    ypre = torch.empty_like(dt) if keep and z is not None else None
    threads = torch.get_num_threads()
    # rows first; channels too when the batch is smaller than the threads (a prompt at batch 1). Not in
    # training: splitting a 1 x 2,048 window's channels over 2 threads (forward and backward) made the
    # step slower here (x1.14 the Llama's against x1.24, benchmarks/bench_model_train.py), the threads
    # meeting torch's own, still spinning after each matmul
    d_parts = max(1, threads // batch) if not keep else 1
    failed = _run([functools.partial(lib.scan_forward, L, batch, N, D, b0, b1, d0, d1, _ptr(dt), _ptr(x), _ptr(At),
                                     _ptr(Bm), _ptr(Cm), _ptr(resets), _ptr(H), batch * N * D if keep else 0,
                                     _ptr(y), _ptr(bias), _ptr(Dk), _ptr(z), _ptr(ypre))
                   for b0, b1 in _split(batch, threads) for d0, d1 in _split(D, d_parts)])
    if any(failed):
        raise MemoryError("the C scan kernel could not allocate a row's step sizes")
    last = (H[L - 1] if keep else H).transpose(1, 2).contiguous()  # (B, D, N), HF's
    return y, last, H if keep else None, ypre


class _KernelRecurrence(torch.autograd.Function):
    """`selective._Recurrence` (same inputs, outputs and layout) with the kernel doing the work.
    `resets` here is a (L, B) uint8 tensor (1: start afresh) or None. With `bias`, `Dk`, `z` (the
    fused form, `fused_scan`): dt is raw, and the D skip and the gate are applied in the kernel."""

    @staticmethod
    def forward(ctx, dt, x, A, Bm, Cm, resets, bias=None, Dk=None, z=None):
        At = A.t().contiguous()
        y, last, H, ypre = _forward(dt, x, At, Bm, Cm, resets, keep=True, fused=(bias, Dk, z))
        empty = torch.empty(0)
        ctx.save_for_backward(dt, x, At, Bm, Cm, H, *(empty if t is None else t for t in (resets, bias, Dk, z, ypre)))
        ctx.given = [t is not None for t in (resets, bias, Dk, z, ypre)]
        ctx.done = False
        ctx.set_materialize_grads(False)  # an unused output (the last state, in training) comes back None, not zeros
        return y, last

    @staticmethod
    def backward(ctx, grad_y, grad_last):
        backward_once(ctx)
        dt, x, At, Bm, Cm, H, *extra = ctx.saved_tensors
        resets, bias, Dk, z, ypre = (t if given else None for t, given in zip(extra, ctx.given))
        L, batch, D = dt.shape
        N = At.shape[0]
        grad_y = torch.zeros_like(dt) if grad_y is None else grad_y.contiguous()
        grad_last = None if grad_last is None else grad_last.contiguous()
        grad_dt, grad_x = torch.empty_like(dt), torch.empty_like(dt)
        grad_B, grad_C = torch.empty_like(Bm), torch.empty_like(Cm)
        grad_z = None if z is None else torch.empty_like(z)
        parts = _split(batch, torch.get_num_threads())
        # one (N, D) A-gradient and one D-gradient of each of Dk and bias per thread: the sums over rows meet
        grad_A_parts = torch.zeros((len(parts), N + 2, D), dtype=dt.dtype)
        lib = _kernel().lib
        jobs = [functools.partial(lib.scan_backward, L, batch, N, D, b0, b1, _ptr(dt), _ptr(x), _ptr(At), _ptr(Bm),
                                  _ptr(Cm), _ptr(resets), _ptr(H), _ptr(grad_y), _ptr(grad_last), _ptr(grad_dt),
                                  _ptr(grad_x), _ptr(grad_B), _ptr(grad_C), _ptr(grad_A_parts[i, :N]),
                                  _ptr(bias), _ptr(Dk), _ptr(z), _ptr(ypre), _ptr(grad_z),
                                  _ptr(grad_A_parts[i, N]), _ptr(grad_A_parts[i, N + 1]))
                for i, (b0, b1) in enumerate(parts)]
        if any(_run(jobs)):
            raise MemoryError("the C scan kernel could not allocate its adjoint state")
        WORKSPACE.give(H)
        sums = grad_A_parts.sum(0)
        grad_Dk = None if Dk is None else sums[N]
        grad_bias = None if bias is None else sums[N + 1]
        return grad_dt, grad_x, sums[:N].t(), grad_B, grad_C, None, grad_bias, grad_Dk, grad_z


def conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 since: Optional[torch.Tensor]) -> torch.Tensor:
    """The mixer's causal depthwise conv (no activation), time-major: x (L, B, C) float32 with
    contiguous channels (a view into in_proj's output is fine), weight (C, K), bias (C,) or None,
    since (L, B, 1) int64 (each token's distance from its document's start) or None → (L, B, C).
    `model.scan._ShiftConv`'s forward, in the kernel."""
    L, batch, C = x.shape
    K = weight.shape[-1]
    if x.stride(2) != 1 or x.stride(0) != batch * x.stride(1):
        x = x.contiguous()
    wt = weight.t().contiguous()  # (K, C): each tap's channels side by side
    since = None if since is None else since.reshape(L, batch).contiguous()
    bias = None if bias is None else bias.contiguous()
    out = torch.empty((L, batch, C), dtype=x.dtype)
    # on one thread: a few multiply-adds per element, and a second thread meets torch's own, still
    # spinning after the matmul before (measured: 1.4 ms on one thread, 2.2 ms on two, a 4,096 x 512 conv)
    _kernel().lib.conv_forward(L, batch, C, K, _ptr(x), x.stride(1), _ptr(wt), _ptr(bias), _ptr(since), _ptr(out))
    return out


def recurrence(dt, x, A, Bm, Cm, reset_mask: Optional[torch.Tensor]):
    """y (L, B, D) and the last state (B, D, N) of the recurrence; `reset_mask` (L, B) bool or None."""
    resets = None if reset_mask is None else reset_mask.to(torch.uint8).contiguous()
    inputs = [t.contiguous() for t in (dt, x, A, Bm, Cm)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _KernelRecurrence.apply(*inputs, resets)
    # no graph will be kept (inference, evaluation): only the running state, no (L, B, N, D) buffer
    dt, x, A, Bm, Cm = inputs
    y, last, _, _ = _forward(dt, x, A.t().contiguous(), Bm, Cm, resets, keep=False)
    return y, last


def fused_scan(dt, x, A, Bm, Cm, bias, Dk, z, reset_mask: Optional[torch.Tensor]):
    """`recurrence` with softplus(dt + bias) before it and (y + Dk * x) * silu(z) after it, in the kernel:
    dt, x, z (L, B, D) raw; bias, Dk (D,). The elementwise passes around the scan (and their backward)
    happen while each row is in cache instead of as whole-tensor ops."""
    resets = None if reset_mask is None else reset_mask.to(torch.uint8).contiguous()
    inputs = [t.contiguous() for t in (dt, x, A, Bm, Cm, bias, Dk, z)]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _KernelRecurrence.apply(*inputs[:5], resets, *inputs[5:])
    dt, x, A, Bm, Cm, bias, Dk, z = inputs
    y, last, _, _ = _forward(dt, x, A.t().contiguous(), Bm, Cm, resets, keep=False, fused=(bias, Dk, z))
    return y, last

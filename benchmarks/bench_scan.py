"""The selective scan alone (forward + backward) by length: the fast scan against the step-by-step loop.

    .venv/bin/python benchmarks/bench_scan.py           # a few minutes on 2 busy cores
    .venv/bin/python benchmarks/bench_scan.py --quick

The tiny model's layer shape (batch 8, D 512, N 16), fp32, 2 threads: our `selective_scan` against
the readable recurrence (`model.scan.reference_scan`, plain autograd through a loop over time), at
several lengths; medians of interleaved repeats, the ratio printed. HF's own paths (its loop,
mambapy) are measured at the model level, through HF's classes: `bench_train_cpu.py`. Generation:
`bench_generate.py`.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mamba_nb.scan import selective_scan

THREADS = 2


def scan_inputs(length: int, batch: int = 8, d: int = 512, n: int = 16):
    gen = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(batch, d, length, generator=gen),
        dt=torch.randn(batch, d, length, generator=gen) - 4,
        A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),
        B=torch.randn(batch, n, length, generator=gen),
        C=torch.randn(batch, n, length, generator=gen),
        D=torch.ones(d),
        z=torch.randn(batch, d, length, generator=gen),
        delta_bias=torch.zeros(d),
    )
    return {k: v.requires_grad_(True) for k, v in inputs.items()}


def time_scan(fn, length: int, **flags) -> float:
    inputs = scan_inputs(length)
    t0 = time.perf_counter()
    out = fn(**inputs, delta_softplus=True, **flags)
    out.sum().backward()
    return time.perf_counter() - t0


def reference(hidden_states, dt, A, B, C, D, z, delta_bias, delta_softplus=True):
    """Our readable step-by-step recurrence (`model.scan.reference_scan`) in `selective_scan`'s signature."""
    from mamba_nb.model.scan import reference_scan

    return reference_scan(hidden_states, dt, A, B, C, D, z, dt_bias=delta_bias)[0]


def bench_scan_op(quick: bool) -> None:
    reps = 2 if quick else 3
    print("scan op forward+backward, batch 8 x D 512 x N 16, ms (median of %d)" % reps)
    print(f"{'L':>6s} {'fast':>9s} {'loop':>9s}   loop/fast")
    for length in ([64, 256, 1024] if not quick else [64, 128]):
        paths = {"fast": lambda: time_scan(selective_scan, length), "loop": lambda: time_scan(reference, length)}
        for f in paths.values():  # warm-up: first-touch allocations
            f()
        times = {p: [] for p in paths}
        for _ in range(reps):
            for p, f in paths.items():
                times[p].append(f())
        med = {p: statistics.median(t) * 1e3 for p, t in times.items()}
        print(f"{length:6d} {med['fast']:9.1f} {med['loop']:9.1f}   {med['loop'] / med['fast']:9.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    bench_scan_op(args.quick)


if __name__ == "__main__":
    main()

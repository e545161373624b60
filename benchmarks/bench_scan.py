"""The selective scan alone (forward + backward) by length, and cached generation at batch 1.

    .venv/bin/python benchmarks/bench_scan.py           # a few minutes on 2 busy cores
    .venv/bin/python benchmarks/bench_scan.py --quick

1. Scan op, the tiny model's layer shape (batch 8, D 512, N 16), fp32, 2 threads: our
   `selective_scan` vs HF's PyTorch loop vs mambapy's parallel scan (HF's `use_mambapy=True`),
   at several lengths: ours grows linearly, HF's loop quadratically (its backward; run up to 256).
2. Generation with the cache, batch 1, greedy: a 64-token prompt then 64 new tokens, Mamba-1 on
   "fast" vs "hf" (the per-token step is HF's own vectorized update on both; the prompt goes
   through the scan) and Mamba-2 on HF's path. Medians of interleaved repeats; ratios printed.
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch

from mamba_nb.scan import apply_scan_path, selective_scan

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


def bench_scan_op(quick: bool) -> None:
    from transformers.models.mamba import modeling_mamba

    hf = inspect.unwrap(modeling_mamba.mamba_selective_scan)
    reps = 2 if quick else 3
    print("1. scan op forward+backward, batch 8 x D 512 x N 16, ms (median of %d)" % reps)
    print(f"{'L':>6s} {'fast':>9s} {'mambapy':>9s} {'hf loop':>9s}   mambapy/fast  hf/fast")
    for length in ([64, 256, 1024] if not quick else [64, 128]):
        paths = {"fast": lambda: time_scan(selective_scan, length),
                 "mambapy": lambda: time_scan(hf, length, use_mambapy=True)}
        if length <= 256:
            paths["hf"] = lambda: time_scan(hf, length)
        for f in paths.values():  # warm-up: first-touch allocations
            f()
        times = {p: [] for p in paths}
        for _ in range(reps):
            for p, f in paths.items():
                times[p].append(f())
        med = {p: statistics.median(t) * 1e3 for p, t in times.items()}
        hf_ms = f"{med['hf']:9.0f}" if "hf" in med else f"{'(skip)':>9s}"
        hf_ratio = f"{med['hf'] / med['fast']:7.1f}x" if "hf" in med else "      -"
        print(f"{length:6d} {med['fast']:9.1f} {med['mambapy']:9.1f} {hf_ms}   {med['mambapy'] / med['fast']:11.1f}x  {hf_ratio}")


def bench_generation(quick: bool) -> None:
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    m1 = MambaForCausalLM(MambaConfig(hidden_size=256, num_hidden_layers=4, state_size=16, vocab_size=8192)).eval()
    m1_hf = MambaForCausalLM(m1.config).eval()
    m1_hf.load_state_dict(m1.state_dict())
    m2 = Mamba2ForCausalLM(Mamba2Config(hidden_size=256, num_hidden_layers=4, state_size=64, head_dim=32,
                                        num_heads=16, n_groups=1, chunk_size=64, vocab_size=8192)).eval()
    models = {"mamba1 fast": (m1, "fast"), "mamba1 hf": (m1_hf, "hf"), "mamba2 hf": (m2, "auto")}
    for model, scan in models.values():
        apply_scan_path(model, scan)
    prompt = torch.randint(0, 8192, (1, 64), generator=torch.Generator().manual_seed(0))
    new = 32 if quick else 64
    kwargs = dict(do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
    reps = 3 if quick else 5
    times = {name: [] for name in models}
    prefill = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(reps + 1):  # the first round is a warm-up
            for name, (model, _) in models.items():
                t0 = time.perf_counter()
                model.generate(prompt, max_new_tokens=1, min_new_tokens=1, **kwargs)
                t1 = time.perf_counter()
                out = model.generate(prompt, max_new_tokens=new, min_new_tokens=new, **kwargs)
                t2 = time.perf_counter()
                assert out.shape[1] == prompt.shape[1] + new
                prefill[name].append(t1 - t0)
                times[name].append(t2 - t1)
    print(f"\n2. generation, batch 1, cache, 64-token prompt + {new} new tokens, greedy (median of {reps})")
    tps = {}
    for name in models:
        total = statistics.median(times[name][1:])
        first = statistics.median(prefill[name][1:])
        tps[name] = new / total
        decode = (new - 1) / max(total - first, 1e-9)
        print(f"  {name:12s} {tps[name]:7.1f} tokens/s overall, prompt+1st token {first * 1e3:6.1f} ms, "
              f"then {decode:6.1f} tokens/s")
    print(f"  ratio mamba1 fast / hf: {tps['mamba1 fast'] / tps['mamba1 hf']:.2f}x (target >= 1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    bench_scan_op(args.quick)
    bench_generation(args.quick)


if __name__ == "__main__":
    main()

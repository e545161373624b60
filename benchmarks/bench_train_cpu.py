"""CPU training throughput of each scan path, against the matmul bound, all measured in one run.

    .venv/bin/python benchmarks/bench_train_cpu.py            # ~10-15 min on 2 busy cores
    .venv/bin/python benchmarks/bench_train_cpu.py --quick    # fewer steps, shorter HF-loop run

The course's tiny config: hidden 256, 4 layers, state 16, vocab 8192, batch 8 x 256 tokens,
fp32, 2 threads. Paths: our Mamba-1 on "fast" (mamba_nb.scan, its recurrence in the C kernel), the
same with the recurrence in PyTorch ops ("fast-torch", `compiled.turned_off()`), HF's Mamba-1 class
with `use_mambapy=True`, HF's default fallback (its O(L^2) backward: measured at batch 1 x 256,
stated), and our Mamba-2 (SSD, chunked). Throughput is the median of several steps, the paths interleaved, so the
other processes sharing the cores hit all of them alike. Peak RSS of a training step is measured
per path in its own subprocess. The bound: fp32 sgemm GFLOP/s measured here (median of several
2048^3 products, before and after) / (6 x parameters) tokens/s.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time

import torch

from mamba_nb.doc_reset import model_logits
from mamba_nb.scan import compiled

THREADS = 2
BATCH, CONTEXT, VOCAB = 8, 256, 8192
MAMBA1 = dict(hidden_size=256, num_hidden_layers=4, state_size=16, vocab_size=VOCAB)
# Mamba-2 at the same width and depth; state 64, head_dim 32 as in the project's "tiny" preset.
# tie=True matches Mamba-1's parameter count; untied is Mamba2Config's own default.
MAMBA2 = dict(hidden_size=256, num_hidden_layers=4, state_size=64, head_dim=32, num_heads=16, n_groups=1,
              chunk_size=64, vocab_size=VOCAB)


def build(path: str):
    """Our model for "fast", "fast-torch" and "mamba2*"; HF's class, as it ships, for "mambapy" and "hf"."""
    from transformers import Mamba2Config, MambaConfig, MambaForCausalLM

    from mamba_nb.model.lm import MambaLM

    torch.manual_seed(0)
    if path.startswith("mamba2"):
        model = MambaLM(Mamba2Config(**MAMBA2, tie_word_embeddings=path == "mamba2-tied")).set_scan_path("auto")
    elif path == "mambapy":
        model = MambaForCausalLM(MambaConfig(**MAMBA1, use_mambapy=True))  # HF's PyTorch path with mambapy's pscan
    elif path == "hf":
        model = MambaForCausalLM(MambaConfig(**MAMBA1))  # HF's default PyTorch fallback
    else:
        model = MambaLM(MambaConfig(**MAMBA1)).set_scan_path("fast")
    return model.train()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


def make_step(model, context: int, batch: int = BATCH, torch_recurrence: bool = False):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)

    def step() -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) for one optimizer step."""
        ids = torch.randint(0, VOCAB, (batch, context + 1), generator=gen)
        c0 = time.process_time()
        t0 = time.perf_counter()
        with compiled.turned_off() if torch_recurrence else contextlib.nullcontext():
            logits = model_logits(model, ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, time.process_time() - c0

    return step


def sgemm_gflops(reps: int = 5) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def child(path: str, context: int, steps: int, threads: int) -> None:
    """One path in a fresh process: peak RSS after `steps` training steps."""
    torch.set_num_threads(threads)
    model = build(path)
    step = make_step(model, context)
    for _ in range(steps):
        step()
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork+exec from the parent.
    try:
        status = open("/proc/self/status").read()
        peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    except OSError:  # not Linux: ru_maxrss (kilobytes on Linux, bytes on macOS)
        import resource

        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    print(json.dumps({"path": path, "peak_rss_mib": peak_kib / 1024}))


def peak_rss(path: str, context: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", path, "--context", str(context)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def hf_comparison(batch: int) -> tuple[float, float]:
    """Tokens/s of fast and of HF's default fallback at batch x CONTEXT: one HF step, after a fast one."""
    short = {p: build(p) for p in ("hf", "fast")}
    short_steps = {p: make_step(m, CONTEXT, batch=batch) for p, m in short.items()}
    short_steps["fast"]()  # warm-up
    tps = {p: batch * CONTEXT / short_steps[p]()[0] for p in ("fast", "hf")}
    return tps["fast"], tps["hf"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps; a shorter HF-loop comparison")
    ap.add_argument("--threads", type=int, default=THREADS, help="torch threads (the course setting: 2)")
    ap.add_argument("--hf-batch", type=int, help="batch for the HF-fallback comparison (default 8, 1 with --quick)")
    ap.add_argument("--only-hf", action="store_true", help="only the HF-fallback comparison")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--context", type=int, default=CONTEXT, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.context, steps=2, threads=args.threads)
        return
    sys.stdout.reconfigure(line_buffering=True)
    try:  # without it HF's use_mambapy=True silently runs its slow loop instead
        import mambapy  # noqa: F401
    except ImportError:
        sys.exit("the mambapy baseline needs the `mambapy` package: .venv/bin/pip install mambapy")
    torch.set_num_threads(args.threads)
    rounds = 3 if args.quick else 5
    # HF's default fallback has an O(L^2) backward (~150 s a step at 8 x 256 here, one step is
    # enough); --quick compares at batch 1 instead (same context, fast measured at the same shape).
    hf_batch = args.hf_batch or (1 if args.quick else BATCH)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH} x {CONTEXT}, fp32")
    if args.only_hf:
        fast, hf = hf_comparison(hf_batch)
        print(f"HF default fallback: fast {fast:.0f} vs hf {hf:.1f} tokens/s at batch {hf_batch} x {CONTEXT}: "
              f"{fast / hf:.1f}x (target >= 100x)")
        return
    gflops = [sgemm_gflops()]
    paths = ["fast", "fast-torch", "mambapy", "mamba2-tied", "mamba2-untied"]
    models = {p: build(p) for p in paths}
    steps = {p: make_step(m, CONTEXT, torch_recurrence=p == "fast-torch") for p, m in models.items()}
    for p in paths:  # warm-up: first-touch allocations, one-time probes
        steps[p]()
    times: dict[str, list[float]] = {p: [] for p in paths}
    cpu: dict[str, list[float]] = {p: [] for p in paths}
    for _ in range(rounds):
        for p in paths:
            wall, cpu_s = steps[p]()
            times[p].append(wall)
            cpu[p].append(cpu_s)
    gflops.append(sgemm_gflops())
    gf = statistics.median(gflops)
    tps = {p: BATCH * CONTEXT / statistics.median(times[p]) for p in paths}
    tpc = {p: BATCH * CONTEXT / statistics.median(cpu[p]) for p in paths}  # tokens per CPU-second

    short_tps = dict(zip(("fast", "hf"), hf_comparison(hf_batch)))

    rss = {p: peak_rss(p, CONTEXT) for p in ("fast", "mambapy", "mamba2-untied")}

    print(f"\nsgemm: {gf:.0f} GFLOP/s (median of {gflops[0]:.0f}, {gflops[1]:.0f}; before/after)")
    print(f"{'path':16s} {'params':>9s} {'tokens/s':>9s} {'bound':>9s} {'% bound':>8s} {'tokens/CPU-s':>13s}")
    for p in paths:
        params = n_params(models[p])
        bound = gf * 1e9 / (6 * params)
        print(f"{p:16s} {params:9,d} {tps[p]:9.0f} {bound:9.0f} {100 * tps[p] / bound:7.1f}% {tpc[p]:13.0f}")
    kernel = "C kernel" if compiled.available() else f"none: {compiled.why_not()}"
    print(f"\nratios (Mamba-1 fast, recurrence in its {kernel}, against):")
    print(f"  its recurrence in PyTorch ops     {tps['fast'] / tps['fast-torch']:7.2f}x")
    print(f"  use_mambapy=True              {tps['fast'] / tps['mambapy']:7.1f}x   (target >= 5x; "
          f"per CPU-second {tpc['fast'] / tpc['mambapy']:.1f}x)")
    print(f"  HF default fallback           {short_tps['fast'] / short_tps['hf']:7.1f}x   "
          f"(fast {short_tps['fast']:.0f} vs hf {short_tps['hf']:.1f} tokens/s at batch {hf_batch} x {CONTEXT}; "
          "target >= 100x)")
    print(f"  Mamba-2 HF chunked (tied)     {tps['fast'] / tps['mamba2-tied']:7.2f}x")
    print(f"  Mamba-2 HF chunked (untied)   {tps['fast'] / tps['mamba2-untied']:7.2f}x")
    print(f"peak RSS of a training step: fast {rss['fast']:.0f} MiB, mambapy {rss['mambapy']:.0f} MiB "
          f"(ratio {rss['fast'] / rss['mambapy']:.2f}, target <= 2), mamba2 {rss['mamba2-untied']:.0f} MiB")
    raw = {p: [round(t, 3) for t in v] for p, v in times.items()}
    print("raw step times (s):", json.dumps(raw))


if __name__ == "__main__":
    main()

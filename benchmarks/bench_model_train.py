"""Training tokens/s of our Mamba-1 (`mamba_nb.model.lm`) against its same-size Llama peer, one run.

The course's `tiny` preset (hidden 256, 4 layers, untied, 8k vocabulary), fp32, AdamW, a full
step (forward, cross-entropy, backward, optimizer), at each `--shape` (default 8x256 and 1x2048):

- ours: `MambaLM` on its default scan path (on CPU: the fast scan, its recurrence in the C kernel);
- llama: HF's `LlamaForCausalLM` (SDPA), the `--arch llama` peer of the same preset.

The two are interleaved `--repeats` times (the other jobs on shared cores hit both alike); the
median and the spread (min-max) are printed, with the ratio ours / llama three ways: median wall
time, fastest step (the least disturbed), and CPU time of the process (tokens per CPU-second). `--profile` also prints
where one step of ours goes (torch.profiler, self CPU time grouped: matmuls, the scan kernel,
copies, log-softmax, elementwise, ...), which is what the speed work in `model/` is judged by.

    .venv/bin/python benchmarks/bench_model_train.py [--shape 8x256 --shape 1x2048] [--repeats 5]
        [--threads 2] [--profile]

Measured again (5 repeats, 2026-12-04): 8 x 256 ours 3,822 tokens/s, Llama 4,245 (x0.90; x0.95 per
CPU-second); 1 x 2,048 ours 3,661, Llama 3,116 (x1.17; x1.30 per CPU-second); ours' step: matmuls
52 %, the scan kernel 27-29 %, elementwise 8-9 %, log-softmax 7 %, copies 1 %.
Measured (2 shared cores, 2 threads, 7 repeats, a quiet moment): 8 x 256 ours 4,280 tokens/s, Llama
4,778 (x0.90); 1 x 2,048 ours 4,194, Llama 3,382 (x1.24). Ours' step: matmuls 56%, the scan kernel
23% (softplus, D skip and gate fused in), elementwise 8%, log-softmax 7%, copies 3%, the conv 0%.
Before the time-major layout, the shift conv and the fused kernel (the same run's profile, busy
cores): x0.64 and x1.00, with F.conv1d's depthwise backward over 80% of the 1 x 2,048 step.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mamba_nb.model import _ARCH_DEFAULTS, PRESETS  # noqa: E402

VOCAB = 8192
# profiler op name -> the share it counts in (the first matching fragment wins; the rest: "other")
GROUPS = [("matmuls", ("mm", "matmul", "linear", "bmm", "addmm", "baddbmm")),
          ("scan kernel", ("recurrence", "scan")),
          ("conv", ("conv",)),
          ("log-softmax / loss", ("log_softmax", "nll_loss", "cross_entropy")),
          ("copies", ("copy_", "contiguous", "clone", "cat", "index", "to_copy", "_to_copy")),
          ("optimizer", ("adam", "foreach", "lerp", "addcdiv", "sqrt")),
          ("elementwise", ("mul", "add", "silu", "softplus", "exp", "sigmoid", "div", "rsqrt", "pow",
                           "mean", "sum", "neg", "sub", "where", "fill", "zero", "threshold"))]


def models():
    from transformers import LlamaConfig, LlamaForCausalLM, MambaConfig

    from mamba_nb.model.lm import MambaLM

    torch.manual_seed(0)
    fields = {**_ARCH_DEFAULTS["mamba"], **PRESETS["tiny"]["mamba"]}
    ours = MambaLM(MambaConfig(**fields, vocab_size=VOCAB, intermediate_size=2 * fields["hidden_size"]))
    llama = LlamaForCausalLM(LlamaConfig(**{**_ARCH_DEFAULTS["llama"], **PRESETS["tiny"]["llama"]},
                                         vocab_size=VOCAB, attn_implementation="sdpa"))
    return {"ours": ours.train(), "llama": llama.train()}


def make_step(model, batch: int, context: int):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    hf = not hasattr(model, "backbone")

    def step() -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) of one optimizer step."""
        ids = torch.randint(0, VOCAB, (batch, context + 1), generator=gen)
        c0, t0 = time.process_time(), time.perf_counter()
        logits = model(ids[:, :-1]).logits if hf else model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, time.process_time() - c0

    return step


def group_of(name: str) -> str:
    low = name.lower()
    for group, fragments in GROUPS:
        if any(f in low for f in fragments):
            return group
    return "other"


def profile_split(step) -> dict[str, float]:
    """Share of one step's self CPU time (all threads' ops, top-level ops not double counted) per group."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[group_of(event.key)] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {g: 100 * t / whole for g, t in sorted(totals.items(), key=lambda kv: -kv[1])}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", action="append", help="BATCHxCONTEXT (repeatable; default 8x256 and 1x2048)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the course setting: 2)")
    ap.add_argument("--profile", action="store_true", help="print the profile split of one step of ours")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in (args.shape or ["8x256", "1x2048"])]
    built = models()
    for batch, context in shapes:
        steps = {name: make_step(m, batch, context) for name, m in built.items()}
        for s in steps.values():  # warm-up: first-touch allocations, the kernel's build
            s()
        times, cpu = {name: [] for name in steps}, {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, s in steps.items():
                wall, cpu_s = s()
                times[name].append(wall)
                cpu[name].append(cpu_s)
        tps = {n: batch * context / statistics.median(t) for n, t in times.items()}
        tpc = {n: batch * context / statistics.median(t) for n, t in cpu.items()}  # steadier on shared cores
        print(f"batch {batch} x {context}, {torch.get_num_threads()} threads, median of {args.repeats} "
              f"(min-max step s):")
        for name, t in times.items():
            print(f"  {name:6s} {tps[name]:8.0f} tokens/s  ({min(t):.3f}-{max(t):.3f} s)  "
                  f"{tpc[name]:8.0f} tokens/CPU-s")
        best = {n: min(t) for n, t in times.items()}  # the least disturbed step of each, on shared cores
        print(f"  ratio ours / llama: {tps['ours'] / tps['llama']:.2f} (median wall), "
              f"{best['llama'] / best['ours']:.2f} (fastest step), {tpc['ours'] / tpc['llama']:.2f} (CPU time)")
        if args.profile:
            split = profile_split(steps["ours"])
            print("  ours, share of a step's op time: " + ", ".join(f"{g} {p:.0f}%" for g, p in split.items()))


if __name__ == "__main__":
    main()

"""How fast windows reach the training loop, against the original project's read path (same run).

    .venv/bin/python benchmarks/bench_pipeline.py [--quick] [--dataset data/stdlib]

Measures, on the full-stdlib dataset (built first if missing, ~1 min):
  1. the original project's path: one `take(range(idx, idx+ctx+1)).to_pylist()` per window;
  2. `make_loader` with FIM off, in the main process: ratio to 1 (target >= 5x);
  3. `make_loader` with character-level FIM at fim_rate=0.9, one worker: tokens/s (target >= 300,000);
  4. the same with two workers: ratio to one worker (target >= 1.6x; needs 2 idle cores).
Tokens counted are input tokens (batch_size * context_len per batch). Worker start-up is
excluded (the first batches are not timed). Each comparison alternates its two sides in
rounds and reports medians, since the machine's load changes under the measurement.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mamba_nb.config import WindowConfig, course_data_config  # noqa: E402
from mamba_nb.dataset import build_dataset, open_dataset  # noqa: E402
from mamba_nb.windows import make_loader  # noqa: E402


class OriginalReadPath:
    """The original `MambaDataset.__getitem__`: one take per window, through Python lists."""

    def __init__(self, ds, context_len, seed=0):
        self.tokens, self.ctx = ds.tokens("train"), context_len
        self.rng = np.random.default_rng(seed)
        self.high = ds.num_tokens("train") - context_len - 1

    def tokens_in(self, windows):
        for idx in self.rng.integers(0, self.high, size=windows).tolist():
            rows = self.tokens.take(list(range(idx, idx + self.ctx + 1))).to_pylist()
            window = torch.tensor([r["token"] for r in rows], dtype=torch.long)
            _inputs, _targets = window[:-1], window[1:]
        return windows * self.ctx


class Loader:
    """make_loader's batches, pulled `n` at a time (workers started and queues filled first)."""

    def __init__(self, ds, cfg, batch_size, num_workers, warmup):
        self.loader, _ = make_loader(ds, "train", cfg, batch_size, num_workers=num_workers)
        self.it = iter(self.loader)
        for _ in range(warmup):
            next(self.it)

    def tokens_in(self, batches):
        return sum(next(self.it)["input_ids"].numel() for _ in range(batches))


def timed(source, n):
    t0 = time.perf_counter()
    tokens = source.tokens_in(n)
    return tokens / (time.perf_counter() - t0)


def paired(a, na, b, nb, rounds):
    """Alternate a and b `rounds` times: median tokens/s of each, median ratio b/a of the pairs.

    This machine is shared, so load comes and goes; pairs measured back to back see about the
    same load, and the median ignores the rounds a burst of load hit.
    """
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(timed(a, na))
        rb.append(timed(b, nb))
    ratios = [y / x for x, y in zip(ra, rb)]
    return float(np.median(ra)), float(np.median(rb)), float(np.median(ratios))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=None, help="a built dataset directory (default: data/stdlib, built if missing)")
    p.add_argument("--context-len", type=int, default=256)
    # 32 x 256 = 8,192 tokens per batch; at 8 the per-call cost of a Lance take weighs more (see report)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="fewer batches (noisier)")
    args = p.parse_args(argv)

    if args.dataset:
        ds = open_dataset(args.dataset)
    else:
        data_cfg = course_data_config(smoke=False)
        ds = build_dataset(data_cfg) if not (Path(data_cfg.out_dir) / "manifest.json").exists() else open_dataset(data_cfg.out_dir)
    ctx, bs = args.context_len, args.batch_size
    print(f"dataset {ds.path}: {ds.num_tokens('train'):,} train tokens; context_len={ctx}, batch_size={bs}")

    rounds = 3 if args.quick else 7
    k = 10 if args.quick else 30  # batches per round
    fim = WindowConfig(context_len=ctx, fim_rate=0.9, spm_rate=0.5, fim_level="char")
    off = dataclasses.replace(fim, fim_rate=0.0)

    base, ours, ratio = paired(OriginalReadPath(ds, ctx), k * bs, Loader(ds, off, bs, 0, 2), k, rounds)
    print(f"original read path (one take + to_pylist per window): {base:12,.0f} tokens/s")
    print(f"make_loader, FIM off, main process:                   {ours:12,.0f} tokens/s  ratio {ratio:5.1f}x (target >= 5x)")

    one, two, ratio2 = paired(Loader(ds, fim, bs, 1, 4), 2 * k, Loader(ds, fim, bs, 2, 4), 2 * k, rounds)
    print(f"make_loader, char FIM 0.9, 1 worker:                  {one:12,.0f} tokens/s  (target >= 300,000)")
    print(f"make_loader, char FIM 0.9, 2 workers:                 {two:12,.0f} tokens/s  ratio to 1 worker {ratio2:4.2f}x (target >= 1.6x)")
    print(f"(medians of {rounds} paired rounds; load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

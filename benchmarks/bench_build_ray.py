"""The distributed build (`--build-engine ray`) on a local Ray cluster against the single-process
build, in one run, on the full standard library:

  (i)   wall time, distributed ÷ single-process: the whole build (BPE training on the driver
        included: it is not distributed), and its tokenize-and-write pass alone; Ray's start-up
        (`ray.init`) counted in, and left out;
  (ii)  identical output: every token, document span and source of both splits compared;
  (iii) peak RSS of a worker, building 1× and 4× the standard library (the file list repeated;
        the course tokenizer given, so no BPE training): a worker holds one shard at a time.

    .venv/bin/python benchmarks/bench_build_ray.py [--workers 2] [--quick]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_build import corpus_of  # noqa: E402  (the stdlib, its file list repeated)

from mamba_nb import ray_build  # noqa: E402
from mamba_nb.config import DataConfig  # noqa: E402
from mamba_nb.dataset import build_dataset  # noqa: E402


def identical(a, b) -> bool:
    for split in ("train", "validation"):
        n = a.num_tokens(split)
        if (b.num_tokens(split) != n or not np.array_equal(a.read(split, 0, n), b.read(split, 0, n))
                or not np.array_equal(a.doc_spans(split), b.doc_spans(split)) or a.sources(split) != b.sources(split)):
            return False
    return True


def timed_build(cfg: DataConfig, corpus) -> tuple[object, float]:
    start = time.perf_counter()
    ds = build_dataset(cfg, corpus=corpus, progress=False)
    return ds, time.perf_counter() - start


def compare(args, files, work: Path, local, local_s: float) -> bool:
    """(i) and (ii): the distributed build of the same corpus, timed, its output compared."""
    start = time.perf_counter()
    ray_build._start(args.workers)
    startup_s = time.perf_counter() - start
    dist, dist_s = timed_build(DataConfig(out_dir=str(work / "ray"), overwrite=True, build_engine="ray",
                                          build_workers=args.workers), corpus_of(files))
    same = identical(local, dist)
    lp, dp = local.meta["build_seconds"], dist.meta["build_seconds"]
    tokens = local.num_tokens("train") + local.num_tokens("validation")
    print(f"{'full' if not files else f'first {files} files of the'} stdlib, {tokens:,} tokens; Ray with "
          f"{args.workers} workers, {dist.meta['build_engine']['tasks']} tasks; start-up {startup_s:.1f} s")
    print(f"{'':<28}{'single':>9}{'ray':>9}{'ray ÷ single':>14}{'with start-up':>15}")
    for label, a, b in (("whole build", local_s, dist_s),
                        ("tokenize-and-write pass", lp["tokenize_and_write"], dp["tokenize_and_write"])):
        print(f"{label:<28}{a:>8.1f}s{b:>8.1f}s{b / a:>14.2f}{(b + startup_s) / a:>15.2f}")
    print(f"identical output (tokens, document spans, sources of both splits): {same}")
    return same


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="the first 300 files, not the whole stdlib")
    p.add_argument("--memory-only", action="store_true", help="only (iii), the workers' peak RSS")
    p.add_argument("--tasks-per-worker", type=int, default=ray_build.TASKS_PER_WORKER,
                   help="replace a worker after this many tasks (ray_build.TASKS_PER_WORKER)")
    args = p.parse_args(argv)
    ray_build.TASKS_PER_WORKER = args.tasks_per_worker
    import ray

    files = 300 if args.quick else None
    work = Path(tempfile.mkdtemp(prefix="bench-build-ray-"))
    try:
        base = DataConfig(out_dir=str(work / "local"), overwrite=True)
        local, local_s = timed_build(base, corpus_of(files))
        same = True
        if not args.memory_only:
            same = compare(args, files, work, local, local_s)
        tokenizer = str(work / "local" / "tokenizer")
        print(f"workers replaced after {ray_build.TASKS_PER_WORKER or 'no'} tasks")
        peaks = {}
        for repeat in (1, 4):
            ray.shutdown()  # fresh workers: a worker's peak RSS is over its whole life
            ray_build._start(args.workers)
            cfg = DataConfig(out_dir=str(work / f"x{repeat}"), tokenizer=tokenizer, build_engine="ray",
                             build_workers=args.workers)
            ds, seconds = timed_build(cfg, corpus_of(files, repeat))
            peaks[repeat] = ds.meta["build_engine"]["worker_peak_rss_mib"]
            print(f"{repeat}× the corpus ({ds.num_tokens('train') + ds.num_tokens('validation'):,} tokens, "
                  f"{seconds:.0f} s): largest worker peak RSS {peaks[repeat]:.0f} MiB")
        print(f"worker peak RSS 4× ÷ 1×: {peaks[4] / peaks[1]:.2f}")
        return 0 if same else 1
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

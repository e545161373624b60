"""How long a full HumanEval single-line run takes here, and what the sandbox pool buys.

1. The sandbox pool against one worker, same run: the 1,033 single-line programs (each task's
   truth spliced back, so every program passes and does real work) run with 1 worker, then with
   one per core; the ratio is wall time 1 worker / pool.
2. With `--checkpoint`: the whole benchmark as `python -m mamba_nb evaluate --benchmark
   humaneval-single` runs it (greedy, all 1,033 tasks), split into model time and sandbox time.

    .venv/bin/python benchmarks/bench_eval.py [--checkpoint runs/course] [--limit N]
"""
from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> int:
    from mamba_nb.benchmark import HUMANEVAL_TIMEOUT_S, check_program, humaneval_holes
    from mamba_nb.sandbox import isolation, run_many

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", help="also time the whole benchmark on this model")
    p.add_argument("--limit", type=int, help="fewer tasks (spread over all problems)")
    args = p.parse_args(argv)
    holes = humaneval_holes("single", limit=args.limit)
    programs = [check_program(h, h.middle, problem) for h, problem in holes]
    isolated, why = isolation()
    print(f"{len(programs)} programs; sandbox: {'bubblewrap namespaces' if isolated else 'NOT isolated: ' + why}; "
          f"{os.cpu_count()} cores")
    times = {}
    for workers in (1, os.cpu_count() or 1):
        start = time.perf_counter()
        results = run_many(programs, workers=workers, timeout_s=HUMANEVAL_TIMEOUT_S)
        times[workers] = time.perf_counter() - start
        passed = sum(r.passed for r in results)
        print(f"  {workers} worker(s): {times[workers]:6.1f} s ({1000 * times[workers] / len(programs):.0f} ms a "
              f"program), {passed}/{len(programs)} passed")
    pool = max(times)
    print(f"pool ÷ 1 worker: {times[1] / times[pool]:.2f}x")

    if args.checkpoint:
        from mamba_nb.benchmark import run_benchmark
        from mamba_nb.config import EvalConfig
        from mamba_nb.checkpoint import resolve_checkpoint_dir
        from mamba_nb.model import load_checkpoint

        directory = resolve_checkpoint_dir(args.checkpoint)
        model, tok = load_checkpoint(directory)
        start = time.perf_counter()
        r = run_benchmark(model, tok, EvalConfig(benchmark="humaneval-single", humaneval_limit=args.limit),
                          checkpoint=str(directory))
        total = time.perf_counter() - start
        print(f"humaneval-single on {directory}: {r['tasks']} tasks in {total:.0f} s (model {r['model_s']:.0f} s, "
              f"sandbox {r['sandbox_s']:.0f} s); pass@1 {r['pass_at_k']['1']:.4f}, outcomes {r['outcomes']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

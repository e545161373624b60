"""The most learned per CPU-minute: course recipes compared at equal wall-clock.

Each candidate is the course configuration with a few settings changed (the same flags as
`python -m mamba_nb train`). Each trains for the same time budget, one at a time, in its own
process (so allocators and memory do not carry over), from scratch, on this machine. Then:

- left-to-right validation loss in **bits per byte** (`val_bpb`: compares vocabularies),
- the loss on FIM middles,
- the **suffix gain** (SPM prompt, the course's FIM measure, `mamba_nb.suffix_gain`) on single
  lines of a package outside the corpus (the tuning set, `--tasks-from`, default `click`; the
  course reports on another one, `config.OUTSIDE_PACKAGE`, so choices are not tuned on it),
  beside its controls on the same holes: the **content gain** (SPM; a shuffled suffix's loss
  minus the true one's: what the suffix's content is worth, not the prompt's layout) and the
  **absolute middle loss** with the best FIM prompt (SPM or PSM), set against the best
  prefix-only (left-to-right) middle loss any candidate of the run reaches (`vs best L2R`: below
  0, that candidate's FIM prompt predicts middles better than any recipe's left-to-right mode),
- exact match of greedy single lines after the better FIM prompt and after the prefix alone,
  and the SPM prompt's end-of-middle (`<|endoftext|>`) loss,
- for candidates trained in regions, the same losses without the near-hole layout (the far
  prefix in the FIM sample, as the paper lays it out),
- the same middle losses compared pairwise on the same holes (against the course's FIM prompt
  and against the best left-to-right loss), whose intervals are far tighter than two separate ones,
- all of it again at equal tokens: each run's snapshot at the last step all runs reached,
- tokens/s and tokens seen.

Ratios are against the course default measured in the same run (`course`). Runs land in
runs/bench_recipe/<name>/ and are reused with `--reuse` (e.g. to reprint the table).

    .venv/bin/python benchmarks/bench_recipe.py [--budget-s 600] [--only course llama ...] [--reuse]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench_recipe"
sys.path.insert(0, str(ROOT))
from mamba_nb.config import COURSE_RECIPE  # noqa: E402  (the course's FIM settings and learning rate, which every candidate starts from)

# name -> (what it changes, train flags, dataset vocabulary (None: the course's), environment)
CANDIDATES: dict[str, tuple[str, list[str], int | None, dict]] = {
    "course": ("the course default", [], None, {}),
    "paper-fim": ("FIM as in the paper: whole-document spans (fim_region_lines 0)",
                  ["--fim-region-lines", "0", "--line-hole-rate", "0"], None, {}),
    "mix": ("a mix: half the windows in regions (the course's), the rest whole-document FIM (region_share 0.5)",
            ["--region-share", "0.5"], None, {}),
    "regions-3": ("regions of 3 lines (from 4): the suffix nearer still to the hole",
                  ["--fim-region-lines", "3"], None, {}),
    "fim-0.5": ("half the regions transformed (fim_rate 0.5, from 0.9): more plain code read in order",
                ["--fim-rate", "0.5"], None, {}),
    "fim-0.7": ("fim_rate 0.7 (from 0.9): more plain code read in order",
                ["--fim-rate", "0.7"], None, {}),
    "mamba2": ("Mamba-2 (state 64, HF's chunked scan)", ["--arch", "mamba2"], None, {}),
    "llama": ("a same-size transformer (HF Llama, SDPA attention)", ["--arch", "llama"], None, {}),
    "wide": ("hidden 384 (from 256)", ["--hidden-size", "384"], None, {}),
    "narrow-deep": ("hidden 192, 8 layers", ["--hidden-size", "192", "--num-hidden-layers", "8"], None, {}),
    "state-32": ("Mamba-1 state 32 (from 16)", ["--state-size", "32"], None, {}),
    "batch-16": ("batch 16 (from 8)", ["--batch-size", "16"], None, {}),
    "lr-1.5e-3": ("learning rate 1.5e-3 (from 1e-2)", ["--lr", "1.5e-3"], None, {}),
    "lr-6e-3": ("learning rate 6e-3 (from 1e-2)", ["--lr", "6e-3"], None, {}),
    "lr-3e-3": ("learning rate 3e-3 (the course's until the comparison with controls)", ["--lr", "3e-3"], None, {}),
    "vocab-4k": ("a 4,096-token vocabulary", [], 4096, {}),
    "vocab-16k": ("a 16,384-token vocabulary", [], 16384, {}),
    "glibc-malloc": ("the system allocator instead of tcmalloc", [], None, {"MAMBA_NB_ALLOCATOR": "system"}),
}


def dataset_for(vocab: int | None) -> str:
    """The course dataset, or one built with another vocabulary (built once, then reused)."""
    if vocab is None:
        return str(ROOT / "data" / "stdlib")
    path = ROOT / "data" / f"stdlib-v{vocab}"
    if not (path / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "mamba_nb", "build-dataset", "--vocab-size", str(vocab),
                        "--out-dir", str(path)], check=True, cwd=ROOT)
    return str(path)


def train_candidate(name: str, budget_s: float) -> None:
    _, flags, vocab, env = CANDIDATES[name]
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (its own earlier one is not worth keeping)
    course = [f"--{k.replace('_', '-')}={v}" for k, v in COURSE_RECIPE.items()]
    cmd = [sys.executable, "-m", "mamba_nb", "train", "--dataset", dataset_for(vocab), "--out-dir", str(out),
           "--time-budget-s", str(budget_s), "--eval-every", "100", "--save-every", str(10**9), *course, *flags]
    print(f"\n== {name}: {CANDIDATES[name][0]}; {budget_s:.0f} s\n   {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, **env})


def measure(name: str, tasks_from: str, num_tasks: int, step: int | None = None) -> dict:
    """Everything the table shows, of the run's final weights or (`step`) of its snapshot there."""
    from mamba_nb.holes import documents_from, line_tasks, package_dir
    from mamba_nb.config import EvalConfig
    from mamba_nb.evaluate import LINE_SLACK, _scores
    from mamba_nb.infill import FROM_CHECKPOINT, infill_holes, resolve_near_lines
    from mamba_nb.checkpoint import trained_context_len
    from mamba_nb.model import load_checkpoint
    from mamba_nb.suffix_gain import suffix_gain
    from mamba_nb.viz.training import read_metrics

    out = OUT / name if step is None else OUT / name / "snapshots" / f"step-{step:07d}"
    records = [r for r in read_metrics(OUT / name) if step is None or r["step"] <= step]
    last = [r for r in records if r["kind"] == "eval"][-1]
    steps = [r for r in records if r["kind"] == "train"]
    step_s = sum(r["step_s"] for r in steps)
    model, tok = load_checkpoint(out)
    directory = Path(tasks_from) if Path(tasks_from).is_dir() else package_dir(tasks_from)
    tasks = line_tasks(documents_from(directory), num_tasks, seed=1, tokenizer=tok)
    context_len = trained_context_len(out)
    gain = suffix_gain(model, tok, tasks, modes=("spm", "psm"), context_len=context_len, per_hole=True)
    fim_mode = min(("spm", "psm"), key=lambda m: gain[m]["loss"])  # the better FIM prompt
    spm, fim = gain["spm"], gain[fim_mode]
    holes = gain["per_hole"]  # per-hole loss sums, for the paired comparisons (`print_paired`)
    far = {}
    if resolve_near_lines(model, FROM_CHECKPOINT) is not None:  # trained in regions: the layout off too
        off = suffix_gain(model, tok, tasks, modes=("spm", "psm"), context_len=context_len, near_lines=None)
        off_fim = min((off["spm"], off["psm"]), key=lambda r: r["loss"])
        far = {"far_fim_middle_loss": off_fim["loss"], "far_fim_middle_interval": off_fim["loss_interval"],
               "far_content_gain": off["spm"]["content_gain"], "far_content_interval": off["spm"]["content_interval"],
               "far_eot_loss": off["spm"]["eot_loss"]}

    def exact(mode: str) -> float:  # greedy single lines, scored as `evaluate` scores them
        preds = infill_holes(model, tok, tasks, mode, context_len, mode, False, EvalConfig.max_line_tokens + LINE_SLACK)
        return _scores(tasks, preds)["exact_match"]

    return {**far, "exact_fim": exact(fim_mode), "exact_lm": exact("lm"),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "val_bpb": last.get("val_bpb"),
            "val_loss": last["val_loss"], "val_fim_loss": last["val_fim_loss"], "tokens_seen": last["tokens_seen"],
            "tokens_per_s": last["tokens_seen"] / step_s if step_s else 0.0, "gain": spm["gain"],
            "gain_interval": spm["interval"], "eot_loss": spm["eot_loss"],
            "content_gain": spm["content_gain"], "content_interval": spm["content_interval"],
            "prefix_only_loss": gain["prefix_only_loss"], "prefix_only_interval": gain["prefix_only_interval"],
            "fim_middle_loss": fim["loss"], "fim_middle_interval": fim["loss_interval"],
            "fim_prompt": fim_mode, "best": gain["best"],
            "per_hole": {"counts": holes["counts"].tolist(), "lm": holes["lm"].tolist(),
                         "fim": holes[fim_mode].tolist()}}


def _interval(lo: float, hi: float) -> str:
    return f"[{lo:+.3f}, {hi:+.3f}]"


def best_left_to_right(results: dict) -> str:
    """The candidate whose prefix-only (left-to-right) middle loss is the lowest of the run."""
    return min(results, key=lambda n: results[n]["prefix_only_loss"])


def print_table(results: dict, when: str, tasks_from: str, num_tasks: int) -> None:
    """The candidates side by side; ratios against `course`, the absolute middle loss against the
    best left-to-right one of the run."""
    base = results["course"]
    l2r_name = best_left_to_right(results)
    l2r = results[l2r_name]["prefix_only_loss"]
    print(f"\n{when}; on {num_tasks} lines of {tasks_from} (nats/token, 95 % intervals): "
          "suffix gain and content gain of the SPM prompt, the middle loss of the better FIM prompt and its "
          f"difference from the best left-to-right middle loss of the run ({l2r:.3f}, {l2r_name}); "
          "ratios against `course` from this run")
    print(f"{'candidate':<15} {'params':>6} {'tok/s':>6} {'tokens':>9} {'val bpb':>7} {'FIM loss':>8} "
          f"{'suffix gain':>24} {'content gain':>24} {'FIM middle loss':>26} {'vs best L2R':>11} "
          f"{'exact FIM/L2R':>13} {'EOT loss':>8} {'tok/s ÷':>7} {'bpb ÷':>6}")
    for name, r in results.items():
        lo, hi = r["fim_middle_interval"]
        fim = f"{r['fim_middle_loss']:.3f} {r['fim_prompt']} [{lo:.2f}, {hi:.2f}]"
        print(f"{name:<15} {r['params_m']:5.2f}M {r['tokens_per_s']:6.0f} {r['tokens_seen']:9,} "
              f"{r['val_bpb']:7.3f} {r['val_fim_loss']:8.3f} {r['gain']:+7.3f} {_interval(*r['gain_interval'])} "
              f"{r['content_gain']:+7.3f} {_interval(*r['content_interval'])} {fim:>26} "
              f"{r['fim_middle_loss'] - l2r:+11.3f} "
              f"{r['exact_fim']:6.1%}/{r['exact_lm']:6.1%} {r['eot_loss']:8.2f} "
              f"{r['tokens_per_s'] / base['tokens_per_s']:7.2f} {r['val_bpb'] / base['val_bpb']:6.3f}")


def print_near_layout(results: dict) -> None:
    """The candidates trained in regions, prompted with the near-hole layout (`infill.split_near`:
    the far prefix as plain code, the hole's neighbourhood as the FIM sample) and without it."""
    rows = {n: r for n, r in results.items() if "far_fim_middle_loss" in r}
    if not rows:
        return
    print("\nthe near-hole layout on and off (same holes; middle loss of the better FIM prompt, SPM content gain, "
          "SPM <|endoftext|> loss)")
    print(f"{'candidate':<15} {'layout':<6} {'FIM middle loss':>22} {'content gain':>24} {'EOT loss':>8}")
    for name, r in rows.items():
        for label, key in (("near", ""), ("off", "far_")):
            lo, hi = r[f"{key}fim_middle_interval"]
            print(f"{name:<15} {label:<6} {r[f'{key}fim_middle_loss']:8.3f} [{lo:.2f}, {hi:.2f}] "
                  f"{r[f'{key}content_gain']:+7.3f} {_interval(*r[f'{key}content_interval'])} "
                  f"{r[f'{key}eot_loss']:8.2f}")


def print_paired(results: dict) -> None:
    """Differences measured pairwise on the same holes (one resampling of the holes for both sides,
    `suffix_gain.paired_difference`): each candidate's better FIM prompt against the course's, and
    against the best prefix-only (left-to-right) middle loss of the run. Below 0: lower loss."""
    from mamba_nb.suffix_gain import paired_difference

    base = results["course"]["per_hole"]
    l2r_name = best_left_to_right(results)
    l2r = results[l2r_name]["per_hole"]
    print(f"\npaired on the same holes (nats/token, 95 % intervals): the better FIM prompt's middle loss minus "
          f"the course's, and minus the best left-to-right middle loss ({l2r_name}'s prefix only)")
    print(f"{'candidate':<15} {'FIM - course FIM':>26} {'FIM - best L2R':>26}")
    for name, r in results.items():
        row = r["per_hole"]
        if row["counts"] != base["counts"]:
            print(f"{name:<15} (other holes or tokenizer: not paired)")
            continue
        d_course, i_course = paired_difference(row["fim"], base["fim"], row["counts"])
        d_l2r, i_l2r = paired_difference(row["fim"], l2r["lm"], row["counts"])
        print(f"{name:<15} {d_course:+7.3f} {_interval(*i_course)} {d_l2r:+7.3f} {_interval(*i_l2r)}")


def common_step(names: list[str]) -> int | None:
    """The last step every run kept a snapshot of (equal tokens: same batch and context), or None."""
    steps = [{int(p.name.removeprefix("step-")) for p in (OUT / n / "snapshots").glob("step-*")} for n in names]
    common = set.intersection(*steps) if steps else set()
    return max(common) if common else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=600.0, help="training seconds per candidate")
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="a subset (the course default is always run)")
    p.add_argument("--reuse", action="store_true", help="measure finished runs again instead of training")
    p.add_argument("--tasks-from", default="click", help="package or directory of the suffix-gain holes")
    p.add_argument("--num-tasks", type=int, default=200)
    p.add_argument("--json", default=str(OUT / "results.json"))
    args = p.parse_args(argv)
    names = ["course"] + [n for n in (args.only or CANDIDATES) if n != "course"]
    results = {}
    for name in names:
        start = time.time()
        if not (args.reuse and (OUT / name / "latest" / "config.json").is_file()):
            train_candidate(name, args.budget_s)
        results[name] = {**measure(name, args.tasks_from, args.num_tasks), "wall_s": time.time() - start}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"budget_s": args.budget_s, "results": results}, indent=2))

    print_table(results, f"{args.budget_s:.0f} s of training each", args.tasks_from, args.num_tasks)
    print_paired(results)
    print_near_layout(results)
    step = common_step(names)
    if step is not None:  # the same measures at equal tokens, from each run's snapshot there
        at_step = {n: measure(n, args.tasks_from, args.num_tasks, step) for n in names}
        Path(args.json).write_text(json.dumps({"budget_s": args.budget_s, "results": results,
                                               "equal_tokens_step": step, "at_step": at_step}, indent=2))
        print_table(at_step, f"equal tokens (step {step} of every run, {at_step['course']['tokens_seen']:,} tokens)",
                    args.tasks_from, args.num_tasks)
        print_paired(at_step)
        print_near_layout(at_step)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

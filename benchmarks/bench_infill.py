"""Infilling benchmarks: batched throughput, and "FIM for free".

    .venv/bin/python benchmarks/bench_infill.py throughput [--quick]
    .venv/bin/python benchmarks/bench_infill.py fim-for-free [--budget-s 600 | --max-steps N] [--quick]
    .venv/bin/python benchmarks/bench_infill.py fim-for-free --fim-run runs/course   # after `make course`
    .venv/bin/python benchmarks/bench_infill.py humaneval [--checkpoint runs/course] [--quick]
    .venv/bin/python benchmarks/bench_infill.py all

throughput: holes filled per second by `infill` at batch 16 against one hole at a time, the
same holes, the same (untrained) course model, on CPU, for middles of 16 new tokens and of
infill's default 64; prints the ratios (target >= 3x) and checks the two give identical
greedy outputs.

humaneval: all 1,033 HumanEval single-line holes, batch 16, the course's evaluation settings
(greedy, one line), on our model and on HF's `MambaForCausalLM` as it ships with the same
weights: holes/s of each, their ratio, and how often the two write the same middle. Measured on the
trained course run (`--checkpoint runs/bench_recipe/course`): ours 49.8 holes/s, HF 12.4 (x4.01),
the same greedy middle for 100 % of the 1,033 holes.

fim-for-free: trains the course model twice on the same time budget (`course_train_config()`),
once with `fim_rate=0` and once with the default; reports the left-to-right validation loss of
both (FIM should cost nothing: within noise) and single-line infilling (exact match, edit
similarity) on held-out lines for: FIM model + SPM prompt, + PSM prompt, + prefix-only prompt,
and no-FIM model + prefix-only prompt. Targets: the default FIM prompt (SPM) beats both
prefix-only rows, and exact match >= 15% at the course budget. --reuse keeps a finished run
of an earlier call instead of training it again (to re-score after a change to infilling).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _dataset():
    from mamba_nb.config import course_data_config
    from mamba_nb.dataset import build_dataset

    return build_dataset(course_data_config(smoke=False, root=str(ROOT)), progress=False)


def throughput(quick: bool) -> dict:
    import torch

    from mamba_nb.config import InfillConfig, ModelConfig
    from mamba_nb.holes import line_tasks
    from mamba_nb.infill import infill
    from mamba_nb.model import build_model

    torch.manual_seed(0)
    ds = _dataset()
    model, scan = build_model(ModelConfig(), ds.tokenizer, verbose=False)
    model.eval()
    n = 16 if quick else 48
    tasks = line_tasks(ds.documents("validation"), n, seed=0, tokenizer=ds.tokenizer)
    prefixes, suffixes = [t.prefix for t in tasks], [t.suffix for t in tasks]
    # Two lengths of middle: 16 new tokens (a short line; the prompt's prefill is a large share),
    # and infill's default max_new_tokens (InfillConfig). Holes are real held-out lines of
    # whole files, so each prompt is cut to the trained context (256 tokens).
    out = {"holes": len(tasks), "scan": scan, "threads": torch.get_num_threads(), "settings": {}}
    print(f"throughput ({len(tasks)} held-out holes, course model untrained, scan={scan}, {out['threads']} threads, "
          f"CPU, greedy, no stop string):")
    infill(model, ds.tokenizer, prefixes[:2], suffixes[:2], max_new_tokens=4, context_len=256)  # warm up
    for new_tokens in (16, InfillConfig().max_new_tokens):
        kw = dict(max_new_tokens=new_tokens, context_len=256)  # the default prompt layout
        t0 = time.perf_counter()
        batched = infill(model, ds.tokenizer, prefixes, suffixes, batch_size=16, **kw)
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        single = [infill(model, ds.tokenizer, p, s, **kw) for p, s in zip(prefixes, suffixes)]
        t_single = time.perf_counter() - t0
        row = {"holes_per_s_batch16": len(tasks) / t_batched, "holes_per_s_one_at_a_time": len(tasks) / t_single,
               "speedup": t_single / t_batched, "identical_outputs": batched == single}
        out["settings"][new_tokens] = row
        print(f"  {new_tokens:3d} new tokens: batch 16 {row['holes_per_s_batch16']:6.2f} holes/s, one at a time "
              f"{row['holes_per_s_one_at_a_time']:6.2f} holes/s, speedup {row['speedup']:.2f}x (target >= 3x); "
              f"identical greedy outputs: {row['identical_outputs']}")
    return out


def fim_for_free(budget_s: float, quick: bool, tasks_n: int, max_steps=None, fim_run=None, reuse=False) -> dict:
    from mamba_nb.checkpoint import list_snapshots, load_training_state, trained_context_len
    from mamba_nb.config import INFILL_MODE, EvalConfig, course_train_config
    from mamba_nb.evaluate import LINE_SLACK, _scores
    from mamba_nb.holes import line_tasks
    from mamba_nb.infill import infill_holes
    from mamba_nb.model import load_checkpoint
    from mamba_nb.train import train

    ds = _dataset()
    base = course_train_config(smoke=False, root=str(ROOT))
    run_dirs = {name: ROOT / "runs" / f"bench_infill_{name}" for name in ("fim", "no_fim")}
    todo = [("fim", base.fim_rate), ("no_fim", 0.0)]
    if fim_run:
        # an existing course run (`make course`) is the FIM model; the no-FIM run repeats its
        # schedule step for step: the same length fixes the same warmup and cosine
        run_dirs["fim"] = Path(fim_run)
        state = load_training_state(Path(fim_run) / "latest")
        max_steps = max_steps or state["step"]
        print(f"FIM model: {fim_run} (step {state['step']}, fim_rate {state['config']['fim_rate']})", flush=True)
        todo = todo[1:]
    runs = {}
    for name, fim_rate in todo:
        # --max-steps: both runs see exactly the same tokens and schedule (a shared CPU's load
        # makes equal time budgets unequal in tokens); otherwise the same time budget.
        cfg = replace(base, fim_rate=fim_rate, time_budget_s=None if max_steps else budget_s, max_steps=max_steps,
                      resume=reuse, out_dir=str(run_dirs[name]))
        what = f"{max_steps} steps" if max_steps else f"{budget_s:.0f} s"
        print(f"training {name} (fim_rate={fim_rate}, {what}) → {cfg.out_dir}", flush=True)
        runs[name] = train(cfg)
    docs = list(ds.documents("validation"))
    out: dict = {"budget_s": None if max_steps else budget_s, "max_steps": max_steps}
    for name, out_dir in run_dirs.items():
        snaps = list_snapshots(out_dir)
        last = snaps[-1] if snaps else {}
        out[f"{name}_val_loss"] = last.get("val_loss")
        out[f"{name}_tokens_seen"] = last.get("tokens_seen")
    results = {}
    labels = {"spm": "SPM prompt", "psm": "PSM prompt", "lm": "prefix-only"}
    for name, mode in (("fim", "spm"), ("fim", "psm"), ("fim", "lm"), ("no_fim", "lm")):
        model, tok = load_checkpoint(run_dirs[name])
        tasks = line_tasks(docs, tasks_n, seed=0, tokenizer=tok)
        ctx = trained_context_len(run_dirs[name])
        res = infill_holes(model, tok, tasks, mode, ctx, f"{name} {mode}", progress=False,
                           max_new_tokens=EvalConfig.max_line_tokens + LINE_SLACK)
        results[f"{name} model, {labels[mode]}"] = _scores(tasks, res)
    out["line"] = results
    print(f"\nleft-to-right validation loss: FIM {out['fim_val_loss']:.3f} "
          f"({out['fim_tokens_seen']} tokens) vs no-FIM {out['no_fim_val_loss']:.3f} ({out['no_fim_tokens_seen']} tokens)")
    print(f"single-line infilling, {tasks_n} held-out lines:")
    for k, v in results.items():
        print(f"  {k:<28} exact match {v['exact_match']:.3f}  edit similarity {v['edit_similarity']:.3f}"
              f"  clean {v['clean_rate']:.2f}")
    # the FIM prompt infilling uses by default, against the two prompts that cannot see the suffix
    fim = results[f"fim model, {labels[INFILL_MODE]}"]
    others = [results["fim model, prefix-only"], results["no_fim model, prefix-only"]]
    out["fim_prompt_beats_both"] = all(fim["exact_match"] > o["exact_match"] and
                                       fim["edit_similarity"] > o["edit_similarity"] for o in others)
    print(f"{labels[INFILL_MODE]} (the default) beats both prefix-only rows on both metrics: "
          f"{out['fim_prompt_beats_both']}; "
          f"exact match {fim['exact_match']:.1%} (target >= 15%)")
    return out


def humaneval_throughput(quick: bool, checkpoint=None) -> dict:
    """All HumanEval single-line holes, batch 16, on our model and on HF's `MambaForCausalLM` as it
    ships (its PyTorch path on CPU, its cache), the same weights and settings: holes/s each."""
    import tempfile

    import torch
    from transformers import MambaForCausalLM

    from mamba_nb.benchmark import humaneval_holes
    from mamba_nb.config import EvalConfig, ModelConfig
    from mamba_nb.evaluate import LINE_SLACK
    from mamba_nb.infill import FROM_CHECKPOINT, infill, resolve_near_lines
    from mamba_nb.model import build_model, load_checkpoint

    torch.manual_seed(0)
    if checkpoint:
        ours, tok = load_checkpoint(checkpoint)
    else:
        tok = _dataset().tokenizer
        ours, _ = build_model(ModelConfig(), tok, verbose=False)
    ours.eval()
    holes = [h for h, _ in humaneval_holes("single", limit=64 if quick else None)]
    prefixes, suffixes = [h.prefix for h in holes], [h.suffix for h in holes]
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)
        hf = MambaForCausalLM.from_pretrained(d).eval()
    # the course's evaluation settings: one line, greedy, at most the line budget; the SPM prompt
    # laid out as the checkpoint was trained (the untrained model: the plain layout)
    kw = dict(max_new_tokens=EvalConfig.max_line_tokens + LINE_SLACK, stop=["\n"], batch_size=16, context_len=256,
              near_lines=resolve_near_lines(ours, FROM_CHECKPOINT))  # (HF's copy has no run config: the same, given)
    print(f"HumanEval single-line infilling: {len(holes)} holes, batch 16, greedy, "
          f"{'checkpoint ' + str(checkpoint) if checkpoint else 'the untrained course model'}, "
          f"{torch.get_num_threads()} threads, CPU")
    out = {"holes": len(holes), "checkpoint": str(checkpoint) if checkpoint else None}
    texts = {}
    for name, model in (("ours", ours), ("hf_mamba", hf)):
        infill(model, tok, prefixes[:2], suffixes[:2], **{**kw, "max_new_tokens": 4})  # warm up
        t0 = time.perf_counter()
        results = infill(model, tok, prefixes, suffixes, **kw)
        seconds = time.perf_counter() - t0
        texts[name] = [r.text for r in results]
        out[name] = {"seconds": seconds, "holes_per_s": len(holes) / seconds}
        print(f"  {name:8s} {seconds:7.1f} s, {len(holes) / seconds:6.2f} holes/s", flush=True)
    out["ratio"] = out["hf_mamba"]["seconds"] / out["ours"]["seconds"]
    out["same_text"] = sum(a == b for a, b in zip(texts["ours"], texts["hf_mamba"])) / len(holes)
    print(f"  ours / HF Mamba: x{out['ratio']:.2f} holes/s; the same greedy middle for {out['same_text']:.1%} of holes")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["throughput", "humaneval", "fim-for-free", "all"])
    p.add_argument("--checkpoint", help="humaneval: a trained run to infill with (default: the untrained course model)")
    p.add_argument("--quick", action="store_true", help="fewer holes; fim-for-free: 30 s budget, 40 lines")
    p.add_argument("--budget-s", type=float, default=None, help="training time per run (default: the course's)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="train both runs for exactly this many steps instead of a time budget")
    p.add_argument("--fim-run", help="an existing course run (e.g. runs/course) to use as the FIM model; "
                   "only the no-FIM run is trained, for as many steps")
    p.add_argument("--reuse", action="store_true", help="resume (or keep, if finished) the runs of an earlier call")
    p.add_argument("--tasks", type=int, default=None, help="held-out lines to infill (default 200)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    out = {}
    if args.part in ("throughput", "all"):
        out["throughput"] = throughput(args.quick)
    if args.part in ("humaneval", "all"):
        out["humaneval"] = humaneval_throughput(args.quick, args.checkpoint)
    if args.part in ("fim-for-free", "all"):
        from mamba_nb.config import course_train_config

        budget = args.budget_s or (30.0 if args.quick else course_train_config(smoke=False).time_budget_s)
        out["fim_for_free"] = fim_for_free(budget, args.quick, args.tasks or (40 if args.quick else 200),
                                           args.max_steps, args.fim_run, args.reuse)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

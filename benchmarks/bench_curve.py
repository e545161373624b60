"""The course recipe past the course: a longer run scored at minute marks of its training time.

Train it with `MAMBA_NB_COURSE_MINUTES=60 make course` (runs/course-60min, a snapshot about
every 1.5 minutes), then

    .venv/bin/python benchmarks/bench_curve.py --run runs/course-60min [--minutes 10 20 40 60]

For the snapshot nearest each mark (training seconds, validations not counted): left-to-right
bits per byte, the suffix gain (SPM prompt) on lines of `requests` (outside the corpus) beside its
controls (the content gain, and the middle's loss after prefix only and after SPM), exact
match and edit similarity of the FIM prompt and of prefix only on 200 held-out stdlib lines and
200 `requests` lines, and HumanEval single-line pass@1 over all 1,033 tasks (in the sandbox).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def score(snapshot: dict, ds, humaneval: bool) -> dict:
    from mamba_nb.benchmark import run_benchmark
    from mamba_nb.checkpoint import trained_context_len
    from mamba_nb.config import OUTSIDE_PACKAGE, EvalConfig
    from mamba_nb.evaluate import LINE_SLACK, _scores, gain_sets
    from mamba_nb.holes import documents_from, line_tasks, package_dir
    from mamba_nb.infill import infill_holes
    from mamba_nb.model import load_checkpoint
    from mamba_nb.suffix_gain import suffix_gain

    path = snapshot["path"]
    model, tok = load_checkpoint(path)
    ctx = trained_context_len(path)
    cfg = EvalConfig(tasks_from=OUTSIDE_PACKAGE)
    sets = {"stdlib": gain_sets(ds, cfg, tok)["held-out lines"],
            OUTSIDE_PACKAGE: line_tasks(documents_from(package_dir(OUTSIDE_PACKAGE)), 200, 0, tok, split="outside")}
    out = {"step": snapshot["step"], "minutes": snapshot["elapsed_s"] / 60, "tokens_seen": snapshot["tokens_seen"],
           "val_bpb": snapshot.get("val_bpb"), "val_loss": snapshot["val_loss"]}
    gain = suffix_gain(model, tok, sets[OUTSIDE_PACKAGE], modes=("spm",), context_len=ctx)
    out["gain"], out["gain_interval"] = gain["spm"]["gain"], gain["spm"]["interval"]
    out["content_gain"], out["content_interval"] = gain["spm"]["content_gain"], gain["spm"]["content_interval"]
    out["prefix_only_loss"], out["spm_loss"], out["best"] = gain["prefix_only_loss"], gain["spm"]["loss"], gain["best"]
    for name, holes in sets.items():
        for mode in ("spm", "lm"):
            r = _scores(holes, infill_holes(model, tok, holes, mode, ctx, name, False, cfg.max_line_tokens + LINE_SLACK))
            out[f"{name} {mode}"] = {"exact_match": r["exact_match"], "edit_similarity": r["edit_similarity"]}
    if humaneval:
        he = run_benchmark(model, tok, replace(cfg, benchmark="humaneval-single"), checkpoint=path, progress=False)
        out["humaneval_single_pass1"] = he["pass_at_k"]["1"]
    return out


def checkpoint_point(run: str) -> dict:
    """A finished run's final model as a point of the curve (its last validation's numbers)."""
    from mamba_nb.checkpoint import resolve_checkpoint_dir
    from mamba_nb.viz.training import read_metrics

    records = read_metrics(run)
    evals = [r for r in records if r["kind"] == "eval"]
    steps = [r for r in records if r["kind"] == "train"]
    return {"path": str(resolve_checkpoint_dir(run)), "step": evals[-1]["step"], "tokens_seen": evals[-1]["tokens_seen"],
            "elapsed_s": sum(r["step_s"] for r in steps), "val_loss": evals[-1]["val_loss"],
            "val_bpb": evals[-1].get("val_bpb")}


def main(argv=None) -> int:
    from mamba_nb.checkpoint import list_snapshots
    from mamba_nb.dataset import open_dataset

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "course-60min"))
    p.add_argument("--dataset", default=str(ROOT / "data" / "stdlib"))
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 20, 40, 60])
    p.add_argument("--checkpoint", help="score this one checkpoint instead (e.g. the 10-minute course's)")
    p.add_argument("--no-humaneval", action="store_true")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    if args.checkpoint:
        picked = [checkpoint_point(args.checkpoint)]
    else:
        snaps = list_snapshots(args.run)
        if not snaps:
            raise SystemExit(f"no snapshots in {args.run}; train it first: MAMBA_NB_COURSE_MINUTES=60 make course")
        picked = [min(snaps, key=lambda s: abs(s["elapsed_s"] - 60 * minute)) for minute in args.minutes]
    ds = open_dataset(args.dataset)
    rows = []
    for snap in picked:
        rows.append(score(snap, ds, not args.no_humaneval))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"\n{'minutes':>7} {'step':>6} {'tokens':>10} {'val bpb':>8} {'suffix gain (requests)':>24} "
          f"{'content gain (requests)':>24} {'middle loss prefix | SPM':>24} "
          f"{'stdlib EM / ES  fim | prefix':>30} {'requests EM / ES  fim | prefix':>32} {'HumanEval':>9}")
    for r in rows:
        lo, hi = r["gain_interval"]
        c_lo, c_hi = r["content_interval"]
        cells = [f"{r[f'{n} spm']['exact_match']:.3f}/{r[f'{n} spm']['edit_similarity']:.3f} | "
                 f"{r[f'{n} lm']['exact_match']:.3f}/{r[f'{n} lm']['edit_similarity']:.3f}" for n in ("stdlib", "requests")]
        he = r.get("humaneval_single_pass1")
        print(f"{r['minutes']:7.1f} {r['step']:6d} {r['tokens_seen']:10,} {r['val_bpb'] or float('nan'):8.3f} "
              f"{r['gain']:+8.3f} [{lo:+.3f}, {hi:+.3f}] {r['content_gain']:+8.3f} [{c_lo:+.3f}, {c_hi:+.3f}] "
              f"{r['prefix_only_loss']:16.3f} | {r['spm_loss']:.3f} {cells[0]:>30} {cells[1]:>32} "
              f"{'-' if he is None else f'{he:.4f}':>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

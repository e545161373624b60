"""Which architecture learns the most in the course's CPU budget?

Trains the course configuration (`course_train_config()`, the course dataset) once per
candidate, each for the same wall-clock budget, and reports the validation loss each
reached, the tokens it saw and its tokens/s. The course default (`ModelConfig.arch` and the
"tiny" preset in `mamba_nb/model.py`) is the one with the lowest loss here.

Candidates: Mamba-1 on the fast PyTorch scan and Mamba-2 on HF's chunked path, each with
tied and untied input/output embeddings (untied adds one vocab x hidden matrix: more
parameters for the same per-token compute, since the output projection is paid either way).

    .venv/bin/python benchmarks/bench_course_arch.py [--budget-s 150] [--only mamba2-untied ...]

The ratio printed for each candidate is its validation loss over the current default's,
measured in the same run (below 1: learns more than the default in the same time).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = {  # name -> (arch, tie_word_embeddings)
    "mamba-tied": ("mamba", True),
    "mamba-untied": ("mamba", False),
    "mamba2-tied": ("mamba2", True),
    "mamba2-untied": ("mamba2", False),
}


def run(name: str, budget_s: float) -> dict:
    from mamba_nb import model as model_module
    from mamba_nb.config import course_train_config
    from mamba_nb.train import train
    from mamba_nb.viz.training import read_metrics

    arch, tie = CANDIDATES[name]
    preset = model_module.PRESETS["tiny"][arch]
    saved = dict(preset)
    preset["tie_word_embeddings"] = tie  # this process only: the candidate, then restored
    try:
        base = course_train_config(smoke=False, root=str(ROOT))
        cfg = replace(base, arch=arch, time_budget_s=budget_s, max_steps=None, resume=False,
                      eval_every=10**9, save_every=10**9, out_dir=str(ROOT / "runs" / f"bench_arch_{name}"))
        print(f"\n== {name}: {budget_s:.0f} s", flush=True)
        train(cfg)  # validates once at the end (the last step)
    finally:
        preset.clear()
        preset.update(saved)
    records = read_metrics(cfg.out_dir)
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    steps = [r for r in records if r["kind"] == "train"]
    step_s = sum(r["step_s"] for r in steps)
    tokens = last_eval["tokens_seen"]
    return {"val_loss": last_eval["val_loss"], "val_fim_loss": last_eval["val_fim_loss"], "tokens_seen": tokens,
            "tokens_per_s": tokens / step_s if step_s else 0.0}


def main(argv=None) -> int:
    from mamba_nb.config import ModelConfig
    from mamba_nb.model import PRESETS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-s", type=float, default=150.0, help="training seconds per candidate")
    p.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), help="a subset of the candidates")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    names = args.only or list(CANDIDATES)
    results = {name: run(name, args.budget_s) for name in names}

    default_arch = ModelConfig().arch
    default_tie = PRESETS["tiny"][default_arch].get("tie_word_embeddings", True)
    default = next((n for n, c in CANDIDATES.items() if c == (default_arch, default_tie)), None)
    print(f"\ncourse configuration, {args.budget_s:.0f} s of training each (default: {default}):")
    print(f"  {'candidate':<15} {'val loss':>8} {'FIM loss':>8} {'tokens':>10} {'tok/s':>7} {'loss / default':>14}")
    for name, r in results.items():
        ratio = r["val_loss"] / results[default]["val_loss"] if default in results else float("nan")
        print(f"  {name:<15} {r['val_loss']:8.3f} {r['val_fim_loss']:8.3f} {r['tokens_seen']:10,} "
              f"{r['tokens_per_s']:7.0f} {ratio:14.3f}")
    best = min(results, key=lambda n: results[n]["val_loss"])
    print(f"lowest validation loss: {best}")
    if args.json:
        Path(args.json).write_text(json.dumps({"budget_s": args.budget_s, "default": default, **results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

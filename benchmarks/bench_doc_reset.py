"""Does reading each document of a window on its own (`--reset-at-documents`) help the course model?

The course configuration (`make course`'s settings: FIM in regions of 4 lines, half the holes
shaped like lines) trains twice from scratch for the same number of steps, same seed, so the same
initial weights and the same batches: once as today (a window is one stream: Mamba's state and
convolution run from one file into the next) and once with the state and the convolution reset at
each document start (`mamba_nb/doc_reset.py`). Each run is its own process, one after the other.
Then, for each:

- the last validation's `val_loss` (left to right, nats/token), `val_bpb` (bits per byte) and
  `val_fim_loss` (FIM middles); each run validates as it trains, so the reset run's validation
  resets too (the held-out windows are read the way the run was trained to read them);
- the suffix gain (SPM prompt, `mamba_nb.suffix_gain`) on single lines of a package outside the
  corpus (`--tasks-from`, default `click`, the tuning set of benchmarks/bench_recipe.py); a prompt
  is one document, so nothing is reset there;
- the median step time, and its ratio reset / plain (the cost of the cut convolution and the
  zeroed decays; the two runs are not interleaved, so a busy machine skews it).

Runs land in runs/bench_doc_reset/<plain|reset>/ and are measured again with `--reuse`.

    .venv/bin/python benchmarks/bench_doc_reset.py [--steps 400] [--reuse]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "bench_doc_reset"
sys.path.insert(0, str(ROOT))
from mamba_nb.config import COURSE_RECIPE  # noqa: E402  (the course's FIM settings and learning rate)

# name -> (what it is, the flags it adds to the course configuration)
RUNS = {
    "plain": ("a window read as one stream (the default)", []),
    "reset": ("each document of a window read on its own", ["--reset-at-documents"]),
}


def train_run(name: str, steps: int, dataset: str) -> None:
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)  # from scratch every time
    course = [f"--{k.replace('_', '-')}={v}" for k, v in COURSE_RECIPE.items()]
    cmd = [sys.executable, "-m", "mamba_nb", "train", "--dataset", dataset, "--out-dir", str(out),
           "--max-steps", str(steps), "--time-budget-s", "0", "--eval-every", "100", "--save-every", str(10**9),
           *course, *RUNS[name][1]]
    print(f"\n== {name}: {RUNS[name][0]}; {steps} steps\n   {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def measure(name: str, tasks_from: str, num_tasks: int, dataset: str) -> dict:
    import torch

    from mamba_nb.checkpoint import trained_context_len
    from mamba_nb.config import WindowConfig
    from mamba_nb.dataset import open_dataset
    from mamba_nb.losses import validation_losses
    from mamba_nb.runtime import Dist
    from mamba_nb.holes import documents_from, line_tasks, package_dir
    from mamba_nb.model import load_checkpoint
    from mamba_nb.suffix_gain import suffix_gain
    from mamba_nb.viz.training import read_metrics

    out = OUT / name
    records = read_metrics(out)
    last = [r for r in records if r["kind"] == "eval"][-1]
    step_s = [r["step_s"] for r in records if r["kind"] == "train"]
    model, tok = load_checkpoint(out)
    directory = Path(tasks_from) if Path(tasks_from).is_dir() else package_dir(tasks_from)
    tasks = line_tasks(documents_from(directory), num_tasks, seed=1, tokenizer=tok)
    gain = suffix_gain(model, tok, tasks, modes=("spm",), context_len=trained_context_len(out))
    # Both models read the same held-out windows both ways: as one stream, and each document on
    # its own (as at inference, where a prompt is one document). A run's own validation only
    # reads them the way it trained, so its val_loss alone does not compare the two runs.
    read = {}
    for reset in (False, True):
        window = WindowConfig(context_len=trained_context_len(out), fim_rate=0.0, reset_at_documents=reset)
        read[reset] = validation_losses(model, open_dataset(dataset), window, 8, 128, torch.device("cpu"), Dist())
    return {"steps": last["step"], "val_loss": last["val_loss"], "val_bpb": last.get("val_bpb"),
            "stream_bpb": read[False]["val_bpb"], "apart_bpb": read[True]["val_bpb"],
            "val_fim_loss": last["val_fim_loss"], "val_suffix_gain": last.get("val_suffix_gain"),
            "gain": gain["spm"]["gain"], "gain_interval": gain["spm"]["interval"],
            "median_step_s": statistics.median(step_s) if step_s else float("nan")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400, help="training steps of each run (the same for both)")
    p.add_argument("--dataset", default=str(ROOT / "data" / "stdlib"), help="the course dataset (make data)")
    p.add_argument("--reuse", action="store_true", help="measure finished runs again instead of training")
    p.add_argument("--tasks-from", default="click", help="package or directory of the suffix-gain holes")
    p.add_argument("--num-tasks", type=int, default=200)
    p.add_argument("--json", default=str(OUT / "results.json"))
    args = p.parse_args(argv)
    results = {}
    for name in RUNS:
        start = time.time()
        if not (args.reuse and (OUT / name / "latest" / "config.json").is_file()):
            train_run(name, args.steps, args.dataset)
        results[name] = {**measure(name, args.tasks_from, args.num_tasks, args.dataset), "wall_s": time.time() - start}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"steps": args.steps, "results": results}, indent=2))

    base = results["plain"]
    print(f"\n{args.steps} steps each, the course configuration; suffix gain: SPM prompt, {args.num_tasks} lines of "
          f"{args.tasks_from} (nats/token, 95 % interval); step-time ratio against `plain`")
    print("(val: the run's own validation, read as it trained; bpb stream / apart: 128 held-out windows, FIM off, "
          "read as one stream / each document on its own, the same for both models)")
    print(f"{'run':<6} {'val loss':>8} {'val bpb':>7} {'bpb stream':>10} {'bpb apart':>9} {'FIM loss':>8} "
          f"{'suffix gain':>22} {'step s':>7} {'step ÷':>6}")
    for name, r in results.items():
        lo, hi = r["gain_interval"]
        print(f"{name:<6} {r['val_loss']:8.4f} {r['val_bpb']:7.4f} {r['stream_bpb']:10.4f} {r['apart_bpb']:9.4f} "
              f"{r['val_fim_loss']:8.4f} "
              f"{r['gain']:+7.3f} [{lo:+.3f}, {hi:+.3f}] {r['median_step_s']:7.3f} "
              f"{r['median_step_s'] / base['median_step_s']:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

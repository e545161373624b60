"""Training-loop throughput of the tiny preset, against the bare compute of the same model.

One `train` run (tiny preset, 1 DataLoader worker, no validation or checkpoint inside the
timed steps) reports:
  (i)  tokens/s of the loop, and the same model's tokens/s on one batch held in memory
       (forward + backward + AdamW, no data loading): the ratio says what the loop costs
       on top of the math (goal: close to 1);
  (ii) the fraction of loop time spent waiting for the next batch (goal: < 5% on CPU
       with 1 worker). The first step is left out of both: it pays for starting the worker.

    .venv/bin/python benchmarks/bench_train.py [--quick] [--dataset DIR] [--arch mamba|mamba2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mamba_nb.config import DataConfig, ModelConfig, TrainConfig
from mamba_nb.dataset import build_dataset, open_dataset
from mamba_nb.doc_reset import model_logits
from mamba_nb.model import build_model
from mamba_nb.fim import IGNORE_INDEX as IGNORE
from mamba_nb.schedule import make_optimizer
from mamba_nb.train import train
from mamba_nb.viz.training import read_metrics
from mamba_nb.windows import make_loader


def compute_only(cfg: TrainConfig, ds, steps: int) -> float:
    """tokens/s of forward + backward + optimizer step on one batch that never changes."""
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(arch=cfg.arch, preset=cfg.preset, scan=cfg.scan), ds.tokenizer, verbose=False)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    loader, _ = make_loader(ds, "train", cfg, cfg.batch_size)
    batch = next(iter(loader))
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        logits = model_logits(model, batch["input_ids"])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return cfg.batch_size * cfg.context_len / min(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and a smaller corpus")
    ap.add_argument("--dataset", help="an existing dataset directory (default: build a small stdlib one)")
    ap.add_argument("--arch", default="mamba", choices=["mamba", "mamba2"])
    args = ap.parse_args()
    steps = 6 if args.quick else 30
    with tempfile.TemporaryDirectory() as tmp:
        if args.dataset:
            ds = open_dataset(args.dataset)
        else:
            ds = build_dataset(DataConfig(out_dir=f"{tmp}/data", max_documents=60 if args.quick else 300,
                                          vocab_size=2048), progress=False)
        cfg = TrainConfig(dataset=str(ds.path), out_dir=f"{tmp}/run", arch=args.arch, preset="tiny",
                          context_len=256, batch_size=8, max_steps=steps, time_budget_s=None, warmup_steps=2,
                          eval_every=10**9, save_every=10**9, eval_windows=8, num_workers=1, device="cpu",
                          resume=False)
        train(cfg)
        recs = [r for r in read_metrics(Path(tmp) / "run") if r["kind"] == "train"][1:]
        # the fastest step on both sides: on a shared machine other processes only ever add
        # time, so the minimum is the closest to what the step itself costs
        loop_tps = cfg.batch_size * cfg.context_len / min(r["step_s"] for r in recs)
        wait = sum(r["data_wait_s"] for r in recs) / sum(r["step_s"] for r in recs)
        bare_tps = compute_only(cfg, ds, min(steps, 10))
    print(f"\ntiny preset ({args.arch}), batch {cfg.batch_size} x {cfg.context_len} tokens, "
          f"{torch.get_num_threads()} threads, {len(recs)} timed steps")
    print(f"  training loop:       {loop_tps:10,.0f} tokens/s")
    print(f"  compute only:        {bare_tps:10,.0f} tokens/s  (same model, one batch in memory)")
    print(f"  loop / compute:      {loop_tps / bare_tps:10.2f}   (goal: close to 1)")
    print(f"  waiting for data:    {100 * wait:9.1f} %   of loop time (goal: < 5% with 1 worker)")


if __name__ == "__main__":
    main()

"""DDP on CPU: two processes (gloo) run `train` as `torchrun` would start them (environment
variables), see disjoint windows, and hold identical weights after every step."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from mamba_nb.config import TrainConfig

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cfg: TrainConfig, log_dir: str) -> None:
    # exactly the variables torchrun sets
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from mamba_nb.train import train

    seen = []

    def on_step(record, model, batch):
        # a checksum per parameter: equal across ranks iff the weights are identical
        sums = [float(p.detach().double().sum()) for p in model.parameters()]
        seen.append({"step": record["step"], "starts": batch["starts"].tolist(), "weights": sums,
                     "loss": record["loss"]})

    train(cfg, on_step=on_step)
    Path(log_dir, f"rank{rank}.json").write_text(json.dumps(seen))


def test_two_ranks_see_disjoint_windows_and_keep_identical_weights(tiny_dataset, tmp_path):
    cfg = TrainConfig(dataset=str(tiny_dataset.path), out_dir=str(tmp_path / "run"), preset="micro", context_len=32,
                      batch_size=4, grad_accum=2, max_steps=2, time_budget_s=None, warmup_steps=1, eval_every=2,
                      eval_windows=8, save_every=2, num_workers=0, device="cpu")
    mp.spawn(_worker, args=(_free_port(), cfg, str(tmp_path)), nprocs=WORLD, join=True)
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [len(log) for log in logs] == [2, 2]
    for a, b in zip(*logs):
        assert a["step"] == b["step"]
        assert not set(a["starts"]) & set(b["starts"]), f"ranks shared windows at step {a['step']}"
        assert a["weights"] == b["weights"], f"weights differ after step {a['step']}"
        assert a["loss"] == b["loss"]  # the logged loss is the mean over ranks
    # the first step moved the weights (the check above is not comparing two untouched copies)
    assert logs[0][0]["weights"] != logs[0][1]["weights"]
    # rank 0 alone wrote the run's files, with every process's tokens counted
    from mamba_nb import checkpoint as ckpt

    state = ckpt.load_training_state(tmp_path / "run" / "latest")
    assert state["step"] == 2 and state["world_size"] == WORLD
    assert state["tokens_seen"] == 2 * WORLD * 2 * 4 * 32

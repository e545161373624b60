"""FSDP on CPU: two processes (gloo) run `train` with `fsdp=True` as `torchrun` would start them.
They train like one process on the same global batch (losses and the clipped gradient's norm),
resume exactly from their sharded checkpoint, and leave plain HF models (the final save's, and
one converted from the shards alone) whose logits are the trained model's."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from mamba_nb import checkpoint as ckpt
from mamba_nb.doc_reset import model_logits
from mamba_nb.config import TrainConfig

WORLD = 2
PROBE = torch.arange(1, 25).reshape(2, 12) * 7  # (2, 12) token ids for the logits the models are compared on


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tiny_dataset, out_dir, **changes) -> TrainConfig:
    # grad_clip well under the norm (~1): the clipping acts at every step, with the whole gradient's norm
    values = dict(dataset=str(tiny_dataset.path), out_dir=str(out_dir), preset="micro", context_len=32, batch_size=4,
                  grad_accum=2, max_steps=4, time_budget_s=None, warmup_steps=1, eval_every=2, eval_windows=8,
                  gain_holes=4, save_every=100, grad_clip=0.1, num_workers=0, device="cpu", seed=0, fsdp=True)
    values.update(changes)
    return TrainConfig(**values)


def _worker(rank: int, port: int, once: TrainConfig, twice: TrainConfig, probe_file: str) -> None:
    # exactly the variables torchrun sets
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from mamba_nb.train import train

    dist.init_process_group("gloo")  # one group for the three runs (`train` joins it and leaves it up)

    def probe(record, model, batch):
        if record["step"] == once.max_steps:  # the trained model's logits; every rank runs the forward
            with torch.no_grad():
                logits = model_logits(model, PROBE)
            if rank == 0:
                torch.save(logits, probe_file)

    def interrupt_at_2(record, model, batch):
        if record["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C on every rank: they stop and save together

    try:
        train(once, on_step=probe)
        train(twice, on_step=interrupt_at_2)
        train(twice)  # resumes from the shards
    finally:
        dist.destroy_process_group()


def records(out_dir, kind: str) -> dict[int, dict]:
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if r["kind"] == kind}


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory) -> Path:
    """An FSDP run of 4 steps (`once`), and the same stopped after step 2 and resumed (`twice`)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    once = _config(tiny_dataset, tmp / "once")
    twice = dataclasses.replace(once, out_dir=str(tmp / "twice"), save_every=1)
    mp.spawn(_worker, args=(_free_port(), once, twice, str(tmp / "logits.pt")), nprocs=WORLD, join=True)
    return tmp


def test_two_sharded_ranks_train_like_one_process_on_the_same_global_batch(runs, tiny_dataset, tmp_path):
    from mamba_nb.train import train

    one = _config(tiny_dataset, tmp_path / "one", batch_size=4 * WORLD, fsdp=False)
    train(one)
    sharded, single = records(runs / "once", "train"), records(tmp_path / "one", "train")
    assert sorted(sharded) == sorted(single) == [1, 2, 3, 4]
    for step in single:
        for key in ("loss", "grad_norm"):  # the norm is the whole gradient's, not a shard's
            assert sharded[step][key] == pytest.approx(single[step][key], rel=1e-4), (step, key)
        assert single[step]["grad_norm"] > one.grad_clip  # so the clipping acted, with that norm
    assert sharded[4]["tokens_seen"] == single[4]["tokens_seen"]
    for step, row in records(runs / "once", "eval").items():
        assert row["val_loss"] == pytest.approx(records(tmp_path / "one", "eval")[step]["val_loss"], rel=1e-4)
        assert "val_suffix_gain" in row  # measured on every rank of the sharded model


def test_the_sharded_checkpoint_resumes_exactly(runs):
    latest = runs / "twice" / "latest"
    assert (latest / ckpt.SHARDS / ".metadata").is_file()
    state = ckpt.load_training_state(latest)
    assert state["step"] == 4 and state["world_size"] == WORLD and "optimizer" not in state  # (in the shards)
    for kind, key in (("train", "loss"), ("train", "grad_norm"), ("eval", "val_loss")):
        once, twice = records(runs / "once", kind), records(runs / "twice", kind)
        assert sorted(once) == sorted(twice)
        assert [once[s][key] for s in sorted(once)] == [twice[s][key] for s in sorted(twice)]  # bitwise
    # the snapshots are whole HF models, like a DDP run's
    assert [s["step"] for s in ckpt.list_snapshots(runs / "once")] == [2, 4]


def test_the_final_save_and_the_converted_shards_give_the_trained_logits(runs, tmp_path):
    from mamba_nb.cli import main
    from mamba_nb.model import load_checkpoint

    trained = torch.load(runs / "logits.pt")

    def logits_of(directory) -> torch.Tensor:
        model, _ = load_checkpoint(directory)
        with torch.no_grad():
            return model_logits(model, PROBE)

    # the run's final save also wrote the whole weights: latest/ is a plain HF directory
    torch.testing.assert_close(logits_of(runs / "once"), trained, rtol=0, atol=1e-6)
    # a run that died after a save with the shards only: refused with the command that converts it
    crashed = tmp_path / "crashed"
    shutil.copytree(runs / "once" / "latest", crashed / "latest")
    for f in (crashed / "latest").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ckpt.CheckpointError, match="convert-fsdp --checkpoint"):
        load_checkpoint(crashed)
    assert main(["convert-fsdp", "--checkpoint", str(crashed), "--out-dir", str(tmp_path / "hf")]) == 0
    torch.testing.assert_close(logits_of(tmp_path / "hf"), trained, rtol=0, atol=1e-6)
    assert ckpt.trained_context_len(tmp_path / "hf") == 32  # run_config.yaml came along
    assert main(["convert-fsdp", "--checkpoint", str(crashed), "--out-dir", str(tmp_path / "hf")]) == 2  # not over it


def test_fsdp_needs_a_torchrun_group_and_a_full_fine_tune(tiny_dataset, tmp_path):
    from mamba_nb.train import TrainingError, train

    with pytest.raises(TrainingError, match="torchrun --nproc-per-node"):
        train(_config(tiny_dataset, tmp_path / "alone"))
    with pytest.raises(ValueError, match="drop --fsdp"):
        TrainConfig(fsdp=True, lora_rank=8, pretrained="state-spaces/mamba-130m-hf")

"""FSDP: a model's weights, gradients and optimizer state split over the processes of a `torchrun` group.

For full fine-tunes whose optimizer state does not fit one device (state-spaces/mamba-1.4b-hf,
2.8b): DDP keeps a whole copy of all three on every process, FSDP one share of each. PyTorch's
`fully_shard` ("FSDP2") is applied block by block, so a process gathers one block's weights at a
time, in the forward and again in the backward:

- `shard_model`: `fully_shard` on each block (our Mamba's `backbone.layers[i]`, the Llama
  peer's `model.layers[i]`), then on the whole model, whose own group holds the embeddings,
  the final norm and the head (a tied head is the same tensor as the embeddings: one group).
- `save_shards` / `load_shards`: each process writes and reads its share of the weights and the
  optimizer state (`torch.distributed.checkpoint`), in the `shards/` folder of a checkpoint.
- `full_weights`: the whole weights gathered on rank 0's CPU, for the snapshots and a run's final
  save, which are plain HF directories like a DDP run's.
- `whole_root`: the whole model's own weights gathered while code calls its parts one by one.
- `convert_shards`: a plain HF directory from a checkpoint's shards, in one process, without a
  group (`python -m mamba_nb convert-fsdp`), for a run that stopped before its final save.

Not here: the loop that shards and steps (`train.py`), where the files go and how a checkpoint
is written atomically (`checkpoint.py`).
"""
from __future__ import annotations

import contextlib
import shutil
import warnings
from pathlib import Path

import torch

from mamba_nb import checkpoint as ckpt


def shard_model(model, device: torch.device):
    """`model` sharded in place over the default process group, block by block; returns it."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from mamba_nb.model.lm import MambaLM

    # the blocks: ours `backbone.layers`, HF's Llama peer `model.layers`
    layers = (model.backbone.layers if isinstance(model, MambaLM)
              else getattr(getattr(model, "model", None), "layers", None))
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no blocks this knows how to shard one by one; FSDP here "
                         "trains our Mamba and Mamba-2 and the Llama peer: drop --fsdp for this one")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _state(model, optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def save_shards(model, optimizer, directory) -> None:
    """Every rank writes its share of the weights and the optimizer state into `directory` (collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_state(model, optimizer), checkpoint_id=str(directory))


def load_shards(model, optimizer, directory) -> None:
    """Every rank reads its share of what `save_shards` wrote into the sharded `model` and `optimizer`
    (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(model, optimizer)
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def full_weights(model) -> dict:
    """The whole weights (name → tensor, on the CPU) on rank 0, {} on the others (collective).

    Rank 0 needs the memory of one whole copy (4 bytes a parameter), as a DDP run's save does."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


@contextlib.contextmanager
def whole_root(model):
    """The whole model's own weights (embeddings, final norm, head) gathered inside the block.

    FSDP gathers them in the whole model's forward only; code that calls the backbone and the
    head one after the other (`suffix_gain` does, to skip the logits it never scores) needs them
    gathered first. The blocks still gather their own weights as they run. Every rank must run
    the same calls inside (each gather is collective)."""
    model.unshard()
    try:
        yield model
    finally:
        model.reshard()


def convert_shards(checkpoint, out_dir) -> Path:
    """Write `out_dir`: a plain HF model (weights, config, tokenizer, run_config.yaml) from the
    shards of an FSDP checkpoint (a run directory or its `latest/`). One process, no group:
    `torch.distributed.checkpoint` reads the shards of any number of ranks back into one model."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoTokenizer

    from mamba_nb.model import model_from_config

    source = ckpt.resolve_checkpoint_dir(checkpoint)
    shards = source / ckpt.SHARDS
    if not shards.is_dir():
        raise ckpt.CheckpointError(f"{str(source)!r} has no {ckpt.SHARDS}/ folder: it is not an FSDP checkpoint, and "
                                   "its model loads as it is (pass it to infill or evaluate directly)")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ckpt.CheckpointError(f"--out-dir {str(out)!r} already exists and is not empty; pass a new directory "
                                   "for the converted model")
    model, _ = model_from_config(source, scan="reference")  # (never run: only its weights are written)
    weights = model.state_dict()  # the names the shards were saved under (FSDP keeps the module names)
    with warnings.catch_warnings():  # "... assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load({"model": weights}, checkpoint_id=str(shards), no_dist=True)  # in place, into `weights`' tensors
    model.load_state_dict(weights)
    tokenizer = AutoTokenizer.from_pretrained(str(source))

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (source / ckpt.RUN_CONFIG_FILE).is_file():  # its context length and FIM layout, for infill
            shutil.copy2(source / ckpt.RUN_CONFIG_FILE, tmp / ckpt.RUN_CONFIG_FILE)

    return ckpt.write_dir_atomically(out, write)

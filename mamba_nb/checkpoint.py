"""Checkpoint files of a training run, written so that a crash never leaves a broken one.

Layout of a run directory (`TrainConfig.out_dir`):

    latest/                      the resumable checkpoint
        config.json, model.safetensors, tokenizer files   (HF save_pretrained: loads anywhere)
        training_state.pt        optimizer, schedule, data position, RNG states, step, tokens_seen
        run_config.yaml          the TrainConfig that wrote it
    snapshots/step-0000200/      model + tokenizer + snapshot.json, one per validation
    metrics.jsonl, loss.png

Every directory is written into a hidden temporary sibling and then renamed into place,
so a failed write (disk full, killed process) leaves the previous `latest/` as it was.
Between the two renames of a replace, the previous checkpoint sits in `.latest.old/`,
which `mamba_nb.model.resolve_checkpoint_dir` also accepts.

Not here: what goes into the training state (that is `train.py`'s business) and
loading a model (`mamba_nb.model.load_checkpoint`).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch
import yaml

LATEST = "latest"
SNAPSHOTS = "snapshots"
STATE_FILE = "training_state.pt"
RUN_CONFIG_FILE = "run_config.yaml"
SNAPSHOT_FILE = "snapshot.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or does not fit the run that wants to resume from it."""


def write_dir_atomically(final: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` to fill a temporary directory, then swap it in as `final`.

    If `write` raises, the temporary directory is removed and `final` is untouched.
    """
    from transformers.utils import logging as hf_logging

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp"
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per save would bury the training bar
    try:
        tmp.mkdir()
        write(tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise CheckpointError(
                f"could not write {str(final)!r} ({err}); the previous one, if any, is unchanged. "
                "Free disk space or pick another --out-dir, then run the same command again to resume"
            ) from err
        raise
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(out_dir, model, tokenizer, state: dict, run_config: dict) -> Path:
    """Write `<out_dir>/latest/`: HF model + tokenizer, `training_state.pt`, `run_config.yaml`."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
        (tmp / RUN_CONFIG_FILE).write_text(yaml.safe_dump(run_config, sort_keys=False))

    return write_dir_atomically(Path(out_dir) / LATEST, write)


def snapshot_dir(out_dir, step: int) -> Path:
    return Path(out_dir) / SNAPSHOTS / f"step-{step:07d}"


def save_snapshot(out_dir, model, tokenizer, info: dict) -> Path:
    """Write `<out_dir>/snapshots/step-XXXXXXX/`: model + tokenizer + `snapshot.json` (`info`)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SNAPSHOT_FILE).write_text(json.dumps(info, indent=1))

    return write_dir_atomically(snapshot_dir(out_dir, info["step"]), write)


def list_snapshots(out_dir) -> list[dict]:
    """Each snapshot's `snapshot.json` plus its `"path"`, in step order (for notebook 05's curves)."""
    found = []
    for d in sorted((Path(out_dir) / SNAPSHOTS).glob("step-*")):
        f = d / SNAPSHOT_FILE
        if f.is_file():
            found.append({**json.loads(f.read_text()), "path": str(d)})
    return found


def find_resumable(out_dir) -> Path | None:
    """The directory to resume from, or None when the run has no complete checkpoint yet."""
    for name in (LATEST, f".{LATEST}.old"):
        d = Path(out_dir) / name
        if (d / STATE_FILE).is_file():
            return d
    return None


def load_training_state(directory) -> dict:
    # weights_only: the state holds tensors and plain Python values only, so loading a
    # checkpoint from someone else cannot run code.
    return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)

"""Checkpoint files of a training run, written so that a crash never leaves a broken one.

Layout of a run directory (`TrainConfig.out_dir`):

    latest/                      the resumable checkpoint
        config.json, model.safetensors, tokenizer files   (HF save_pretrained: loads anywhere)
        training_state.pt        optimizer, schedule, data position, RNG states, step, tokens_seen
        run_config.yaml          the TrainConfig that wrote it
        metrics.jsonl            the run's metrics up to this step: a resume restores the run's
                                 own metrics.jsonl from it when that one was deleted or cut short
        shards/                  FSDP runs only: each rank's share of the model and the optimizer
                                 (torch.distributed.checkpoint); training_state.pt then holds no
                                 optimizer, and model.safetensors is there after the run's final
                                 save only (`check_weights_present` says how to convert otherwise)
    snapshots/step-0000200/      model + tokenizer + snapshot.json, one per validation
    metrics.jsonl, loss.png

Every directory is written into a hidden temporary sibling and then renamed into place,
so a failed write (disk full, killed process) leaves the previous `latest/` as it was. An FSDP
run's ranks all write their shards into that sibling before rank 0 renames it.
Between the two renames of a replace, the previous checkpoint sits in `.latest.old/`,
which `mamba_nb.model.resolve_checkpoint_dir` also accepts.

Not here: what goes into the training state (that is `train.py`'s business), loading a
model (`mamba_nb.model.load_checkpoint`), and what the shards hold (`mamba_nb.fsdp`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml

from mamba_nb.config import WindowConfig

LATEST = "latest"
SNAPSHOTS = "snapshots"
STATE_FILE = "training_state.pt"
RUN_CONFIG_FILE = "run_config.yaml"
SNAPSHOT_FILE = "snapshot.json"
SHARDS = "shards"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or does not fit the run that wants to resume from it."""


def temp_dir_of(final: Path) -> Path:
    """The hidden sibling a directory is written into before it is renamed into place."""
    return Path(final).parent / f".{Path(final).name}.tmp"


def write_dir_atomically(final: Path, write: Callable[[Path], None], filled: bool = False) -> Path:
    """Call `write(tmp)` to fill a temporary directory, then swap it in as `final`.

    If `write` raises, the temporary directory is removed and `final` is untouched. `filled`:
    the temporary directory already holds what other processes wrote (an FSDP run's shards).
    """
    from transformers.utils import logging as hf_logging

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_of(final)
    old = final.parent / f".{final.name}.old"
    if not filled:
        shutil.rmtree(tmp, ignore_errors=True)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a "Writing model shards" bar per save would bury the training bar
    try:
        tmp.mkdir(exist_ok=filled)
        write(tmp)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception):
            raise _write_failed(final, err) from err
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


def _write_failed(final: Path, err: Exception) -> CheckpointError:
    # OSError, and what torch.save / safetensors / torch.distributed.checkpoint raise for the same
    # failures (disk full, I/O)
    kept = f"the previous {final.name!r} is unchanged" if final.exists() else "nothing was written"
    return CheckpointError(
        f"could not write {str(final)!r} ({_why(err)}); {kept}. Free disk space ({_free(final.parent)} free) "
        "or pick another --out-dir, then run the same command again to resume"
    )


def _why(err: BaseException) -> str:
    text = f"{getattr(err, 'strerror', None) or err}".strip().splitlines()
    return (text[-1] if text else type(err).__name__)[:300]


def _free(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:,.0f} MiB"
    except OSError:
        return "unknown"


def _write_run_files(tmp: Path, tokenizer, state: dict, run_config: dict, out_dir: Path) -> None:
    tokenizer.save_pretrained(tmp)
    torch.save(state, tmp / STATE_FILE)
    (tmp / RUN_CONFIG_FILE).write_text(yaml.safe_dump(run_config, sort_keys=False))
    metrics = Path(out_dir) / METRICS_FILE
    if metrics.is_file():  # the record `runlog.RunLog` rebuilds a lost metrics.jsonl from
        shutil.copyfile(metrics, tmp / METRICS_FILE)


def save_checkpoint(out_dir, model, tokenizer, state: dict, run_config: dict) -> Path:
    """Write `<out_dir>/latest/`: HF model + tokenizer, `training_state.pt`, `run_config.yaml`, and
    a copy of the run's `metrics.jsonl`."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        _write_run_files(tmp, tokenizer, state, run_config, out_dir)

    return write_dir_atomically(Path(out_dir) / LATEST, write)


def save_sharded_checkpoint(out_dir, main: bool, write_shards: Callable[[Path], None], model, tokenizer,
                            state: Optional[dict], run_config: dict, weights: Optional[dict] = None) -> Path:
    """Write an FSDP run's `<out_dir>/latest/`; every rank calls it.

    Each rank writes its shard of the model and the optimizer (`write_shards(dir)`, collective)
    into the temporary directory; then rank 0 adds what `save_checkpoint` writes (`state`: the
    training state without the optimizer; the model's config.json, and its weights when
    `weights`, gathered on rank 0, are given) and renames it into place. The caller waits for
    rank 0 (a barrier) before anything reads it."""
    import torch.distributed as dist

    final = Path(out_dir) / LATEST
    tmp = temp_dir_of(final)
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / SHARDS).mkdir(parents=True)
    dist.barrier()  # the directory exists before any rank writes into it
    try:
        write_shards(tmp / SHARDS)
    except Exception as err:  # raised on every rank: the shards' writer shares its outcome
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(final, err) from err
    if not main:
        return final

    def write(tmp: Path) -> None:
        if weights is None:
            model.config.save_pretrained(tmp)  # the architecture; the weights are in the shards
        else:
            model.save_pretrained(tmp, state_dict=weights)
        _write_run_files(tmp, tokenizer, state, run_config, out_dir)

    return write_dir_atomically(final, write, filled=True)


def snapshot_dir(out_dir, step: int) -> Path:
    return Path(out_dir) / SNAPSHOTS / f"step-{step:07d}"


def save_snapshot(out_dir, model, tokenizer, info: dict, weights: Optional[dict] = None) -> Path:
    """Write `<out_dir>/snapshots/step-XXXXXXX/`: model + tokenizer + `snapshot.json` (`info`).
    `weights`: the model's whole weights when `model` holds only a shard of them (FSDP)."""

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, state_dict=weights)
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
    path = Path(directory) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError) as err:  # torch's words for a file cut short or garbled
        raise CheckpointError(f"{str(path)!r} is damaged ({str(err).splitlines()[0][:120]}): the run cannot "
                              "resume (its model still loads for infill and evaluate); --no-resume starts over and "
                              "moves the run aside") from None


# --- the run directory as a whole: what belongs to a run, one trainer at a time ------------------

METRICS_FILE = "metrics.jsonl"
RUN_ENTRIES = (LATEST, f".{LATEST}.old", SNAPSHOTS, METRICS_FILE, "loss.png")  # what a run leaves behind
LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run directory (`fcntl.flock` on `<out_dir>/.lock`), held while a run
    trains: a second trainer on the same directory is refused instead of interleaving its
    checkpoints and metrics. The kernel releases it when the process ends, however it ends."""

    def __init__(self, out_dir):
        self.path = Path(out_dir) / LOCK_FILE
        self._file = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise CheckpointError(
                f"{str(self.path.parent)!r} is in use by another training ({holder}); wait for it to finish, "
                "stop it, or pick another --out-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc) -> bool:
        if self._file is not None:
            self._file.close()  # (closing releases the lock)
            self._file = None
        return False


def run_leftovers(out_dir) -> list[str]:
    """What an earlier run left in `out_dir`: its checkpoints, snapshots and metrics, described."""
    out = Path(out_dir)
    found = []
    for name in RUN_ENTRIES:
        path = out / name
        if path.is_dir() and name == SNAPSHOTS:
            found.append(f"{len(list(path.glob('step-*')))} snapshots")
        elif path.is_file() and name == METRICS_FILE:
            found.append(f"a {sum(1 for _ in path.open(errors='replace'))}-line {METRICS_FILE}")
        elif path.exists():
            found.append(f"{name}/" if path.is_dir() else name)
    return found


def start_fresh(out_dir, start_over: bool) -> Optional[Path]:
    """Make `out_dir` ready for a new run. An earlier run's files are never deleted: without
    `start_over` they stop the new run (CheckpointError); with it they move into
    `<out_dir>/replaced-<UTC time>/` (returned)."""
    out = Path(out_dir)
    leftovers = run_leftovers(out)
    if not leftovers:
        return None
    if not start_over:
        raise CheckpointError(
            f"{str(out)!r} holds an earlier run ({', '.join(leftovers)}) but nothing to resume from "
            f"({LATEST}/{STATE_FILE} is missing); starting a new run here would replace it. Pass --no-resume "
            "to start over (the earlier run is moved into a replaced-<time>/ folder there, not deleted), "
            "or pick another --out-dir"
        )
    aside = out / time.strftime("replaced-%Y%m%dT%H%M%SZ", time.gmtime())
    aside.mkdir()
    for name in RUN_ENTRIES:
        if (out / name).exists():
            os.replace(out / name, aside / name)
    return aside


def read_metrics_file(path) -> list[dict]:
    """The records of a metrics.jsonl. A torn last line (a crash or a full disk mid-write) is
    dropped; a damaged line before it is an error naming the file and the line."""
    path = Path(path)
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break  # the write that never finished: its step is redone on resume
            raise CheckpointError(f"{str(path)!r} line {number} is not a JSON record: {line[:80]!r}; "
                                  "delete that line (or the file) and run again") from None
    return records


# --- reading a run: which directory holds the model, and what it was trained with ---------------


def resolve_checkpoint_dir(path) -> Path:
    """A run dir means its `latest/` (or `.latest.old/` if a save died between its two renames);
    `latest/`, a snapshot or any HF model directory means itself."""
    path = Path(path)

    def holds_model(d: Path) -> bool:  # a whole model, or a LoRA adapter (lora.py)
        return (d / "config.json").is_file() or (d / "adapter_config.json").is_file()

    for candidate in (path / LATEST, path / f".{LATEST}.old"):
        if holds_model(candidate):
            return candidate
    if holds_model(path):
        return path
    raise FileNotFoundError(
        f"no model in {str(path)!r} (no config.json there or in {LATEST}/); pass a run directory written by "
        f"`python -m mamba_nb train`, its {LATEST}/ or {SNAPSHOTS}/step-*/ folder, or an HF model directory"
    )


def check_weights_present(directory) -> None:
    """Refuse, with the command that converts them, an FSDP checkpoint whose weights are only in its
    shards (the run stopped before its final save, which also writes them whole)."""
    d = Path(directory)
    if not (d / SHARDS).is_dir() or any(d.glob("*.safetensors")) or any(d.glob("pytorch_model*.bin")):
        return
    run = d.parent if d.name in (LATEST, f".{LATEST}.old") else d
    raise CheckpointError(
        f"{str(d)!r} holds an FSDP run's weights in shards only (the run stopped before its final save, which "
        f"writes them whole too); convert them into a plain HF model with `python -m mamba_nb convert-fsdp "
        f"--checkpoint {run} --out-dir {run}-hf` and pass that directory, or resume the run (the same torchrun "
        "command) to finish it"
    )


def run_config_of(checkpoint: str | Path | None) -> dict:
    """The run config saved with a checkpoint (`run_config.yaml` in it, or in its run's
    `latest/` for a snapshot), or {} if there is none (e.g. an HF checkpoint)."""
    if not checkpoint:
        return {}
    path = Path(checkpoint)
    for d in (path, path / LATEST, path.parent, path.parent.parent / LATEST):
        f = d / RUN_CONFIG_FILE
        if f.is_file():
            try:
                text = f.read_text()
                loaded = yaml.safe_load(text)
            except (yaml.YAMLError, UnicodeDecodeError) as err:
                raise CheckpointError(f"{str(f)!r} is damaged ({type(err).__name__}); restore it, or delete it to "
                                      "use the checkpoint without its run settings") from None
            if not isinstance(loaded, dict):
                raise CheckpointError(f"{str(f)!r} is damaged (not a mapping of settings); restore it, or delete it "
                                      "to use the checkpoint without its run settings")
            missing = [k for k in _WINDOW_KEYS if k not in loaded]
            if missing and not text.endswith("\n"):  # written whole, it ends a line: this one was cut short
                raise CheckpointError(f"{str(f)!r} is incomplete (no {', '.join(missing)}): restore it from the run, "
                                      "or delete it to use the checkpoint without its run settings")
            return loaded
    return {}


# The settings a checkpoint's users read (its context length, the FIM layout it was trained with).
_WINDOW_KEYS = tuple(f.name for f in dataclasses.fields(WindowConfig))


def trained_context_len(checkpoint: str | Path | None) -> Optional[int]:
    """`context_len` the checkpoint was trained with, or None when unknown."""
    value = run_config_of(checkpoint).get("context_len")
    return int(value) if value else None

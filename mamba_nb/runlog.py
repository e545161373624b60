"""What a run writes as it goes: `metrics.jsonl` (always), `loss.png`, and TensorBoard / W&B when
asked for and installed.

One record per optimizer step (`kind: "train"`) and per validation (`kind: "eval"`), appended a
whole line at a time. On resume, the records of steps the run will redo (logged after its last
checkpoint) are dropped, and so is a line a crash or a full disk tore (`checkpoint.read_metrics_file`).
A metrics.jsonl deleted or cut short is restored from the copy each checkpoint keeps; where there
is none (an older checkpoint), `loss.png` is never redrawn from the part that is left: the old
picture stays, and the run says so. A write that fails stops the run with one line naming the
file and what survived.

Not here: the numbers themselves (`train.py`, `losses.py`) or the pictures (`viz/training.py`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from mamba_nb import checkpoint as ckpt
from mamba_nb.config import to_dict
from mamba_nb.runtime import TrainingError


class RunLog:
    """metrics.jsonl always; TensorBoard and W&B only when asked for and installed. Only the
    main rank (`main=True`) writes anything."""

    def __init__(self, cfg, out: Path, main: bool, resume_step: Optional[int], checkpoint: Optional[Path] = None):
        """`resume_step`: the step a resumed run goes on from (None: a new run), `checkpoint`: the
        directory it resumes from (its copy of the metrics)."""
        self.path = out / ckpt.METRICS_FILE
        self.main = main
        self.records: list[dict] = []
        self.tb = self.wandb = None
        self.keep_picture = False  # the metrics lack steps loss.png shows: do not draw over it
        if not main:
            return
        if resume_step is not None:
            self.records = self._records_to_resume(resume_step, checkpoint)
        self._write(lambda f: f.write("".join(json.dumps(r) + "\n" for r in self.records)), "w")
        if cfg.log_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                print("note: log_tensorboard is set but tensorboard is not installed (pip install tensorboard)")
        if cfg.log_wandb:
            try:
                import wandb

                self.wandb = wandb.init(project="mamba-nb", dir=str(out), config=to_dict(cfg), resume="allow")
            except ImportError:
                print("note: log_wandb is set but wandb is not installed (pip install wandb)")

    def _records_to_resume(self, step: int, checkpoint: Optional[Path]) -> list[dict]:
        """The records of steps up to `step`: metrics.jsonl's, or the checkpoint's copy where that one
        has more (metrics.jsonl deleted or cut short), said in one line."""

        def upto(path: Path) -> list[dict]:
            return [r for r in ckpt.read_metrics_file(path) if r["step"] <= step] if path.is_file() else []

        have = upto(self.path)
        copy = checkpoint / ckpt.METRICS_FILE if checkpoint is not None else None
        if copy is not None and copy.is_file():
            kept = upto(copy)
            if len(kept) > len(have):
                print(f"note: {str(self.path)!r} held {len(have)} of the run's {len(kept)} records up to step {step} "
                      f"(deleted or cut short); restored them from the checkpoint's copy ({str(copy)!r})")
                return kept
            return have
        trained = {r["step"] for r in have if r["kind"] == "train"}
        if len(trained) < step:
            picture = self.path.parent / "loss.png"
            self.keep_picture = picture.exists()
            print(f"note: {str(self.path)!r} holds {len(trained)} of the run's {step} steps (deleted or cut short) and "
                  "the checkpoint keeps no copy of it: "
                  + (f"{str(picture)!r} is kept as it was, not redrawn from the steps that are left"
                     if self.keep_picture else f"{str(picture)!r} will show only the steps it holds"))
        return have

    def log(self, record: dict) -> None:
        if not self.main:
            return
        self.records.append(record)
        self._write(lambda f: f.write(json.dumps(record) + "\n"), "a")
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step",)}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])
        if self.wandb is not None:
            self.wandb.log({f"{record['kind']}/{k}": v for k, v in numbers.items()}, step=record["step"])

    def _write(self, write, mode: str) -> None:
        try:
            with self.path.open(mode) as f:
                write(f)
        except OSError as err:
            raise TrainingError(
                f"could not write {str(self.path)!r} ({err.strerror or err}); the checkpoint in "
                f"{str(self.path.parent / ckpt.LATEST)!r} (if any) is intact, and a torn last line is dropped on "
                "resume. Free disk space, then run the same command again to resume"
            ) from None

    def plot(self, out: Path) -> None:
        if not self.main or self.keep_picture:
            return
        from mamba_nb.viz.training import plot_loss

        plot_loss(self.records).savefig(out / "loss.png", dpi=100)

    def time_shares(self) -> tuple[float, float]:
        """(seconds of training steps, seconds of them spent waiting for data)."""
        steps = [r for r in self.records if r["kind"] == "train"]
        return sum(r["step_s"] for r in steps), sum(r["data_wait_s"] for r in steps)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()

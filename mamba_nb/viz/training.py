"""Pictures of a training run (notebook 04): the loss curves, from metrics.jsonl records.

`plot_loss(records)` draws the training loss (raw and smoothed) and the two validation
losses against tokens seen, and returns a matplotlib `Figure` (made without pyplot, so
it works under any backend and in a training process with no display). `plot_schedule` draws the
learning rate of every step. `LivePlot` keeps
the records a running `train` hands its `on_step` / `on_eval` hooks and redraws the
figure in a notebook. `read_metrics` loads a run's metrics.jsonl.

Not here: computing any of these numbers (`train.py` does).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from mamba_nb.viz.figure import figure


def read_metrics(path) -> list[dict]:
    """The records of `<run>/metrics.jsonl` (a run directory or the file itself)."""
    from mamba_nb.checkpoint import METRICS_FILE, read_metrics_file

    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no metrics at {str(path)!r}; train first (`python -m mamba_nb train`)")
    return read_metrics_file(path)


def smooth(values: Iterable[float], weight: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing): the first
    point is the first value, not pulled towards zero."""
    values = np.asarray(list(values), dtype=float)
    out = np.empty_like(values)
    avg = 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out[i] = avg / (1 - weight ** (i + 1))
    return out


def plot_loss(records: list[dict], smoothing: float = 0.9, title: Optional[str] = None):
    """Training and validation loss (nats per token) against tokens seen → `Figure`."""

    fig = figure(figsize=(7, 4))
    ax = fig.add_subplot()
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if train:
        x = [r["tokens_seen"] for r in train]
        y = [r["loss"] for r in train]
        ax.plot(x, y, color="tab:blue", alpha=0.25, linewidth=1)
        ax.plot(x, smooth(y, smoothing), color="tab:blue", label="train (smoothed)")
    if evals:
        x = [r["tokens_seen"] for r in evals]
        ax.plot(x, [r["val_loss"] for r in evals], "o-", color="tab:orange", label="validation, left to right")
        ax.plot(x, [r["val_fim_loss"] for r in evals], "s--", color="tab:green", label="validation, FIM middles")
    if not records:
        ax.text(0.5, 0.5, "no steps yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend(loc="upper right")
    ax.set_title(title or "loss")
    fig.tight_layout()
    return fig


def plot_schedule(lr: float, warmup_steps: int, min_lr_ratio: float, total_steps: int):
    """The learning rate of every step of a run (`train.lr_at`) → `Figure`."""

    from mamba_nb.config import TrainConfig
    from mamba_nb.schedule import lr_at

    cfg = TrainConfig(lr=lr, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)
    steps = np.arange(total_steps)
    fig = figure(figsize=(6, 3))
    ax = fig.add_subplot()
    ax.plot(steps + 1, [lr_at(int(s), cfg, total_steps) for s in steps])
    ax.axvline(warmup_steps, color="gray", linestyle=":", label=f"end of warmup (step {warmup_steps})")
    ax.axhline(lr * min_lr_ratio, color="gray", linestyle="--", label=f"floor: min_lr_ratio x lr")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_throughput(records: list[dict], smoothing: float = 0.9):
    """Where a run's time went, step by step → `Figure`: training tokens per second (left) and the
    share of each step spent waiting for the next batch (right; the data path keeps up when it
    stays near 0)."""
    train = [r for r in records if r.get("kind") == "train"]
    fig = figure(figsize=(9, 3))
    speed, wait = fig.subplots(1, 2)
    if train:
        steps = [r["step"] for r in train]
        tok_s = [r["tokens_per_s"] for r in train]
        share = [100 * r["data_wait_s"] / r["step_s"] if r["step_s"] > 0 else 0.0 for r in train]
        speed.plot(steps, tok_s, color="tab:blue", alpha=0.25, lw=1)
        speed.plot(steps, smooth(tok_s, smoothing), color="tab:blue")
        total_wait = sum(r["data_wait_s"] for r in train) / max(sum(r["step_s"] for r in train), 1e-9)
        wait.plot(steps, share, color="tab:red", alpha=0.6, lw=1)
        wait.axhline(100 * total_wait, color="black", ls="--", lw=1, label=f"whole run: {100 * total_wait:.1f} %")
        wait.legend(loc="upper right", fontsize=8)
        speed.set_title(f"median {np.median(tok_s):,.0f} tokens/s", fontsize=9)
    speed.set_xlabel("step")
    speed.set_ylabel("training tokens / s")
    wait.set_xlabel("step")
    wait.set_ylabel("waiting for data (% of step)")
    wait.set_ylim(bottom=0)
    for ax in (speed, wait):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


class LivePlot:
    """Redraw `plot_loss` in a notebook while `train` runs.

        live = LivePlot(every=10)
        train(cfg, on_step=live.on_step, on_eval=live.on_eval)

    Redraws every `every` steps and after each validation, in one display slot that is
    updated in place (no growing list of figures). What it shows is `html()`: the picture with a
    caption naming the step it was drawn at (`<figure class="live-loss" data-step=...>`), so a
    reader, and the browser test, can tell the curve grew.
    """

    def __init__(self, every: int = 10, records: Optional[list[dict]] = None):
        self.every = every
        self.records: list[dict] = list(records or [])
        self._handle = None

    @classmethod
    def for_run(cls, out_dir, every: int = 10) -> "LivePlot":
        """A live plot that starts from what `out_dir` already logged (nothing for a new run), drawn
        at once: a finished run shows its curve, a resumed one goes on from it."""
        metrics = Path(out_dir) / "metrics.jsonl"
        live = cls(every, read_metrics(metrics) if metrics.is_file() else None)
        live.draw()
        return live

    def on_step(self, record: dict, *_) -> None:
        self.records.append(record)
        if record["step"] % self.every == 0:
            self.draw()

    def on_eval(self, record: dict, *_) -> None:
        self.records.append(record)
        self.draw()

    def html(self) -> str:
        """The current picture as HTML: the loss plot (an embedded PNG) and a caption."""
        fig = plot_loss(self.records)
        train = [r for r in self.records if r.get("kind") == "train"]
        step = train[-1]["step"] if train else 0
        caption = f"step {step}: training loss {train[-1]['loss']:.3f}" if train else "no steps yet"
        return (f'<figure class="live-loss" data-step="{step}" style="margin:0">'
                f'<img src="data:image/png;base64,{fig.png_base64()}" alt="loss curve at step {step}"/>'
                f'<figcaption style="font-size:12px">{caption}</figcaption></figure>')

    def draw(self):
        """Show (or update in place) the picture; returns its HTML."""
        html = self.html()
        try:
            from IPython.display import HTML, display
        except ImportError:  # not in IPython: nothing to redraw into
            return html
        if self._handle is None:
            self._handle = display(HTML(html), display_id=True)
        else:
            self._handle.update(HTML(html))
        return html

"""Notebook 02's pictures: where the windows of an epoch fall, and who reads which.

Each function takes a `WindowSampler` (or its settings) and arrays, and returns a
matplotlib `Figure` made without pyplot (safe on any backend) or plain numbers. Nothing
here reads tokens; document boundaries come in as `doc_spans` (`ds.doc_spans(split)`).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mamba_nb.sampler import WindowSampler
from mamba_nb.viz.figure import figure

WINDOW_COLORS = ["#4e79a7", "#a0cbe8"]  # alternate, so neighbouring windows differ
GROUP_COLORS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7"]


def pair_coverage(sampler: WindowSampler, epochs: Sequence[int]) -> np.ndarray:
    """(len(epochs), num_tokens - 1) int: how often each next-token pair (input i → target i+1)
    is trained in each epoch, over all ranks. Never more than 1: windows share a token, not a pair."""
    counts = np.zeros((len(epochs), sampler.num_tokens - 1), dtype=np.int64)
    for row, epoch in enumerate(epochs):
        for start in sampler.epoch_starts(epoch):
            counts[row, start : start + sampler.context_len] += 1
    return counts


def plot_epoch_windows(sampler: WindowSampler, doc_spans: Optional[np.ndarray] = None,
                       epochs: Sequence[int] = (0, 1), token_range: Optional[tuple[int, int]] = None,
                       figsize=(11, 3.2)) -> Figure:
    """One row per epoch: its windows as bars over the token array, documents' starts as dashed lines.

    `token_range` zooms in (default: 7 windows' worth around the first document start past
    the third window, so edges and a document boundary show). The text gives each epoch's
    offset; the order a window is visited in is written on it when it fits.
    """
    ctx = sampler.context_len
    if token_range is None:
        lo = 0
        if doc_spans is not None:
            later = [b for b in np.asarray(doc_spans)[:, 0].tolist() if b > 3 * ctx]
            lo = later[0] - 3 * ctx if later else 0
        token_range = (lo, min(sampler.num_tokens, lo + 7 * ctx))
    lo, hi = token_range
    fig = figure(figsize=figsize)
    ax = fig.add_subplot()
    for row, epoch in enumerate(epochs):
        starts = sampler.epoch_starts(epoch)
        y = len(epochs) - 1 - row
        for rank_on_array, (start, step) in enumerate(sorted(zip(starts.tolist(), range(len(starts))))):
            end = start + ctx + 1
            if end < lo or start > hi:
                continue
            color = WINDOW_COLORS[rank_on_array % 2]
            ax.add_patch(Rectangle((start, y - 0.35), ctx + 1, 0.7, facecolor=color, edgecolor="black", lw=0.6))
            if (min(end, hi) - max(start, lo)) > 0.08 * (hi - lo):
                ax.text((max(start, lo) + min(end, hi)) / 2, y, f"#{step}", ha="center", va="center", fontsize=7,
                        color="white" if color == WINDOW_COLORS[0] else "black")
        ax.text(lo, y + 0.42, f"epoch {epoch}: offset {sampler.offset(epoch)}", fontsize=8, va="bottom")
    if doc_spans is not None:
        for start in np.asarray(doc_spans)[:, 0]:
            if lo <= start <= hi:
                ax.axvline(start, color="#e15759", ls="--", lw=0.9)
    ax.set_xlim(lo, hi)
    ax.set_ylim(-0.6, len(epochs) - 0.1 + 0.3)
    ax.set_yticks(range(len(epochs)), [f"epoch {e}" for e in reversed(list(epochs))])
    ax.set_xlabel(f"token position (windows of context_len + 1 = {ctx + 1} tokens; red dashes: document starts;"
                  " #k: k-th window visited)")
    fig.tight_layout()
    return fig


def shard_table(num_tokens: int, context_len: int, world_size: int, num_workers: int, batch_size: int,
                seed: int = 0, epoch: int = 0) -> np.ndarray:
    """(n, 4) int64 rows of [window start, rank, worker, batch] for one epoch.

    Ranks are dealt windows round-robin by the sampler; within a rank, the DataLoader gives
    whole batches to its workers in turn (batch i → worker i % num_workers).
    """
    rows = []
    for rank in range(world_size):
        s = WindowSampler(num_tokens, context_len, seed=seed, rank=rank, world_size=world_size, epoch=epoch)
        for i, start in enumerate(s.rank_starts(epoch).tolist()):
            batch = i // batch_size
            rows.append((start, rank, batch % max(1, num_workers), batch))
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def plot_shards(num_tokens: int, context_len: int, world_size: int = 2, num_workers: int = 2,
                batch_size: int = 4, seed: int = 0, epoch: int = 0, token_range: Optional[tuple[int, int]] = None,
                figsize=(11, 2.8)) -> Figure:
    """Each window of an epoch on the token array, colored by the rank that reads it (top) and by
    the DataLoader worker of that rank that reads it (bottom). No window is in two places.
    `token_range` (default: the first 40 windows' worth) zooms in."""
    table = shard_table(num_tokens, context_len, world_size, num_workers, batch_size, seed, epoch)
    lo, hi = token_range or (0, min(num_tokens, 40 * context_len))
    fig = figure(figsize=figsize)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, col, what, n in ((axes[0], 1, "rank", world_size), (axes[1], 2, "worker", num_workers)):
        for start, group in zip(table[:, 0], table[:, col]):
            if start + context_len < lo or start > hi:
                continue
            ax.add_patch(Rectangle((start, 0), context_len, 1, facecolor=GROUP_COLORS[group % len(GROUP_COLORS)],
                                   edgecolor="white", lw=0.8))
        ax.set_yticks([])
        ax.set_ylabel(what, rotation=0, ha="right", va="center")
        handles = [Rectangle((0, 0), 1, 1, facecolor=GROUP_COLORS[g % len(GROUP_COLORS)]) for g in range(n)]
        ax.legend(handles, [f"{what} {g}" for g in range(n)], loc="upper left", bbox_to_anchor=(1.0, 1.1),
                  fontsize=7, frameon=False)
    axes[1].set_xlim(lo, hi)
    axes[1].set_xlabel(f"token position — epoch {epoch}, {len(table)} windows, "
                       f"{math.ceil(len(table) / world_size / batch_size)} batches of {batch_size} per rank")
    fig.tight_layout()
    return fig


def untrained_pairs(sampler: WindowSampler, num_epochs: int) -> tuple[np.ndarray, np.ndarray]:
    """Next-token pairs not yet trained after 1..num_epochs epochs: (ours, the original grid's), each (num_epochs,).

    Ours: the windows of every epoch (a new offset each time). The original project's grid:
    windows of `context_len + 1` tokens every `context_len + 1` tokens, the same every epoch."""
    n_pairs, ctx = sampler.num_tokens - 1, sampler.context_len
    ours, grid = np.zeros(n_pairs, dtype=bool), np.zeros(n_pairs, dtype=bool)
    for start in range(0, sampler.num_tokens - ctx, ctx + 1):
        grid[start: start + ctx] = True
    left_ours = []
    for epoch in range(num_epochs):
        for start in sampler.epoch_starts(epoch):
            ours[start: start + ctx] = True
        left_ours.append(n_pairs - int(ours.sum()))
    return np.array(left_ours), np.full(num_epochs, n_pairs - int(grid.sum()))


def plot_untrained_pairs(sampler: WindowSampler, num_epochs: int = 8, figsize=(7, 3.2)) -> Figure:
    """How many next-token pairs have never been trained after each epoch, ours against the
    original grid (which misses the same pair at every window edge, every epoch)."""
    ours, grid = untrained_pairs(sampler, num_epochs)
    epochs = np.arange(1, num_epochs + 1)
    fig = figure(figsize=figsize)
    ax = fig.add_subplot()
    ax.plot(epochs, grid, "s--", color="#e15759", label="original grid (fixed, ctx + 1 apart)")
    ax.plot(epochs, ours, "o-", color="#4e79a7", label="WindowSampler (new offset each epoch)")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_xticks(epochs)
    ax.set_xlabel("epochs trained")
    ax.set_ylabel("pairs never trained yet")
    ax.set_title(f"{sampler.num_tokens - 1:,} next-token pairs, context_len {sampler.context_len}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

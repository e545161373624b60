"""Notebook 03's pictures: FIM samples with prefix, middle and suffix in colors, and the measured FIM rate.

`show_fim(windows, tokenizer, fim_rate, spm_rate, ...)` is the widget's function: it
transforms a batch of windows with `fim.apply_fim`, renders a few of them as HTML, and
plots the measured FIM fraction against the requested `fim_rate`. It returns a `FimView`
whose HTML holds everything (the plot inline), so the same call gives a static picture
without a kernel and a live one inside `ipywidgets.interact`.

The HTML is machine-checkable: every piece of a rendered window (a document piece, or a region
of lines with `fim_region_lines`) is an element
`<div class="fim-sample" data-fim="psm|spm|none">`, its tokens are `<span>`s of class
`fim-prefix`, `fim-middle`, `fim-suffix`, `fim-sentinel`, `fim-plain` or `fim-pad`, and the
measurement reads `measured FIM fraction: 0.87` in an element of class `fim-measured`.
This module transforms nothing itself and reads no dataset beyond `sample_windows`.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from mamba_nb.fim import MIDDLE, PAD, PLAIN, PREFIX, ROLE_NAMES, SENTINEL, SUFFIX, FimResult, FimTransform, apply_fim
from mamba_nb.config import WindowConfig
from mamba_nb.viz.figure import figure

ROLE_STYLE = {
    PLAIN: "",
    SENTINEL: "background:#555;color:#fff;border-radius:3px;padding:0 2px;font-weight:bold",
    PREFIX: "background:#dfe7fd",
    SUFFIX: "background:#fff1c1",
    MIDDLE: "background:#c9f2d9",
    PAD: "background:#eee;color:#999",
}
RATES = np.linspace(0.0, 1.0, 11)


def sample_windows(ds, split: str, context_len: int, num_windows: int, seed: int = 0, epoch: int = 0):
    """The first `num_windows` windows an epoch visits: ((n, context_len + 1) int64 tokens, (n,) starts)."""
    from mamba_nb.sampler import WindowSampler

    sampler = WindowSampler(ds.num_tokens(split), context_len, seed=seed, epoch=epoch)
    starts = sampler.rank_starts(epoch)[:num_windows]
    windows = np.stack([ds.read(split, int(s), context_len + 1).astype(np.int64) for s in starts])
    return windows, starts


def _text(tokenizer, ids) -> str:
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)


def window_html(result: FimResult, b: int, tokenizer) -> str:
    """One transformed window: each document piece a `div.fim-sample[data-fim]`, tokens colored by role."""
    tokens, roles = result.tokens[b], result.roles[b]
    parts = []
    blocks, at = [], 0  # the pieces, and the tokens between them (a document's own <|endoftext|>)
    for (start, end), mode in zip(result.spans[b], result.modes[b]):
        if start > at:
            blocks.append(((at, start), None))
        blocks.append(((start, end), mode))
        at = end
    for (start, end), mode in blocks:
        if mode is None:
            parts.append(f'<span class="fim-plain">{html.escape(_text(tokenizer, tokens[start:end]))}</span>')
            continue
        runs, i = [], start
        while i < end:  # runs of one role, decoded together (each was encoded together)
            j = i
            while j < end and roles[j] == roles[i] and (roles[i] != SENTINEL or j == i):
                j += 1
            role = int(roles[i])
            runs.append(f'<span class="fim-{ROLE_NAMES[role]}" style="{ROLE_STYLE[role]}">'
                        f'{html.escape(_text(tokenizer, tokens[i:j]))}</span>')
            i = j
        parts.append(f'<div class="fim-sample" data-fim="{mode}" style="border-left:4px solid '
                     f'{"#999" if mode == "none" else "#2a9d8f"};padding-left:6px;margin:4px 0">'
                     f'<div style="font-size:10px;color:#666">{mode.upper() if mode != "none" else "left to right"}'
                     f'</div>{"".join(runs)}</div>')
    pads = int((roles == PAD).sum())
    if pads:
        parts.append(f'<span class="fim-pad" style="{ROLE_STYLE[PAD]}">⟨fim_pad × {pads}⟩</span>')
    return (f'<div class="fim-window" style="font-family:monospace;white-space:pre-wrap;font-size:11px;'
            f'border:1px solid #ccc;padding:4px;margin:6px 0">{"".join(parts)}</div>')


def legend_html() -> str:
    items = [(PREFIX, "prefix"), (MIDDLE, "middle (+ its closing <|endoftext|>)"), (SUFFIX, "suffix"),
             (SENTINEL, "sentinel token")]
    return " ".join(f'<span style="{ROLE_STYLE[r]};padding:0 4px;font-size:11px">{html.escape(t)}</span>'
                    for r, t in items)


def measure_fim_fraction(windows, tokenizer, rates: Sequence[float] = RATES, spm_rate: float = 0.5,
                         fim_level: str = "char", seed: int = 0, epoch: int = 0, starts=None,
                         **regions) -> np.ndarray:
    """The FIM fraction measured on `windows` (transformed / non-empty pieces) at each requested rate.
    `regions`: fim_region_lines, line_hole_rate (see `fim.py`)."""
    windows = np.asarray(windows)
    windows = windows[None] if windows.ndim == 1 else windows
    transform = FimTransform(tokenizer, 0.0, spm_rate, fim_level, seed, **regions)  # prepared once, rate changed below
    out = []
    for rate in rates:
        transform.fim_rate = WindowConfig(fim_rate=rate).fim_rate  # (checked like any setting)
        out.append(transform(windows, starts, epoch).fim_fraction)
    return np.array(out)


def plot_fim_fraction(rates, measured, requested: Optional[float] = None, figsize=(4.2, 3.0)) -> Figure:
    """Measured FIM fraction against the requested `fim_rate` (the diagonal is 'as asked')."""
    fig = figure(figsize=figsize)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#bbb", ls="--", lw=1, label="as requested")
    ax.plot(rates, measured, marker="o", ms=3, color="#2a9d8f", label="measured")
    if requested is not None:
        ax.axvline(requested, color="#e76f51", lw=1, label=f"fim_rate = {requested:.2f}")
    ax.set_xlabel("requested fim_rate")
    ax.set_ylabel("measured FIM fraction")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


@dataclass
class FimView:
    """What `show_fim` returns: `html` (displayed by Jupyter), the `result`, the `figure`."""

    html: str
    result: FimResult
    figure: Figure

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:  # what a console shows (a notebook shows the HTML)
        return f"FimView({len(self.result.tokens)} windows, measured FIM fraction {self.result.fim_fraction:.2f})"


def show_fim(windows, tokenizer, fim_rate: float = 0.9, spm_rate: float = 0.5, seed: int = 0, epoch: int = 0,
             fim_level: str = "char", starts=None, num_samples: int = 2, fim_region_lines: int = 0,
             line_hole_rate: float = 0.0) -> FimView:
    """Transform `windows` (B, L+1) at `fim_rate`/`spm_rate` (whole documents, or regions of
    `fim_region_lines` lines with `line_hole_rate` of the holes shaped like lines); render
    `num_samples` of them and the measured FIM fraction (over all B windows) against the
    requested rate."""
    regions = dict(fim_region_lines=fim_region_lines, line_hole_rate=line_hole_rate)
    result = apply_fim(windows, tokenizer, fim_rate, spm_rate, fim_level, seed, epoch, starts, **regions)
    measured = measure_fim_fraction(windows, tokenizer, RATES, spm_rate, fim_level, seed, epoch, starts, **regions)
    fig = plot_fim_fraction(RATES, measured, fim_rate)
    modes = [m for row in result.modes for m in row if m != "none"]
    spm_share = sum(m == "spm" for m in modes) / len(modes) if modes else 0.0
    summary = (
        f'<p class="fim-measured" data-measured="{result.fim_fraction:.4f}" style="font-size:12px">'
        f"measured FIM fraction: {result.fim_fraction:.2f} "
        f"(requested fim_rate {fim_rate:.2f}; {result.num_fim} of {result.num_pieces} "
        f"{f'regions of {fim_region_lines} lines' if fim_region_lines else 'document pieces'} transformed, "
        f"{result.num_drawn - result.num_fim} drawn but too short to fit; SPM share {spm_share:.2f}, "
        f"requested spm_rate {spm_rate:.2f})</p>"
    )
    samples = "".join(window_html(result, b, tokenizer) for b in range(min(num_samples, len(result.tokens))))
    body = (
        f'<div class="fim-view" data-fim-rate="{fim_rate}" data-spm-rate="{spm_rate}">'
        f"<div>{legend_html()}</div>{summary}"
        f'<div style="display:flex;gap:12px;align-items:flex-start"><div style="flex:1;min-width:0">{samples}</div>'
        f'<img class="fim-fraction-plot" src="data:image/png;base64,{fig.png_base64(dpi=90)}" '
        f'alt="measured FIM fraction against the requested fim_rate"/></div></div>'
    )
    return FimView(body, result, fig)

"""Notebook 01's pictures: code split into colored tokens, document lengths, token frequencies.

Each function takes its data as arguments and returns HTML (a string) or a matplotlib
`Figure` made without pyplot (safe on any backend; a notebook shows it by leaving it as a
cell's value). Nothing here tokenizes a corpus or reads a dataset beyond what it is given:
`token_pieces` encodes one snippet, the plots take arrays.
"""
from __future__ import annotations

import html
from typing import Mapping, Optional, Sequence

import numpy as np

from mamba_nb.viz.figure import figure

# Pastel backgrounds, cycled: neighbouring tokens always differ in color.
COLORS = ["#fde2e4", "#e2ece9", "#dfe7fd", "#fff1c1", "#e8dff5", "#d7f9f1"]
_VISIBLE = {" ": "·", "\t": "→", "\n": "↵\n", "\r": "␍"}


def token_pieces(tokenizer, text: str) -> list[tuple[Optional[int], str]]:
    """`text` cut where the tokenizer cuts it: [(token id, the text it covers), ...].

    Joined, the pieces give back `text` exactly. A character that byte-level BPE splits
    over several tokens is shown with the first of them (the rest cover ""), and text
    the offsets skip (some tokenizers trim spaces from offsets) joins the next token.
    """
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    pieces: list[tuple[Optional[int], str]] = []
    done = 0  # characters of `text` already shown
    for token_id, (_, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        end = max(end, done)
        pieces.append((token_id, text[done:end]))
        done = end
    if done < len(text):
        pieces.append((None, text[done:]))
    return pieces


def _show(piece: str) -> str:
    return "".join(_VISIBLE.get(c, html.escape(c)) for c in piece)


def tokens_html(tokenizer, text: str, show_ids: bool = False) -> str:
    """HTML of `text` with each token on its own background color; hover shows the id.

    Whitespace is made visible (· space, → tab, ↵ newline) because where a newline and the
    next line's indentation fall decides what a model can complete after a line break.
    """
    spans = []
    pieces = token_pieces(tokenizer, text)
    for i, (token_id, piece) in enumerate(pieces):
        label = f"<sub>{token_id}</sub>" if show_ids and token_id is not None else ""
        shown = _show(piece)
        # a newline token's id goes before its line break, not at the start of the next line
        shown = shown[:-1] + label + "\n" if shown.endswith("\n") else shown + label
        spans.append(
            f'<span class="tok" title="id {token_id}" style="background:{COLORS[i % len(COLORS)]};'
            f'border-radius:2px">{shown}</span>'
        )
    n = sum(1 for t, _ in pieces if t is not None)
    return (
        f'<div style="font-family:monospace;white-space:pre;line-height:1.6;font-size:12px">{"".join(spans)}</div>'
        f'<div style="font-size:11px;color:#666">{len(text)} characters → {n} tokens</div>'
    )


def plot_document_lengths(lengths: Mapping[str, Sequence[int]], title: str = "Document lengths"):
    """Histogram of document lengths in tokens (log scale), one series per split → `Figure`.

    `lengths` maps a split name to its documents' lengths, e.g. `ds.doc_spans(split)[:, 1]`.
    """

    fig = figure(figsize=(7, 3.5))
    ax = fig.subplots()
    every = np.concatenate([np.asarray(v, dtype=np.int64) for v in lengths.values()])
    if every.size == 0:
        raise ValueError("no document lengths to plot")
    top = max(int(every.max()), 2)
    bins = np.logspace(0, np.log10(top), 40)
    # 10 ** log10(top) can round below top, and hist drops what lies past the last edge: the longest
    # document would be in no bar (Python 3.12's stdlib gave the tests' corpus such a length)
    bins[0], bins[-1] = min(1, int(every.min())), top
    for split, values in lengths.items():
        values = np.asarray(values)
        ax.hist(values, bins=bins, alpha=0.6, label=f"{split} ({len(values):,} docs, median {np.median(values):,.0f})")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per document (incl. its <|endoftext|>)")
    ax.set_ylabel("documents")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def token_counts(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each id 0..vocab_size-1 occurs in `tokens` → int64 array (vocab_size,)."""
    tokens = np.asarray(tokens)
    if tokens.size and tokens.max() >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} is not below vocab_size={vocab_size}")
    return np.bincount(tokens.astype(np.int64, copy=False), minlength=vocab_size)


def plot_token_frequencies(counts: np.ndarray, labels: Optional[Sequence[str]] = None, top: int = 20):
    """Left: rank against frequency on log-log axes (Zipf's law shows as a straight line).
    Right: the `top` most frequent tokens, labelled with `labels[id]` if given → `Figure`."""

    counts = np.asarray(counts)
    order = np.argsort(counts)[::-1]
    used = counts[order][counts[order] > 0]
    if used.size == 0:
        raise ValueError("all counts are zero: nothing to plot")
    fig = figure(figsize=(10, 3.8))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
    left.loglog(np.arange(1, used.size + 1), used / used.sum())
    left.set_xlabel("rank")
    left.set_ylabel("share of all tokens")
    left.set_title(f"{used.size:,} of {counts.size:,} ids used")
    best = order[: min(top, used.size)]
    names = [repr(labels[i]) if labels is not None else str(i) for i in best]
    right.barh(range(len(best))[::-1], counts[best] / used.sum())
    right.set_yticks(range(len(best))[::-1], names, fontsize=7)
    right.set_xlabel("share of all tokens")
    right.set_title(f"top {len(best)} tokens")
    fig.tight_layout()
    return fig


def readable_tokens(tokenizer, ids: Sequence[int]) -> list[str]:
    """Each id decoded on its own (labels for plots): byte-level pieces as the text they stand for."""
    return [tokenizer.decode([int(i)], clean_up_tokenization_spaces=False) for i in ids]

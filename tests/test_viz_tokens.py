"""viz.tokens: token pieces cover the text exactly; the HTML and the plots show what they are given."""
from __future__ import annotations

import html
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.viz.tokens import (
    plot_document_lengths,
    plot_token_frequencies,
    readable_tokens,
    token_counts,
    token_pieces,
    tokens_html,
)


@settings(max_examples=150, deadline=None)
@given(st.text())
def test_pieces_join_to_the_text_and_follow_the_tokens(tiny_tokenizer, text):
    pieces = token_pieces(tiny_tokenizer, text)
    assert "".join(p for _, p in pieces) == text
    assert [i for i, _ in pieces if i is not None] == tiny_tokenizer.encode(text, add_special_tokens=False)


def test_newline_is_its_own_piece(tiny_tokenizer):
    pieces = [p for _, p in token_pieces(tiny_tokenizer, "if x:\n    return 1\n")]
    assert "\n" in pieces and not any("\n" in p and p.strip("\n") for p in pieces)


def test_html_shows_every_token_with_visible_whitespace(tiny_tokenizer):
    text = "def f(a, b):\n\treturn a < b  # é\n"
    out = tokens_html(tiny_tokenizer, text, show_ids=True)
    ids = tiny_tokenizer.encode(text, add_special_tokens=False)
    assert out.count('class="tok"') == len(ids)
    assert f"{len(text)} characters → {len(ids)} tokens" in out
    # the visible text, with the whitespace markers turned back, is the snippet
    shown = html.unescape(re.sub(r"<sub>\d+</sub>", "", re.sub(r"<span[^>]*>|</span>", "", out.split("</div>")[0].split(">", 1)[1])))
    assert shown.replace("↵\n", "\n").replace("·", " ").replace("→", "\t") == text


def test_document_lengths_plot(tiny_dataset):
    lengths = {s: tiny_dataset.doc_spans(s)[:, 1] for s in tiny_dataset.splits}
    fig = plot_document_lengths(lengths)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for split, values in lengths.items():
        assert any(label.startswith(f"{split} ({len(values):,} docs") for label in labels)
    # every document lands in some bar
    assert sum(p.get_height() for p in ax.patches) == sum(len(v) for v in lengths.values())
    with pytest.raises(ValueError, match="no document"):
        plot_document_lengths({"train": []})


@given(st.dictionaries(st.sampled_from(["train", "validation"]), st.lists(st.integers(1, 10**7), min_size=1,
                                                                          max_size=50), min_size=1))
def test_every_document_lands_in_a_bar(lengths):
    fig = plot_document_lengths(lengths)
    bars = sum(p.get_height() for p in fig.axes[0].patches)
    assert bars == sum(len(v) for v in lengths.values())


@given(st.lists(st.integers(0, 49), max_size=300))
def test_token_counts(ids):
    counts = token_counts(np.array(ids, dtype=np.uint16), 50)
    assert counts.shape == (50,) and counts.sum() == len(ids)
    assert all(counts[i] == ids.count(i) for i in set(ids))


def test_token_counts_rejects_ids_outside_the_vocab():
    with pytest.raises(ValueError, match="vocab_size=3"):
        token_counts(np.array([0, 5]), 3)


def test_token_frequency_plot(tiny_dataset, tiny_tokenizer):
    tokens = tiny_dataset.read("train", 0, tiny_dataset.num_tokens("train"))
    counts = token_counts(tokens, tiny_dataset.meta["vocab_size"])
    labels = readable_tokens(tiny_tokenizer, range(len(counts)))
    fig = plot_token_frequencies(counts, labels, top=10)
    left, right = fig.axes
    assert len(right.patches) == 10
    top_id = int(np.argmax(counts))
    assert right.get_yticklabels()[0].get_text() == repr(labels[top_id])  # most frequent at the top
    assert np.isclose(right.patches[0].get_width(), counts[top_id] / counts.sum())
    assert left.get_xscale() == "log" and left.get_yscale() == "log"
    with pytest.raises(ValueError, match="all counts are zero"):
        plot_token_frequencies(np.zeros(5))

"""viz.infill: the diff marks exactly the differences; the widget's button renders the infill; the curves; the
content gain drawn beside the suffix gain."""
from __future__ import annotations

import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mamba_nb.infill import infill
from mamba_nb.viz.infill import (
    diff_html,
    infill_example_html,
    infill_result_html,
    infill_widget,
    plot_exact_match_vs_tokens,
)
from tiny_models import tiny_bpe, tiny_model

SPAN = re.compile(r'<span class="infill-(same|missing|extra)">(.*?)</span>', re.S)


@settings(max_examples=100, deadline=None)
@given(truth=st.text(alphabet="ab <&\n", max_size=15), pred=st.text(alphabet="ab <&\n", max_size=15))
def test_diff_spans_rebuild_both_strings(truth, pred):
    spans = [(kind, html.unescape(text)) for kind, text in SPAN.findall(diff_html(truth, pred))]
    assert "".join(t for k, t in spans if k != "extra") == truth
    assert "".join(t for k, t in spans if k != "missing") == pred
    if truth == pred:
        assert all(k == "same" for k, _ in spans)


def test_example_html_shows_truth_and_model_with_context():
    page = infill_example_html("a = 1\nb = 2\n", "c = 3", "c = 4", "\nd = 5\n", context_lines=1)
    assert "b = 2" in page and "a = 1" not in page  # one line of context
    assert "d = 5" in page
    assert '<span class="infill-missing">3</span>' in page and '<span class="infill-extra">4</span>' in page


def test_widget_button_renders_the_infill():
    tok = tiny_bpe()
    model = tiny_model("mamba2", tok)
    box = infill_widget(model, tok, max_new_tokens=6)
    pre, suf, button, out = box.children
    assert "infill-button" in button._dom_classes and button.description == "Infill"
    pre.value, suf.value = "def add(a, b):\n    return ", "\n"
    box.on_click(None)
    expected = infill(model, tok, pre.value, suf.value, max_new_tokens=6)
    assert out.value == infill_result_html(expected.text, expected.clean)
    assert 'class="infill-result' in out.value
    pre.value = ""
    box.on_click(None)  # an empty hole is fine too
    assert 'class="infill-result' in out.value


def test_exact_match_curve_has_one_point_per_snapshot():
    pts = [{"tokens_seen": 2000, "exact_match": 0.2, "edit_similarity": 0.5},
           {"tokens_seen": 1000, "exact_match": 0.1, "edit_similarity": 0.4}]
    fig = plot_exact_match_vs_tokens(pts)
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [1000, 2000]
    assert list(line.get_ydata()) == [0.1, 0.2]


def _gain(gain, content):
    return {"gain": gain, "interval": [gain - 0.1, gain + 0.1], "content_gain": content,
            "content_interval": [content - 0.05, content + 0.05]}


def test_report_bars_put_the_content_gain_beside_the_gain():
    from mamba_nb.viz.infill import plot_report

    report = {"mode": "spm", "suffix_gain": {"requests lines": {"spm": _gain(0.3, 0.07), "psm": _gain(0.2, -0.02)}}}
    _, gains = plot_report(report).axes
    bars = gains.patches
    assert [b.get_height() for b in bars] == pytest.approx([0.3, 0.2, 0.07, -0.02])  # gains, then content gains
    assert [bool(b.get_hatch()) for b in bars] == [False, False, True, True]
    for gain_bar, content_bar in zip(bars[:2], bars[2:]):  # side by side at the same layout's tick
        assert content_bar.get_x() == pytest.approx(gain_bar.get_x() + 0.4)


def test_gain_curve_draws_the_content_gain_with_its_interval():
    from mamba_nb.viz.infill import plot_suffix_gain_curve

    pts = [{"tokens_seen": 2000, "spm": _gain(0.25, 0.1)}, {"tokens_seen": 1000, "spm": _gain(0.2, 0.05)}]
    ax = plot_suffix_gain_curve(pts).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["SPM content gain"].get_ydata()) == pytest.approx([0.05, 0.1])
    assert list(lines["SPM suffix gain"].get_ydata()) == pytest.approx([0.2, 0.25])
    bands = [c.get_paths()[0].vertices[:, 1] for c in ax.collections]  # one filled interval per line
    assert len(bands) == 2 and bands[1].min() == pytest.approx(0.0) and bands[1].max() == pytest.approx(0.15)

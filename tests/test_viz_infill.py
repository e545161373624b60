"""viz.infill: the diff marks exactly the differences; the widget's button renders the infill; the curve."""
from __future__ import annotations

import html
import re

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

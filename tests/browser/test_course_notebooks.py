"""The course's widgets, moved in JupyterLab the way a learner moves them.

`pytest --nbmake` proves the cells run; it never renders a widget, so a slider whose
callback ignores it, or a front-end that shows `FloatSlider(...)` as text, passes
there. Here each notebook is opened in a real JupyterLab (smoke mode), its cells are
run with JupyterLab's own commands, and its widget is driven through the page:

- 03_fill_in_the_middle ("Run All Cells"): `fim_rate` to 0 → no piece is drawn, every
  sample reads left-to-right and the measured FIM fraction is 0; to 1 → every piece is
  drawn, each shown sample is PSM or SPM unless it is one of the pieces the widget reports
  as too short to fit, and the fraction it prints is the count it reports.
- 05_infill_code (cells up to the widget; nbmake runs the evaluation below it): a prefix
  and a suffix typed into the text boxes, "Infill" pressed → a result appears in the
  widget, the kernel holds the typed text, and pressing again renders the same infill.

The notebooks are copies in a scratch tree (see `lab_harness.stage_tree`); the
committed files are never written. Screenshots go to test-output/browser/.
MAMBA_NB_NOTEBOOK_DIR=/some/dir runs the same tests on other copies of the notebooks
(how to check that the tests fail on a broken callback without touching the real ones).
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

import pytest

from .lab_harness import (
    WIDGET_UPDATE_S,
    assert_widgets_rendered,
    collapse_side_panels,
    kernel_exec,
    move_slider,
    open_notebook,
    run_all,
    screenshot,
    slider,
    widget_cell,
)

NB03 = "03_fill_in_the_middle.ipynb"
NB05 = "05_infill_code.ipynb"
# A smoke-mode notebook runs in well under a minute under nbmake; JupyterLab on a shared
# 2-core machine is slower, and 05 may first train its smoke model. Bounded all the same.
RUN_ALL_S = 180


# In the page: what the FIM widget's output shows right now (see mamba_nb/viz/fim.py).
# Each rendered document piece is `.fim-sample[data-fim=psm|spm|none]`; the measurement is
# `.fim-measured`, reading "measured FIM fraction: 0.87 (requested fim_rate 0.90; 40 of 46
# document pieces transformed, 1 drawn but too short to fit; ...)".
_FIM_VIEW_JS = """
(el) => {
  const samples = [...el.querySelectorAll('.fim-sample')].map(s => s.dataset.fim);
  const m = el.querySelector('.fim-measured');
  const text = m ? m.innerText : el.innerText;
  const num = (re) => { const x = text.match(re); return x ? parseFloat(x[1]) : null; };
  return {
    samples,
    fraction: num(/measured FIM fraction:\\s*([0-9]*\\.?[0-9]+)/i),
    requested: num(/requested fim_rate\\s*([0-9]*\\.?[0-9]+)/i),
    transformed: num(/([0-9]+) of [0-9]+ (?:document pieces|regions of [0-9]+ lines) transformed/i),
    pieces: num(/[0-9]+ of ([0-9]+) (?:document pieces|regions of [0-9]+ lines)/i),
    too_short: num(/([0-9]+) drawn but too short/i),
    text,
  };
}
"""


def _fim_view(output) -> dict:
    return output.evaluate(_FIM_VIEW_JS)


def _wait_fim_view(page, output, ok, what: str) -> dict:
    """Poll the widget's output until `ok(view)`; fail with the last view seen."""
    deadline = time.monotonic() + WIDGET_UPDATE_S
    view = _fim_view(output)
    while not ok(view):
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after moving fim_rate: expected {what}; the widget shows samples "
                f"data-fim={view['samples']} and reads:\n{view['text'][:1000]}"
            )
        page.wait_for_timeout(250)
        view = _fim_view(output)
    return view


def _interact_output(s):
    """The output area an `interact` draws into: the `.widget-output` next to the slider."""
    return s.locator("xpath=ancestor::div[contains(@class,'widget-interact')][1]").locator(".widget-output").first


def test_fim_rate_slider_in_jupyterlab(page, lab, course):
    path = course(NB03)
    open_notebook(page, lab, path)
    collapse_side_panels(page)
    run_all(page, path, timeout_s=RUN_ALL_S)

    # The widget front-end is there: a slider, not the repr a widget-less front-end prints.
    assert_widgets_rendered(page)
    s = slider(page, "fim_rate")

    output = _interact_output(s)
    start = _fim_view(output)
    assert start["samples"] and start["fraction"] is not None, (
        "the fim_rate widget shows no `.fim-sample` elements or no measured FIM fraction; it reads:\n"
        + output.inner_text()[:1500]
    )

    # fim_rate 0: no piece is drawn for FIM, so none is transformed and the fraction is 0.
    assert move_slider(page, s, "min") == 0.0, "fim_rate's slider should start at 0"
    at0 = _wait_fim_view(
        page, output,
        lambda v: v["requested"] == 0.0 and v["samples"]
        and all(k == "none" for k in v["samples"]) and v["fraction"] == 0.0 and v["transformed"] == 0,
        "requested fim_rate 0.00, every sample data-fim=none, measured FIM fraction 0.00",
    )
    screenshot(widget_cell(page, ".widget-slider"), "03_fim_rate_0")

    # fim_rate 1: every piece is drawn; each is PSM or SPM unless it is too short to fit
    # once transformed (a piece of a few tokens stays as it was, and the widget says how many).
    assert move_slider(page, s, "max") == 1.0, "fim_rate's slider should end at 1"
    at1 = _wait_fim_view(
        page, output,
        lambda v: v["requested"] == 1.0 and v["fraction"] is not None and v["samples"],
        "requested fim_rate 1.00",
    )
    screenshot(widget_cell(page, ".widget-slider"), "03_fim_rate_1")
    untransformed = [k for k in at1["samples"] if k not in ("psm", "spm")]
    assert set(untransformed) <= {"none"}, at1["samples"]
    assert at1["transformed"] + at1["too_short"] == at1["pieces"], (
        f"at fim_rate 1 every piece must be drawn; the widget reads:\n{at1['text']}"
    )
    assert len(untransformed) <= at1["too_short"], (
        f"at fim_rate 1, {len(untransformed)} shown samples are untransformed but only "
        f"{at1['too_short']} pieces were too short to fit; the widget reads:\n{at1['text']}"
    )
    # The printed fraction is the count it reports, and it follows the slider:
    # 0 at 0, at 1 the most (raising fim_rate transforms a superset of the pieces).
    assert abs(at1["fraction"] - at1["transformed"] / at1["pieces"]) <= 0.005 + 1e-9
    assert at0["fraction"] == 0.0 <= start["fraction"] <= at1["fraction"]


# Distinctive so the test can tell its own prompt from the notebook's default one.
PREFIX = "def area_of_circle(radius):\n    return "
SUFFIX = "\n\nprint(area_of_circle(2.0))\n"

# In the kernel: the infill widget's state (its Textareas' values as synced from the page,
# and its output), then what pressing it again from Python (`box.on_click`, the hook
# mamba_nb.viz.infill provides) renders for those same values. JSON on stdout.
_KERNEL_INFILL_CHECK = """
def _browser_test_check():
    import json
    import ipywidgets.widgets.widget as _w
    boxes = [w for w in list(_w._instances.values()) if "infill-widget" in getattr(w, "_dom_classes", ())]
    box = boxes[-1]
    pre, suf = (c for c in box.children if {"infill-prefix", "infill-suffix"} & set(c._dom_classes))
    out = next(c for c in box.children if "infill-output" in c._dom_classes)
    shown = out.value
    box.on_click(None)
    print(json.dumps({"boxes": len(boxes), "prefix": pre.value, "suffix": suf.value,
                      "shown": shown, "again": out.value}))
_browser_test_check()
del _browser_test_check
"""


def _by_class(page, cls: str):
    loc = page.locator(f".infill-widget .{cls}")
    assert loc.count() == 1, f"expected one `.{cls}` inside `.infill-widget`, found {loc.count()}"
    return loc


def test_infill_widget_in_jupyterlab(page, lab, course):
    path = course(NB05)
    open_notebook(page, lab, path)
    collapse_side_panels(page)
    # Up to the widget: the evaluation cells below it do not touch it (nbmake runs them),
    # and on a busy 2-core machine they would double this test's time.
    run_all(page, path, timeout_s=RUN_ALL_S, through="infill_widget(")

    prefix = _by_class(page, "infill-prefix").locator("textarea")
    suffix = _by_class(page, "infill-suffix").locator("textarea")
    button = _by_class(page, "infill-button")
    assert button.inner_text().strip() == "Infill"
    output = _by_class(page, "infill-output")
    # Scoped to the widget: the notebook also shows a static `.infill-result` above it.
    result = output.locator(".infill-result")
    assert result.count() == 0, "the widget shows a result before its button was pressed"

    # Typed through the page: the text reaches the kernel only via the widget front-end.
    # Tab moves the focus away, which is when a Textarea with continuous_update=False syncs.
    for box, text in ((prefix, PREFIX), (suffix, SUFFIX)):
        box.fill(text)
        box.press("Tab")
    button.click()

    try:
        result.wait_for(state="attached", timeout=WIDGET_UPDATE_S * 1000)
    except Exception as e:
        raise AssertionError(
            f"no `.infill-result` in the widget after pressing Infill; it shows:\n{output.inner_text()[:1500]}"
        ) from e
    assert output.locator(".infill-error").count() == 0, output.inner_text()
    shown_text = result.inner_text()
    assert result.get_attribute("data-clean") in ("true", "false")
    screenshot(widget_cell(page, ".infill-widget"), "05_infill")

    # The kernel holds what was typed (the front-end synced it), the page shows what the
    # kernel rendered, and the callback renders the same infill again for those values.
    check = json.loads(kernel_exec(page, path, _KERNEL_INFILL_CHECK, timeout_s=RUN_ALL_S).strip().splitlines()[-1])
    assert check["boxes"] == 1, f"{check['boxes']} infill widgets in the kernel, expected the notebook's one"
    assert (check["prefix"], check["suffix"]) == (PREFIX, SUFFIX)
    assert check["again"] == check["shown"], "pressing Infill again gave another infill for the same prompt"
    # What the page shows is the middle the kernel rendered (HTML-escaped there).
    assert html.escape(shown_text.strip()) in check["shown"] or not shown_text.strip()

"""The whole course, notebook by notebook, run top to bottom in JupyterLab as a learner runs it.

Each notebook is opened in the real JupyterLab (smoke mode), "Run All Cells" is pressed, and
the page is read back: no cell raised, every picture the notebook promises is an image the
browser loaded (not the text `<Figure size ...>`), its widgets are widgets (not their text
repr), and a full-length screenshot lands in test-output/browser/<notebook>.png for a person
to look at. Notebook 04's live loss plot is watched while it trains: it must redraw with a
later step (two screenshots, `04_live_loss_first.png` and `04_live_loss_last.png`).
"""
from __future__ import annotations

import re
import shutil

import pytest

from .lab_harness import (
    NOTEBOOK_DIR,
    REPO,
    collapse_side_panels,
    full_notebook_screenshot,
    open_notebook,
    run_all,
    screenshot,
    start_run_all,
)
from .test_course_notebooks import RUN_ALL_S

# Images each notebook shows in the page: its picture outputs (tests/test_notebook_pictures.py
# counts those in the saved outputs) plus what its widgets draw in the browser.
EXPECTED_IMAGES = {
    "01_build_lance_dataset.ipynb": 2,
    "02_sampler_windows.ipynb": 3,
    "03_fill_in_the_middle.ipynb": 7,   # five FIM views, and the fim_rate and fim_region_lines widgets
    "04_train_mamba.ipynb": 5,          # schedule, live loss, loss, throughput; the schedule widget's
    "05_infill_code.ipynb": 3,
}
# Widgets each notebook must render as widgets (selectors), and the text a front-end without
# the widget manager would print instead.
EXPECTED_WIDGETS = {
    "01_build_lance_dataset.ipynb": [".widget-textarea"],
    "03_fill_in_the_middle.ipynb": [".widget-slider"],
    "04_train_mamba.ipynb": [".widget-slider"],
    "05_infill_code.ipynb": [".infill-widget"],
}
WIDGET_AS_TEXT = re.compile(r"\b(Float|Int)Slider\(|\binteractive\(children=|\bTextarea\(|\bVBox\(children=")
FIGURE_AS_TEXT = re.compile(r"<Figure size \d+x\d+")

# In the page: record every step the live loss plot is drawn at, as it is drawn.
_WATCH_LIVE_JS = """
() => {
  window.__liveSteps = [];
  const seen = () => {
    for (const f of document.querySelectorAll('figure.live-loss')) {
      const s = parseInt(f.dataset.step);
      const a = window.__liveSteps;
      if (a[a.length - 1] !== s) a.push(s);
    }
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true, attributes: true});
}
"""


def _images(page) -> dict:
    """The images in the notebook's outputs: how many, and how many the browser failed to load."""
    return page.evaluate(
        "() => { const imgs = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) "
        ".jp-OutputArea-output img')];"
        " return {count: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length}; }"
    )


@pytest.mark.parametrize("name", sorted(EXPECTED_IMAGES))
def test_notebook_runs_top_to_bottom_in_jupyterlab(page, lab, course, name):
    path = course(name)
    assert (NOTEBOOK_DIR / name).exists()
    open_notebook(page, lab, path)
    collapse_side_panels(page)
    live = name.startswith("04_")
    if live:  # a finished smoke run would be resumed and return at once: train one for real
        shutil.rmtree(REPO / "runs" / "smoke", ignore_errors=True)
        page.evaluate(_WATCH_LIVE_JS)
    start_run_all(page)
    if live:  # the first drawing of the live plot, while training runs
        first = page.locator("figure.live-loss").first
        first.wait_for(state="visible", timeout=RUN_ALL_S * 1000)
        screenshot(first, "04_live_loss_first")
    run_all(page, path, timeout_s=RUN_ALL_S, start=False)  # raises with the traceback if a cell failed
    page.wait_for_timeout(1000)  # let the last images decode

    shown = "\n".join(page.locator(".jp-Notebook .jp-OutputArea-output").all_inner_texts())
    assert not FIGURE_AS_TEXT.search(shown), f"{name}: a figure is shown as text"
    assert not WIDGET_AS_TEXT.search(shown), f"{name}: a widget is shown as text (no widget front-end?)"
    for selector in EXPECTED_WIDGETS.get(name, []):
        assert page.locator(f".jp-Notebook {selector}").count() >= 1, f"{name}: no rendered {selector}"
    images = _images(page)
    assert images["broken"] == 0, f"{name}: {images['broken']} image(s) did not load"
    assert images["count"] == EXPECTED_IMAGES[name], f"{name}: {images['count']} images in the page"
    if live:
        steps = page.evaluate("() => window.__liveSteps")
        assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] > steps[0], (
            f"the live loss plot did not redraw as training went on; steps drawn: {steps}")
        screenshot(page.locator("figure.live-loss").first, "04_live_loss_last")
    full_notebook_screenshot(page, name.removesuffix(".ipynb"))

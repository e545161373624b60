"""The harness itself, on a scratch notebook: a slider and the output it drives.

These run in seconds and say whether a failure in the course-notebook tests is the
notebook's or the harness's (JupyterLab, Chromium, the widget front-end, the kernel env).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest

from .lab_harness import (
    LabServer,
    assert_widgets_rendered,
    all_output_text,
    collapse_side_panels,
    move_slider,
    open_notebook,
    run_all,
    screenshot,
    slider,
    wait_for_text,
    widget_cell,
)

# The scratch notebook's callback; BROKEN ignores the slider (a callback that is wired
# to nothing), which the harness must catch.
GOOD = "def show(n):\n    print(f'value is {n}')\n"
BROKEN = "def show(n):\n    print(f'value is {5}')\n"


def _scratch(root, name, callback):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell("import os\nimport ipywidgets as widgets\nprint('MAMBA_NB_SMOKE =', os.environ.get('MAMBA_NB_SMOKE'))"),
        nbformat.v4.new_code_cell(
            callback
            + "widgets.interact(show, n=widgets.IntSlider(min=0, max=10, value=5, continuous_update=False));"
        ),
    ]
    nbformat.write(nb, root / name)
    return name


@pytest.fixture
def scratch_good(lab, lab_tree):
    return _scratch(lab_tree, "scratch_good.ipynb", GOOD)


def test_slider_drives_output_and_smoke_env(page, lab, scratch_good):
    open_notebook(page, lab, scratch_good)
    collapse_side_panels(page)
    state = run_all(page, scratch_good, timeout_s=90)
    text = all_output_text(state)
    # The kernel was started by the server we configured: smoke mode reaches it.
    assert "MAMBA_NB_SMOKE = 1" in text

    s = slider(page, "n")
    out = s.locator("xpath=..").locator(".widget-output")
    assert move_slider(page, s, "max") == 10
    wait_for_text(page, out, "t => t.includes('value is 10')")
    assert move_slider(page, s, "min") == 0
    wait_for_text(page, out, "t => t.includes('value is 0')")
    screenshot(widget_cell(page, ".widget-slider"), "scratch_slider")


def test_widget_front_end_renders_a_slider_not_its_repr(page, lab, scratch_good):
    open_notebook(page, lab, scratch_good)
    run_all(page, scratch_good, timeout_s=90)
    assert_widgets_rendered(page)


@pytest.fixture
def lab_without_widget_manager(lab_tree, browser_context):
    """A second server, identical but for JupyterLab's widget manager switched off."""
    state = Path(tempfile.mkdtemp(prefix="mamba-nb-jupyter-"))
    server = LabServer.start(lab_tree, state, disabled_extensions=("@jupyter-widgets/jupyterlab-manager",))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


def test_front_end_check_catches_a_missing_widget_manager(page, lab_without_widget_manager, scratch_good):
    open_notebook(page, lab_without_widget_manager, scratch_good)
    run_all(page, scratch_good, timeout_s=90)
    with pytest.raises(AssertionError, match=r"rendered as text.*IntSlider\("):
        assert_widgets_rendered(page)


def test_harness_catches_a_callback_wired_to_nothing(page, lab, lab_tree):
    name = _scratch(lab_tree, "scratch_broken.ipynb", BROKEN)
    open_notebook(page, lab, name)
    run_all(page, name, timeout_s=90)
    s = slider(page, "n")
    out = s.locator("xpath=..").locator(".widget-output")
    move_slider(page, s, "max")
    with pytest.raises(AssertionError, match="value is 5"):
        wait_for_text(page, out, "t => t.includes('value is 10')", timeout_s=8)

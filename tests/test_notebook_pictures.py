"""Every picture the course promises is a picture: each notebook executed as a learner runs it.

`pytest --nbmake` proves the cells run; it does not look at what they show. Here each
notebook is executed in smoke mode by the same kind of kernel JupyterLab starts (nbclient,
no `%matplotlib` magic anywhere), and its outputs are read back:

- no output shows a figure as text (`<Figure size ...>` with no image beside it);
- each notebook shows the number of pictures it is expected to (PNG outputs, and PNGs
  embedded in HTML such as notebook 03's FIM samples), so a picture that silently stops
  rendering fails here;
- no cell raised.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"

# Pictures each notebook shows in smoke mode: (PNG outputs, PNGs embedded in HTML outputs).
EXPECTED_PICTURES = {
    "01_build_lance_dataset.ipynb": (2, 0),
    "02_sampler_windows.ipynb": (3, 0),
    "03_fill_in_the_middle.ipynb": (0, 5),
    "04_train_mamba.ipynb": (3, 1),  # the live loss plot is HTML (a captioned PNG)
    "05_infill_code.ipynb": (3, 0),
}
FIGURE_AS_TEXT = re.compile(r"<(matplotlib\.figure\.|mamba_nb\.viz\.figure\.Course)?Figure size \d+x\d+")
EMBEDDED_PNG = re.compile(r"<img[^>]+src=\"data:image/png;base64,")


def pictures(nb) -> tuple[int, int, list[str]]:
    """(PNG outputs, PNGs embedded in HTML, outputs that show a figure as text) of an executed notebook."""
    png = embedded = 0
    as_text = []
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "image/png" in data:
                png += 1
            html = data.get("text/html", "")
            embedded += len(EMBEDDED_PNG.findall(html if isinstance(html, str) else "".join(html)))
            text = data.get("text/plain", "") or out.get("text", "")
            text = text if isinstance(text, str) else "".join(text)
            if FIGURE_AS_TEXT.search(text) and "image/png" not in data:
                as_text.append(f"cell {index}: {text[:80]!r}")
    return png, embedded, as_text


@pytest.fixture(scope="module")
def smoke_env():
    old = os.environ.get("MAMBA_NB_SMOKE")
    os.environ["MAMBA_NB_SMOKE"] = "1"  # the kernel inherits it
    yield
    if old is None:
        os.environ.pop("MAMBA_NB_SMOKE")
    else:
        os.environ["MAMBA_NB_SMOKE"] = old


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_PICTURES))
def test_notebook_shows_its_pictures(name, smoke_env):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue")
    png, embedded, as_text = pictures(nb)
    assert not as_text, f"{name} shows figures as text: {as_text}"
    assert (png, embedded) == EXPECTED_PICTURES[name], f"{name}: {png} PNG outputs, {embedded} PNGs in HTML"

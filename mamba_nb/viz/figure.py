"""Figures that show themselves: the one figure class every picture of the course is drawn on.

`figure(figsize)` returns a matplotlib `Figure` made without pyplot (so it works under any
backend, in a training process with no display, and in a test) that also carries a PNG
representation: IPython displays it as a picture wherever it lands — the last line of a
cell, `display(fig)`, a display slot updated in place — whether or not `%matplotlib inline`
ran first. A bare `Figure` would show as the text `<Figure size 700x400 with 1 Axes>`.

Not here: what any picture shows (the other `viz` modules).
"""
from __future__ import annotations

import base64
import io

from matplotlib.figure import Figure

DPI = 100  # pixels per inch of the PNG a notebook shows


class CourseFigure(Figure):
    """A matplotlib `Figure` that IPython shows as a PNG (`_repr_png_`)."""

    def png(self, dpi: int = DPI) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=dpi)
        return buf.getvalue()

    def png_base64(self, dpi: int = DPI) -> str:
        """The PNG as base64 text, for an `<img src="data:image/png;base64,...">` inside HTML."""
        return base64.b64encode(self.png(dpi)).decode()

    def _repr_png_(self) -> bytes:
        return self.png()


def figure(figsize: tuple[float, float]) -> CourseFigure:
    """A new, empty figure of `figsize` inches."""
    return CourseFigure(figsize=figsize)

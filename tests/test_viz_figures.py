"""The course's figures show themselves in IPython, and the pictures added for notebooks 02 and 05."""
from __future__ import annotations

import numpy as np
import pytest

from mamba_nb.sampler import WindowSampler
from mamba_nb.viz.figure import CourseFigure, figure


def test_a_course_figure_is_displayed_as_a_png_by_ipython():
    from IPython.core.formatters import DisplayFormatter

    fig = figure((3, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    data, _ = DisplayFormatter().format(fig)  # a fresh formatter: no `%matplotlib inline` ever ran
    assert data["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert isinstance(fig, CourseFigure)


def test_every_viz_function_draws_on_a_course_figure():
    from mamba_nb.viz.infill import plot_exact_match_vs_tokens, plot_report, plot_suffix_gain_curve
    from mamba_nb.viz.training import plot_loss, plot_schedule, plot_throughput
    from mamba_nb.viz.windows import plot_untrained_pairs

    sampler = WindowSampler(5000, 16, seed=0)
    figures = [plot_loss([]), plot_schedule(1e-3, 5, 0.1, 20), plot_throughput([]),
               plot_exact_match_vs_tokens([]), plot_suffix_gain_curve([]), plot_report({}),
               plot_untrained_pairs(sampler, num_epochs=3)]
    assert all(isinstance(f, CourseFigure) for f in figures)


def test_untrained_pairs_the_grid_keeps_its_gaps_and_ours_closes_them():
    from mamba_nb.viz.windows import untrained_pairs

    sampler = WindowSampler(5000, 16, seed=0)
    ours, grid = untrained_pairs(sampler, num_epochs=40)
    assert (grid == grid[0]).all() and grid[0] >= 5000 // 17 - 1  # one missed pair per window edge, forever
    assert (np.diff(ours) <= 0).all() and ours[-1] < grid[-1]  # ours only shrinks
    assert ours[0] < 2 * 16  # within an epoch only the ends (the offset, the tail) are left out


def test_plot_report_draws_scores_and_gains_with_intervals():
    from mamba_nb.viz.infill import plot_report

    report = {"mode": "spm", "line": {"tasks": 10, "fim": {"exact_match": 0.1, "edit_similarity": 0.4},
                                      "prefix_only": {"exact_match": 0.05, "edit_similarity": 0.3}},
              "suffix_gain": {"held-out lines": {"spm": {"gain": 0.2, "interval": [0.1, 0.3]},
                                                 "psm": {"gain": -0.1, "interval": [-0.2, 0.0]}}}}
    scores, gains = plot_report(report).axes
    heights = [p.get_height() for p in scores.patches]
    assert heights == pytest.approx([0.1, 0.4, 0.05, 0.3])
    assert [p.get_height() for p in gains.patches] == pytest.approx([0.2, -0.1])

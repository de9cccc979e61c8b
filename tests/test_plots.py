"""Figures: what they draw must say what the data say."""

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba

from grokcore.plots import steps_to_generalise


def legend_entries(ax) -> dict:
    """Legend label -> handle."""
    legend = ax.get_legend()
    return {text.get_text(): handle for text, handle in zip(legend.get_texts(), legend.legend_handles)}


def markers_at(ax, y: float) -> list:
    """The scatter collections whose every point sits at height ``y`` (the step budget)."""
    return [c for c in ax.collections if len(c.get_offsets()) and np.allclose(np.asarray(c.get_offsets())[:, 1], y)]


def test_an_operation_that_never_generalised_keeps_its_own_colour_and_legend_entry():
    delays = pd.DataFrame(
        {
            "op": ["a", "a", "b", "b", "c", "c"],
            "train_fraction": [0.5, 0.7] * 3,
            "val_step": [400.0, 200.0, np.nan, np.nan, 800.0, 300.0],
            "budget": [1000] * 6,
        }
    )
    ax = steps_to_generalise(delays, ax=plt.figure().gca())
    legend = legend_entries(ax)
    assert {"a", "b", "c", "not reached (at budget)"} <= set(legend)
    colour = {op: to_rgba(legend[op].get_color()) for op in "abc"}
    assert len(set(colour.values())) == 3
    triangles = markers_at(ax, 1000)
    assert len(triangles) == 1 and len(triangles[0].get_offsets()) == 2  # b's two budget points
    assert tuple(triangles[0].get_edgecolor()[0]) == colour["b"]


def test_a_table_where_nothing_generalised_still_draws_every_operation_without_warnings():
    delays = pd.DataFrame(
        {"op": ["a", "b"], "train_fraction": [0.5, 0.5], "val_step": [np.nan, np.nan], "budget": [1000, 1000]}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = steps_to_generalise(delays, ax=plt.figure().gca())
    legend = legend_entries(ax)
    assert {"a", "b", "not reached (at budget)"} <= set(legend)
    edges = [c.get_edgecolor()[0] for c in ax.collections if len(c.get_offsets())]
    assert np.allclose(edges, [to_rgba(legend[op].get_color()) for op in "ab"])  # each triangle in its op's colour


def test_triangles_of_operations_that_missed_at_the_same_fraction_do_not_hide_each_other():
    delays = pd.DataFrame(
        {
            "op": ["a", "a", "b", "b", "c", "c"],
            "train_fraction": [0.3, 0.5] * 3,
            "val_step": [900.0, 400.0, np.nan, 700.0, np.nan, np.nan],
            "budget": [1000] * 6,
        }
    )
    ax = steps_to_generalise(delays, ax=plt.figure().gca())
    ax.figure.canvas.draw()
    triangles = markers_at(ax, 1000)
    assert len(triangles) == 2  # b's and c's
    on_screen = {tuple(np.round(c.get_offset_transform().transform(c.get_offsets()), 3)[:, 0]) for c in triangles}
    b_x, c_x = sorted(on_screen, key=len)  # b missed at 0.3 only, c at 0.3 and 0.5
    x03 = ax.transData.transform((0.3, 1000))[0]
    assert abs(b_x[0] - c_x[0]) >= 5  # apart on screen at 0.3 (pixels)
    assert all(abs(v - x03) < 20 for v in (b_x[0], c_x[0]))  # and both still beside 0.3
    assert ax.get_ylim()[1] >= 1000  # inside the axes, not clipped off the top


def test_triangles_on_a_categorical_axis():
    delays = pd.DataFrame(
        {"op": ["a", "b"], "optimiser": ["adam", "adam"], "val_step": [np.nan, np.nan], "budget": [1000, 1000]}
    )
    ax = steps_to_generalise(delays, x="optimiser", ax=plt.figure().gca())
    assert sum(len(c.get_offsets()) for c in markers_at(ax, 1000)) == 2  # both misses, drawn at the budget

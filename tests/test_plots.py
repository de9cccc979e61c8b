"""Figures: what they draw must say what the data say."""

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgba

from grokcore.plots import steps_to_generalise


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
    legend = {text.get_text(): handle for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
    assert {"a", "b", "c", "not reached (at budget)"} <= set(legend)
    colour = {op: to_rgba(legend[op].get_color()) for op in "abc"}
    assert len(set(colour.values())) == 3
    triangles = [c for c in ax.collections if len(c.get_offsets()) and np.allclose(np.asarray(c.get_offsets())[:, 1], 1000)]
    assert len(triangles) == 1 and len(triangles[0].get_offsets()) == 2  # b's two budget points
    assert tuple(triangles[0].get_edgecolor()[0]) == colour["b"]


def test_a_table_where_nothing_generalised_still_draws_every_operation_without_warnings():
    delays = pd.DataFrame(
        {"op": ["a", "b"], "train_fraction": [0.5, 0.5], "val_step": [np.nan, np.nan], "budget": [1000, 1000]}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = steps_to_generalise(delays, ax=plt.figure().gca())
    legend = {text.get_text(): handle for text, handle in zip(ax.get_legend().get_texts(), ax.get_legend().legend_handles)}
    assert {"a", "b", "not reached (at budget)"} <= set(legend)
    edges = [c.get_edgecolor()[0] for c in ax.collections if len(c.get_offsets())]
    assert np.allclose(edges, [to_rgba(legend[op].get_color()) for op in "ab"])  # each triangle in its op's colour

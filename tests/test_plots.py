"""Figures: what they draw must say what the data say."""

import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from grokcore.plots import (
    LEARNING_PHASE_COLORS,
    SPLIT_COLORS,
    curves,
    fourier_spectrum,
    grokking_figure,
    held,
    phase_diagram,
    phase_spans,
    progress_measures_figure,
    steps_to_generalise,
)


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


def grokking_history(reached: dict[int, int | None], steps=(1, 100, 200, 300), stopped: dict[int, int] | None = None, **columns):
    """Members whose validation accuracy jumps from 0.1 to 1.0 at ``reached[m]`` (None: never);
    a member in ``stopped`` has no rows after that step, as stop_at leaves it."""
    rows = []
    for m, at in reached.items():
        for s in steps:
            if stopped and m in stopped and s > stopped[m]:
                break
            val = 1.0 if at is not None and s >= at else 0.1
            rows.append({"member": m, "seed": m, "step": s, "train_acc": 1.0, "val_acc": val,
                         "train_loss": 0.01, "val_loss": 1.0 - 0.9 * val, "weight_norm": 10.0 + m, **{k: v[m] for k, v in columns.items()}})
    return pd.DataFrame(rows)


def test_a_member_that_stopped_is_held_at_its_last_evaluation():
    h = grokking_history({0: 100, 1: None}, stopped={0: 100})
    assert h.query("member == 0")["step"].max() == 100
    full = held(h)
    member0 = full.query("member == 0").set_index("step")
    assert list(member0.index) == [1, 100, 200, 300]
    assert member0.loc[300, "val_acc"] == 1.0 and member0.loc[300, "weight_norm"] == 10.0
    # So the mean at step 300 is (1.0 + 0.1) / 2, not member 1's 0.1 alone.
    ax = curves(h, ax=plt.figure().gca())
    val = next(line for line in ax.get_lines() if line.get_color() == SPLIT_COLORS["val"] and len(line.get_xdata()) == 4)
    assert dict(zip(val.get_xdata(), val.get_ydata()))[300] == pytest.approx(0.55)


@pytest.mark.parametrize("reached, line, label", [
    ({0: 200, 1: None, 2: None}, None, None),          # the median member never got there
    ({0: 200, 1: 300, 2: None}, 300, "(2 of 3)"),     # median of 200, 300 and never
    ({0: 200, 1: 300, 2: 100}, 200, ""),
])
def test_the_median_step_counts_members_that_never_got_there(reached, line, label):
    ax = curves(grokking_history(reached), ax=plt.figure().gca())
    red = [l for l in ax.get_lines() if l.get_linestyle() == "--" and to_rgba(l.get_color()) == to_rgba(SPLIT_COLORS["val"])]
    if line is None:
        assert red == []
        return
    assert len(red) == 1 and red[0].get_xdata()[0] == line
    text = next(t.get_text() for t in ax.texts if t.get_text().startswith("val"))
    assert text.endswith(f"median step {line}{' ' + label if label else ''}")


def test_one_members_step_is_not_called_a_median():
    ax = curves(grokking_history({0: 200}), ax=plt.figure().gca())
    assert next(t.get_text() for t in ax.texts if t.get_text().startswith("val")) == "val 99%\nstep 200"


def test_a_band_over_a_sweep_is_over_members_and_over_seeds_only_for_seeds():
    seeds = grokking_figure(grokking_history({0: 100, 1: 200}))
    assert "band over 2 seeds" in seeds.get_suptitle()
    swept = grokking_figure(grokking_history({0: 100, 1: 200}, lr={0: 1e-3, 1: 3e-3}))
    assert "band over 2 members" in swept.get_suptitle()
    splits = grokking_figure(grokking_history({0: 100, 1: 200}, split_seed={0: 5, 1: 6}))
    assert "band over 2 seeds" in splits.get_suptitle()  # a split's seed is a seed too


def test_steps_to_generalise_names_its_threshold():
    delays = pd.DataFrame({"op": ["a"], "train_fraction": [0.5], "val_step": [100.0], "budget": [1000]})
    assert steps_to_generalise(delays, ax=plt.figure().gca(), threshold=0.9).get_ylabel() == "steps to 90% validation accuracy"


def test_a_table_without_the_columns_a_figure_reads_is_refused_by_name():
    """grokking_delays' own table has no 'op' (the data-fraction notebook adds it); the figure
    says so before drawing, rather than failing inside pandas with a bare KeyError."""
    delays = pd.DataFrame({"member": [0], "train_fraction": [0.5], "val_step": [100.0], "budget": [1000]})
    with pytest.raises(ValueError, match=r"^delays \(for x = 'train_fraction', hue = 'op'\) has no column 'op': its columns are member, "):
        steps_to_generalise(delays, ax=plt.figure().gca())
    steps_to_generalise(delays.assign(op="x+y"), ax=plt.figure().gca())  # with it, it draws
    with pytest.raises(ValueError, match=r"^history \(for quantity = 'accuracy'\) has no column 'train_accuracy', 'val_accuracy'"):
        curves(grokking_history({0: 100}), "accuracy", ax=plt.figure().gca())
    with pytest.raises(ValueError, match=r"^phases \(for x = 'lr', y = 'weight_decay'\) has no column 'weight_decay'"):
        phase_diagram(pd.DataFrame({"lr": [1e-3], "phase": ["grokking"]}), ax=plt.figure().gca())
    plt.close("all")


def test_the_progress_figure_refuses_several_members():
    with pytest.raises(ValueError, match=r"^history has members \[0, 1\]"):
        progress_measures_figure(grokking_history({0: 100, 1: 200}), pd.DataFrame(), {})


def test_grokking_figure_draws_min_max_bands_on_log_axes():
    """Steps on log axes (and the loss too); the band spans the members' least and greatest
    value at each step: weight norms 10, 11 and 12 give a band from 10 to 12 around 11."""
    fig = grokking_figure(grokking_history({0: 100, 1: None, 2: 300}))
    acc, loss, norm = fig.axes
    assert [ax.get_xscale() for ax in (acc, loss, norm)] == ["log"] * 3
    assert loss.get_yscale() == "log" and acc.get_yscale() == "linear"
    (band,) = norm.collections
    ys = np.concatenate([path.vertices[:, 1] for path in band.get_paths()])
    assert ys.min() == pytest.approx(10.0) and ys.max() == pytest.approx(12.0)
    assert norm.get_lines()[0].get_ydata() == pytest.approx([11.0] * 4)
    # Validation accuracy at step 300: members at 1.0, 0.1 and 1.0, so the band is 0.1 to 1.0.
    val_band = next(c for c in acc.collections if to_rgba(c.get_facecolor()[0])[:3] == to_rgba(SPLIT_COLORS["val"])[:3])
    points = np.concatenate([path.vertices for path in val_band.get_paths()])
    assert sorted(set(points[points[:, 0] == 300][:, 1].round(6))) == [0.1, 1.0]


def test_each_split_s_threshold_line_sits_at_its_own_first_step():
    h = grokking_history({0: 200})
    h["train_acc"] = np.where(h["step"] >= 100, 1.0, 0.5)
    ax = curves(h, ax=plt.figure().gca())
    dashed = sorted((line.get_xdata()[0], to_rgba(line.get_color())) for line in ax.lines if line.get_linestyle() == "--")
    assert dashed == [(100, to_rgba(SPLIT_COLORS["train"])), (200, to_rgba(SPLIT_COLORS["val"]))]


def test_phase_diagram_shows_the_most_common_phase_of_each_point():
    """2 learning rates x 3 weight decays x 3 seeds; each cell's colour is its majority phase,
    rows in increasing weight decay from the bottom, columns in increasing learning rate."""
    majority = {(1e-3, 0.0): "memorization", (1e-3, 1.0): "grokking", (1e-3, 5.0): "confusion",
                (1e-2, 0.0): "comprehension", (1e-2, 1.0): "comprehension", (1e-2, 5.0): "grokking"}
    rows = []
    for (lr, wd), phase in majority.items():
        other = "confusion" if phase != "confusion" else "memorization"
        rows += [{"lr": lr, "weight_decay": wd, "seed": s, "phase": p} for s, p in enumerate([phase, other, phase])]
    ax = phase_diagram(pd.DataFrame(rows).sample(frac=1, random_state=0), ax=plt.figure().gca())
    codes = ax.get_images()[0].get_array()
    names = list(LEARNING_PHASE_COLORS)
    for i, wd in enumerate([0.0, 1.0, 5.0]):
        for j, lr in enumerate([1e-3, 1e-2]):
            assert names[int(codes[i, j])] == majority[(lr, wd)], (lr, wd)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "5"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1.0e-03", "1.0e-02"]
    assert ax.get_ylim()[0] < ax.get_ylim()[1]  # weight decay grows upwards


def test_phase_spans_cover_each_located_phase_and_skip_the_rest():
    ax = plt.figure().gca()
    phase_spans(ax, {"memorisation_end": 300.0, "circuit_formation_end": 600.0, "cleanup_end": float("nan")}, label=True)
    # In data x: a Polygon (matplotlib 3.8) or a Rectangle (3.9 on) in its own coordinates.
    xs = [patch.get_patch_transform().transform(patch.get_path().vertices)[:, 0] for patch in ax.patches]
    spans = [(patch.get_label(), min(x), max(x)) for patch, x in zip(ax.patches, xs)]
    assert spans == [("memorisation", 0.0, 300.0), ("circuit formation", 300.0, 600.0)]  # clean-up never ended


def test_fourier_spectrum_marks_each_key_frequency_at_its_bars():
    norms = {"W_E": np.arange(6.0), "W_L": np.ones(6), "W_U": np.ones(6)}
    ax = fourier_spectrum(norms, key_freqs=[2, 5], ax=plt.figure().gca())
    centre = [bar.get_x() + bar.get_width() / 2 for bar in ax.patches]  # 6 bars of each label in turn
    marks = sorted(line.get_xdata()[0] for line in ax.get_lines())
    assert marks == pytest.approx([np.mean(centre[k::6]) for k in (2, 5)])  # the middle of frequency k's bars
    assert ax.get_xticks() == pytest.approx([np.mean(centre[k::6]) for k in range(6)])  # and so is its tick
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in range(6)]
    assert [bar.get_height() for bar in ax.patches[:6]] == list(range(6))  # the first label's norms, in order
    # Nanda et al.'s p = 113: 57 frequencies, labelled every fifth.
    many = fourier_spectrum({"W_E": np.ones(57)}, key_freqs=[], ax=plt.figure().gca())
    assert [t.get_text() for t in many.get_xticklabels()] == [str(k) for k in range(0, 57, 5)]

"""The book's figure kinds, one function each, in one seaborn style.

Curves of a stochastic quantity show the mean over members with a min-max band when a run
has several seeds; grokking curves put steps on a log axis.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import offset_copy

from grokcore.measures.curves import first_step, member_table, one_member

SPLIT_COLORS = {"train": "#1f77b4", "val": "#d62728"}
BAND = ("pi", 100)  # min-max over seeds


def style() -> None:
    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 110, "savefig.bbox": "tight", "axes.titleweight": "bold"})


style()


def held(history: pd.DataFrame) -> pd.DataFrame:
    """``history`` with each member that stopped early (``stop_at``) held at its last
    evaluation until the run's last one: its weights are frozen, and a mean over only the
    members still training would jump when one stops."""
    steps = np.sort(history["step"].unique())
    tails = []
    for _, rows in history.groupby("member"):
        last = rows["step"].idxmax()
        later = steps[steps > rows.loc[last, "step"]]
        if len(later):
            tails.append(rows.loc[[last] * len(later)].assign(step=later))  # keeps the columns' types
    return pd.concat([history, *tails], ignore_index=True) if tails else history


def _require(frame: pd.DataFrame, columns: list[str], name: str) -> None:
    """Refuse a table without the columns a figure reads, before any drawing, naming them."""
    missing = [c for c in dict.fromkeys(columns) if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} has no column {', '.join(map(repr, missing))}: its columns are {', '.join(map(str, frame.columns))}")


def _band_name(history: pd.DataFrame) -> str:
    """What a band spans: "seeds" where the members differ only in their seeds (and splits)."""
    members = member_table(history)
    swept = [c for c in members.columns if c not in ("seed", "split_seed") and members[c].nunique() > 1]
    return "members" if swept or "seed" not in members else "seeds"


def _long(history: pd.DataFrame, quantity: str) -> pd.DataFrame:
    cols = {f"train_{quantity}": "train", f"val_{quantity}": "val"}
    frame = held(history)[lambda h: h["step"] >= 1].melt(
        id_vars=["member", "step"], value_vars=list(cols), var_name="split", value_name=quantity
    )
    frame["split"] = frame["split"].map(cols)
    return frame


def curves(history: pd.DataFrame, quantity: str = "acc", ax=None, threshold: float | None = 0.99):
    """Train and validation ``acc`` or ``loss`` against step (log axis).

    For accuracy, dashed verticals mark the median step where each split first reaches
    ``threshold``, a member that never does counting as never (no line where that is most of
    them; the label says how many got there when some did not).
    """
    _require(history, ["member", "step", f"train_{quantity}", f"val_{quantity}"], f"history (for quantity = {quantity!r})")
    ax = ax or plt.gca()
    sns.lineplot(
        data=_long(history, quantity), x="step", y=quantity, hue="split", palette=SPLIT_COLORS,
        errorbar=BAND if history["member"].nunique() > 1 else None, ax=ax,
    )
    ax.set_xscale("log")
    if quantity == "loss":
        ax.set_yscale("log")
    if quantity == "acc" and threshold is not None:
        ax.axhline(threshold, color="grey", lw=0.8, ls=":")
        for split, color in SPLIT_COLORS.items():
            steps = first_step(history, f"{split}_acc", threshold)
            step = steps.fillna(np.inf).median()
            if np.isfinite(step):
                reached = "" if steps.notna().all() else f" ({steps.notna().sum()} of {len(steps)})"
                median = "median " if len(steps) > 1 else ""  # a step that no member may have hit
                ax.axvline(step, color=color, lw=1.2, ls="--")
                ax.annotate(f"{split} {threshold:.0%}\n{median}step {step:,.0f}{reached}", (step, 0.5), xytext=(4, 0),
                            textcoords="offset points", color=color, fontsize=8, va="center")
    ax.set_ylabel({"acc": "accuracy", "loss": "loss"}.get(quantity, quantity))
    ax.legend(title=None, loc="best")
    return ax


def weight_norm(history: pd.DataFrame, ax=None):
    """Total L2 norm of the weights against step (log axis)."""
    _require(history, ["member", "step", "weight_norm"], "history")
    ax = ax or plt.gca()
    sns.lineplot(data=held(history)[lambda h: h["step"] >= 1], x="step", y="weight_norm", color="k",
                 errorbar=BAND if history["member"].nunique() > 1 else None, ax=ax)
    ax.set_xscale("log")
    ax.set_ylabel("weight norm")
    return ax


def grokking_figure(history: pd.DataFrame, title: str = "", threshold: float = 0.99):
    """Accuracy, loss and weight norm side by side: the standard grokking picture."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    curves(history, "acc", axes[0], threshold)
    curves(history, "loss", axes[1], None)
    weight_norm(history, axes[2])
    n = history["member"].nunique()
    fig.suptitle(title + (f"  (mean and min-max band over {n} {_band_name(history)})" if n > 1 else ""), fontweight="bold")
    fig.tight_layout()
    return fig


def steps_to_generalise(delays: pd.DataFrame, x: str = "train_fraction", hue: str = "op", ax=None, threshold: float = 0.99):
    """Steps to the validation ``threshold`` (that of the ``delays``) against ``x``, one line per ``hue``.

    Members that never got there are drawn as open triangles at their step budget, so a
    missing point is never mistaken for a fast one.
    """
    _require(delays, [x, hue, "val_step", "budget"], f"delays (for x = {x!r}, hue = {hue!r})")
    ax = ax or plt.gca()
    # Colours from the full table: a value whose members all missed keeps its own colour for
    # its triangles, and its legend entry.
    order = list(delays[hue].unique())
    palette = dict(zip(order, sns.color_palette(n_colors=len(order))))
    done = delays[delays["val_step"].notna()]
    if len(done):
        sns.lineplot(data=done, x=x, y="val_step", hue=hue, hue_order=order, palette=palette, marker="o", errorbar=BAND, ax=ax)
    else:  # nothing generalised: keep a legend entry per value for the triangles' colours
        for key in order:
            ax.plot([], [], color=palette[key], marker="o", label=key)
    missed = delays[delays["val_step"].isna()]
    # Several values that missed at one x share a budget: shift each value's triangles sideways
    # by a triangle's width (in points, so on any axis scale) so that none hides another.
    shared = len(missed) and missed.groupby(x, observed=True)[hue].nunique().max() > 1
    for key, group in missed.groupby(hue):
        dots = ax.scatter(group[x], group["budget"], marker="^", facecolors="none", edgecolors=palette[key], s=60, zorder=3)
        if shared:  # shifted after adding, so that the axis limits still take in the budget
            points = (order.index(key) - (len(order) - 1) / 2) * 7
            dots.set_offset_transform(offset_copy(ax.transData, fig=ax.figure, x=points, units="points"))
    if len(missed):
        ax.scatter([], [], marker="^", facecolors="none", edgecolors="grey", label="not reached (at budget)")
    ax.set_yscale("log")
    ax.set_ylabel(f"steps to {threshold:.0%} validation accuracy")
    ax.legend(title=None, fontsize=8)
    return ax


PHASE_COLORS = ("#fde0c5", "#d9ecd0", "#d6e4f0")
PHASE_NAMES = ("memorisation", "circuit formation", "clean-up")


def phase_spans(ax, phases: dict[str, float], label: bool = False) -> None:
    """Shade Nanda et al.'s three phases (from :func:`grokcore.measures.fourier.phases`)."""
    edges = [0.0, phases["memorisation_end"], phases["circuit_formation_end"], phases["cleanup_end"]]
    for (lo, hi), color, name in zip(zip(edges, edges[1:]), PHASE_COLORS, PHASE_NAMES):
        if np.isfinite(lo) and np.isfinite(hi):
            ax.axvspan(lo, hi, color=color, alpha=0.8, lw=0, label=name if label else None, zorder=0)


def progress_measures_figure(history: pd.DataFrame, measures: pd.DataFrame, phases: dict[str, float]):
    """Nanda et al.'s Figure 7 layout: losses, excluded/restricted loss, Gini, weight norm, of
    the one member whose ``history`` and ``measures`` are given."""
    one_member(history)
    h = history
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    (loss, acc, ex), (gin, wn, rest) = axes
    for ax in axes.flat:
        phase_spans(ax, phases, label=ax is loss)
        ax.xaxis.set_major_locator(MaxNLocator(5))  # tick labels like 40000 collide at more
    loss.plot(h["step"], h["train_loss"], color=SPLIT_COLORS["train"], label="train")
    loss.plot(h["step"], h["val_loss"], color=SPLIT_COLORS["val"], label="validation")
    loss.set(yscale="log", title="loss", xlabel="step")
    loss.legend(fontsize=8)
    acc.plot(h["step"], h["train_acc"], color=SPLIT_COLORS["train"], label="train")
    acc.plot(h["step"], h["val_acc"], color=SPLIT_COLORS["val"], label="validation")
    acc.set(title="accuracy", xlabel="step")
    acc.legend(fontsize=8)
    ex.plot(measures["step"], measures["excluded_loss"], "o-", ms=3, color="#8c564b", label="excluded (train)")
    ex.plot(h["step"], h["train_loss"], color=SPLIT_COLORS["train"], alpha=0.4, label="train")
    ex.set(yscale="log", title="excluded loss", xlabel="step")
    ex.legend(fontsize=8)
    rest.plot(measures["step"], measures["restricted_loss"], "o-", ms=3, color="#2ca02c", label="restricted (all pairs)")
    rest.plot(h["step"], h["val_loss"], color=SPLIT_COLORS["val"], alpha=0.4, label="validation")
    rest.set(yscale="log", title="restricted loss", xlabel="step")
    rest.legend(fontsize=8)
    gin.plot(measures["step"], measures["gini_embedding"], "o-", ms=3, label="$W_E$")
    gin.plot(measures["step"], measures["gini_neuron_logit"], "o-", ms=3, label="$W_L$")
    gin.set(title="Gini of Fourier norms", xlabel="step")
    gin.legend(fontsize=8)
    wn.plot(measures["step"], measures["sum_sq_weights"], "o-", ms=3, color="k")
    wn.set(title="sum of squared weights", xlabel="step")
    fig.tight_layout()
    return fig


def fourier_spectrum(norms: dict[str, np.ndarray], key_freqs: list[int], ax=None):
    """Bars of Fourier norms per frequency (index 0 is the constant), one group per label."""
    ax = ax or plt.gca()
    labels = list(norms)
    width = 0.8 / len(labels)
    middle = 0.4 - width / 2  # of a frequency's group of bars, from its first bar's centre
    for i, label in enumerate(labels):
        values = np.asarray(norms[label])
        ax.bar(np.arange(len(values)) + i * width, values, width=width, label=label)
    n = max(len(v) for v in norms.values())
    step = next(s for s in (1, 2, 5, 10, 20, 50, 100, 10**9) if n / s <= 15)  # at most 15 labels
    ax.set_xticks(np.arange(0, n, step) + middle, range(0, n, step))
    for k in key_freqs:
        ax.axvline(k + middle, color="grey", lw=0.6, ls=":", zorder=0)
    ax.set(xlabel="frequency k (0: constant)", ylabel="norm")
    ax.legend(fontsize=8)
    return ax


LEARNING_PHASE_COLORS = {"comprehension": "#2ca02c", "grokking": "#ff7f0e", "memorization": "#d62728", "confusion": "#7f7f7f"}


def phase_diagram(phases: pd.DataFrame, x: str = "lr", y: str = "weight_decay", ax=None):
    """Liu et al.'s phase diagram: the most common phase over seeds at each (x, y) point."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    _require(phases, [x, y, "phase"], f"phases (for x = {x!r}, y = {y!r})")
    ax = ax or plt.gca()
    names = list(LEARNING_PHASE_COLORS)
    mode = phases.groupby([y, x])["phase"].agg(lambda s: s.value_counts().index[0]).unstack(x)
    codes = mode.apply(lambda col: col.map(names.index)).to_numpy(dtype=float)
    ax.imshow(codes, origin="lower", aspect="auto", cmap=ListedColormap(list(LEARNING_PHASE_COLORS.values())),
              vmin=-0.5, vmax=len(names) - 0.5, interpolation="nearest")
    ax.set_xticks(range(len(mode.columns)), [f"{v:.1e}" for v in mode.columns], rotation=45, fontsize=8)
    ax.set_yticks(range(len(mode.index)), [f"{v:.3g}" for v in mode.index], fontsize=8)
    ax.set(xlabel=x, ylabel=y)
    ax.grid(False)
    present = [n for n in names if n in set(phases["phase"])]
    ax.legend(handles=[Patch(color=LEARNING_PHASE_COLORS[n], label=n) for n in present], fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1))
    return ax

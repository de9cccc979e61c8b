"""Liu et al. 2022's measures (arXiv 2205.10343): representation quality and learning phases."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from grokcore.measures.curves import first_step, member_table

PHASES = ("comprehension", "grokking", "memorization", "confusion")


def parallelograms(p: int) -> list[tuple[int, int, int, int]]:
    """Every (i, j, m, n) with i < j <= m < n and i + n = j + m: the four corners of a
    parallelogram E_i + E_n = E_j + E_m that a perfect (linear) representation satisfies."""
    return [(i, j, m, n) for i, j, m, n in itertools.combinations_with_replacement(range(p), 4)
            if i < j <= m < n and i + n == j + m]


def rqi(embedding: Tensor, delta: float = 0.01) -> float:
    """Representation Quality Index: the fraction of parallelograms the embedding satisfies.

    Each dimension of the embedding (p, d) is first standardised (zero mean, unit sample
    standard deviation), as in their code (toy/train_add.py); a parallelogram counts when the
    mean square of E_i + E_n - E_j - E_m is below ``delta`` (Liu et al., eqs. 1-3, appendix E;
    delta = 0.01 as in their code). A dimension that does not vary makes every gap NaN, and
    the RQI 0, there as here.
    """
    if embedding.dim() != 2 or len(embedding) < 3:
        raise ValueError(f"embedding of shape {tuple(embedding.shape)} is not allowed: must be (tokens, dims) with at least 3 tokens")
    e = embedding.detach().double()
    e = (e - e.mean(0)) / e.std(0)
    quads = torch.tensor(parallelograms(len(e)))
    i, j, m, n = quads.unbind(1)
    gap = (e[i] + e[n] - e[j] - e[m]).pow(2).mean(1)
    return float((gap < delta).double().mean())


def classify_phases(history: pd.DataFrame, threshold: float = 0.9, lag: float = 1000) -> pd.DataFrame:
    """Each member's phase by Liu et al.'s criteria (appendix A, Table 1).

    Within the run's budget: *comprehension* if train and validation accuracy both reach
    ``threshold`` and validation gets there at most ``lag`` steps after training (or before
    it), *grokking* if validation gets there more than ``lag`` steps after training,
    *memorization* if only training does, *confusion* if training never does, whatever
    validation does. The paper's table leaves a delay of exactly ``lag`` open; we count it as
    comprehension, as the authors' code (``toy/Figure5.ipynb``) ends up doing: such a delay
    passes neither of its two strict tests (below, above the threshold) and so takes the first
    phase's index, comprehension (a comment in another of its notebooks reads the rule the
    other way).

    An accuracy first seen at or above ``threshold`` at one evaluation crossed it at some step
    after the member's evaluation before (steps are whole numbers). ``resolved`` says whether
    the phase is the same wherever in those gaps the two crossings fell; where a gap is as long
    as ``lag`` or longer, as late in a run evaluated at log-spaced steps alone, the evaluations
    are too sparse for the rule and a warning says so.
    """
    train = first_step(history, "train_acc", threshold)
    val = first_step(history, "val_acc", threshold)
    phase = pd.Series("confusion", index=train.index)
    phase[train.notna() & val.isna()] = "memorization"
    both = train.notna() & val.notna()
    delay = val - train
    phase[both & (delay <= lag)] = "comprehension"
    phase[both & (delay > lag)] = "grokking"

    train_slack, val_slack = _slack(history, "train_acc", train), _slack(history, "val_acc", val)
    resolved = ~both | ((delay - val_slack > lag) == (delay + train_slack > lag))
    gaps = np.maximum(train_slack, val_slack) + 1
    coarse = ~resolved & (gaps >= lag)
    if coarse.any():
        warnings.warn(
            f"{int(coarse.sum())} member(s) reached accuracy {threshold} where evaluations lie as far apart as the lag "
            f"({lag:g} steps) or further (up to {gaps[coarse].max():.0f}): whether they grokked is not resolved. "
            "Evaluate more often (RunConfig.eval_every).",
            stacklevel=2,
        )

    out = member_table(history)
    out["train_step"], out["val_step"], out["phase"], out["resolved"] = train, val, phase, resolved
    return out.reset_index()


def phase_agreement(phases: pd.DataFrame, by: list[str]) -> float:
    """The share of pairs of members alike in the columns ``by`` that end in the same phase:
    1 where those columns decide a member's phase, lower the more its other settings do.
    ``phases`` is :func:`classify_phases`'s table. Pairs rather than majorities, so that a
    group split evenly between two phases needs no tie broken."""
    if isinstance(by, str):
        raise TypeError(f"by = {by!r} is not allowed: must be a list of column names, e.g. [{by!r}]")
    by = list(by)
    missing = [c for c in [*by, "phase"] if c not in phases.columns]
    if missing:
        raise ValueError(f"by = {by} is not allowed: the table has no column {missing[0]!r} (it has {list(phases.columns)})")
    blank = [c for c in [*by, "phase"] if phases[c].isna().any()]
    if blank:  # groupby drops missing keys: such members would vanish from some counts and not others
        raise ValueError(f"phases[{blank[0]!r}] has missing values: every member needs a phase and a value in each of {by}")

    def pairs(counts: pd.Series) -> int:
        return int((counts * (counts - 1) // 2).sum())

    total = pairs(phases.groupby(by).size())
    if total == 0:
        raise ValueError(f"by = {by} is not allowed: no two members are alike in it, so there are no pairs to compare")
    return pairs(phases.groupby([*by, "phase"]).size()) / total


def _slack(history: pd.DataFrame, column: str, first: pd.Series) -> pd.Series:
    """Per member, how many steps before its ``first`` step the crossing of ``column`` could
    have been: those after the member's own evaluation of it before (a row where ``column`` is
    missing did not evaluate it). At a member's first evaluation, none, as if training started
    there (not so in a history cut at the front)."""
    reached = history["member"].map(first)
    evaluated = history[column].notna() & (history["step"] < reached)
    before = history.loc[evaluated].groupby("member")["step"].max()
    return first - before.reindex(first.index).fillna(first - 1) - 1

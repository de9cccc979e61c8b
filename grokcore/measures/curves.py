"""Measures read off a run's history: when a curve first crosses a threshold."""

from __future__ import annotations

import numpy as np
import pandas as pd

from grokcore.config import SWEEPABLE

#: Columns that identify a member in a history (the swept hyper-parameters).
MEMBER_COLUMNS = ("member", *SWEEPABLE)


def member_table(history: pd.DataFrame) -> pd.DataFrame:
    """One row per member (indexed by member) with the columns that identify it: its seeds and
    swept hyper-parameters, those the history has."""
    keys = [c for c in MEMBER_COLUMNS[1:] if c in history.columns]
    if keys:
        return history.groupby("member")[keys].first()
    return pd.DataFrame(index=pd.Index(sorted(history["member"].unique()), name="member"))


def first_step(history: pd.DataFrame, column: str, threshold: float = 0.99) -> pd.Series:
    """Per member, the first evaluated step where ``column >= threshold`` (NaN if never).

    Compared in float32: a history that grokcore wrote before it stored accuracies in
    float64 (2026-12-05) holds 9 of 10 as 0.8999999762, which must still count as 0.9. The
    trainer's ``stop_at`` compares the float64 fraction; the two disagree only where a k / n
    below the threshold passes for it in float32, which takes evaluation sets of about 5e5
    examples for 0.99 and 2e6 for 0.9."""
    hit = history[history[column].to_numpy(np.float32) >= np.float32(threshold)]
    steps = hit.groupby("member")["step"].min()
    return steps.reindex(sorted(history["member"].unique()))


def one_member(history: pd.DataFrame) -> None:
    """Refuse a history of several members where a measure reads one member's curves (a
    history without a member column is one member's)."""
    if "member" not in history:
        return
    members = sorted(int(m) for m in history["member"].unique())
    if len(members) != 1:
        raise ValueError(f"history has members {members}: pass one member's rows, e.g. history.query('member == 0')")


def grokking_delays(history: pd.DataFrame, threshold: float = 0.99) -> pd.DataFrame:
    """One row per member: the steps where train and validation accuracy reach ``threshold``.

    ``delay`` is val_step / train_step (how many times later validation gets there; a
    train_step of 0, a training set fitted before the first step, counts as 1);
    ``budget`` is the last step the member was trained for, so a NaN val_step means
    "not reached within ``budget`` steps".
    """
    out = member_table(history)
    out["train_step"] = first_step(history, "train_acc", threshold)
    out["val_step"] = first_step(history, "val_acc", threshold)
    out["delay"] = out["val_step"] / out["train_step"].clip(lower=1)
    out["budget"] = history.groupby("member")["step"].max()
    return out.reset_index()


def loss_spikes(history: pd.DataFrame, column: str = "train_loss", factor: float = 100.0, floor: float = 1e-5) -> pd.DataFrame:
    """Training-loss spikes, such as end Thilak et al.'s slingshot cycles: ``column`` rising from
    below ``floor`` to above ``factor`` times it, suddenly (between two evaluations) or over
    many evaluations. One row per spike, at the evaluation that passes ``factor * floor``; the
    next spike needs the loss back below ``floor`` first. Two fixed levels rather than a ratio
    between evaluations, since a fitted network's loss wanders over decades near zero (down to
    exactly 0 in float32) without any spike. A NaN loss is neither below nor above a level: it
    is passed over (a loss that goes from tiny to NaN is no spike here)."""
    rows = []
    for member, h in history.sort_values("step").groupby("member"):
        low = False  # below the floor since the last spike
        for step, loss in zip(h["step"], h[column]):
            if loss < floor:
                low = True
            elif low and loss > factor * floor:
                rows.append({"member": member, "step": int(step)})
                low = False
    return pd.DataFrame(rows, columns=["member", "step"])

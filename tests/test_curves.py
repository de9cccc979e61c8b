"""Measures read off a history (grokcore.measures.curves), on histories written by hand."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd

from grokcore.measures import grokking_delays, loss_spikes


def history(rows: dict[int, list[tuple]]) -> pd.DataFrame:
    """{member: [(step, train_acc, val_acc, train_loss), ...]} as a history frame."""
    return pd.DataFrame(
        [dict(member=m, seed=m, step=s, train_acc=a, val_acc=v, train_loss=loss) for m, r in rows.items() for s, a, v, loss in r]
    )


def test_grokking_delays_read_the_first_crossings():
    h = history(
        {
            0: [(0, 0.1, 0.0, 2.0), (100, 0.995, 0.2, 0.1), (200, 1.0, 0.5, 0.01), (900, 1.0, 0.99, 0.0)],
            1: [(0, 0.1, 0.0, 2.0), (100, 0.5, 0.2, 1.0), (300, 0.99, 0.98, 0.1), (500, 1.0, 0.97, 0.1)],
            2: [(0, 1.0, 0.5, 0.0), (50, 1.0, 1.0, 0.0)],  # fits the training set before any step
        }
    )
    delays = grokking_delays(h).set_index("member")
    assert delays.loc[0, ["train_step", "val_step", "delay", "budget"]].tolist() == [100, 900, 9.0, 900]
    assert delays.loc[1, "train_step"] == 300 and math.isnan(delays.loc[1, "val_step"])  # 0.98 < 0.99
    assert delays.loc[1, "budget"] == 500
    assert delays.loc[1, "seed"] == 1
    assert delays.loc[2, ["train_step", "val_step", "delay"]].tolist() == [0, 50, 50.0]  # 50 / max(0, 1): finite
    # The first crossing is the earliest step, whatever the rows' order.
    assert grokking_delays(h.sample(frac=1, random_state=0)).equals(grokking_delays(h))


def test_loss_spikes_are_rises_from_a_tiny_loss_to_a_large_one():
    """Thilak et al.'s slingshot: from below 1e-5 to above 1e-3 (100 x 1e-5), per member, once
    per rise, however many evaluations the rise takes."""
    losses = {
        0: [1.0, 2e-3, 1e-6, 2e-3, 1e-7, 1e-7, 0.5],  # 2e-3 at step 10 follows no tiny loss
        1: [1.0, 1e-4, 1.0, 1e-6, 5e-4],  # 1e-4 is not tiny, and 5e-4 is not large
        # A slow rise (Thilak's paper preset at epsilon 1e-7 once crept from 1e-6 to 0.1 over
        # 25k steps, never 100x between two evaluations), counted once, at 2e-3.
        2: [1e-3, 1e-6, 3e-6, 1e-5, 3e-5, 9e-5, 2e-4, 2e-3, 0.1, 1e-3, 2e-6, 1e-2],
        # A fitted network's loss of exactly 0 and wanderings far below 1e-3 are no spikes;
        # nor is a fall to 1e-4 within one.
        3: [0.0, 1e-9, 0.0, 5e-6, 0.0, 2e-3, 1e-4, 0.5],
    }
    h = history({m: [(10 * i, 1.0, 1.0, loss) for i, loss in enumerate(v)] for m, v in losses.items()})
    expected = [(0, 30), (0, 60), (2, 70), (2, 110), (3, 50)]
    assert list(loss_spikes(h).itertuples(index=False, name=None)) == expected
    assert list(loss_spikes(h, factor=10).itertuples(index=False, name=None)) == [(0, 30), (0, 60), (1, 40), (2, 60), (2, 110), (3, 50)]
    assert loss_spikes(h.sample(frac=1, random_state=0)).values.tolist() == [list(e) for e in expected]  # any row order


def test_grokking_delays_name_the_member_column_without_swept_columns():
    h = history({0: [(0, 0.5, 0.0, 1.0), (10, 1.0, 1.0, 0.0)], 3: [(0, 1.0, 0.0, 1.0)]}).drop(columns="seed")
    delays = grokking_delays(h)
    assert delays["member"].tolist() == [0, 3]
    assert delays["train_step"].tolist() == [10, 0]


def test_first_crossings_count_accuracies_that_older_runs_stored_in_float32():
    """grokcore stored 9 of 10 as float32 (0.8999999762) until 2026-12-05: a finished run in a
    run store keeps its history, and its 90% must still be 90%."""
    stored = float(np.float32(0.9))
    assert stored < 0.9
    h = history({0: [(0, 0.5, 0.0, 1.0), (10, stored, stored, 0.1), (20, 1.0, 1.0, 0.0)]})
    delays = grokking_delays(h, threshold=0.9)
    assert delays.loc[0, "train_step"] == 10 and delays.loc[0, "val_step"] == 10
    assert math.isnan(grokking_delays(history({0: [(0, 0.5, 0.89, 1.0)]}), threshold=0.9).loc[0, "val_step"])


def test_every_measure_module_is_reachable_from_the_package():
    """gc.measures.fourier and gc.measures.representation after a bare `import grokcore as gc`,
    in a fresh interpreter (where nothing else has imported them yet)."""
    code = "import grokcore as gc; gc.measures.fourier.phases; gc.measures.representation.rqi"
    subprocess.run([sys.executable, "-c", code], check=True)

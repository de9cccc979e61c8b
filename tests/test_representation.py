"""Liu et al.'s RQI and phase classification, against hand-built inputs."""

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import grokcore as gc
from grokcore.measures.representation import classify_phases, parallelograms, phase_agreement, rqi


@pytest.mark.parametrize("p", [3, 4, 6, 10, 13])
def test_parallelograms_are_the_pairs_of_samples_with_equal_sums(p):
    """Liu et al.'s parallelograms, from their definition rather than the code's condition:
    every two distinct samples (a, b), a <= b, whose sums are equal (E_a + E_b = E_c + E_d),
    each pair counted once."""
    samples = [(a, b) for a in range(p) for b in range(a, p)]
    liu = {frozenset((s, t)) for s in samples for t in samples if s != t and sum(s) == sum(t)}
    ours = [frozenset(((i, n), (j, m))) for i, j, m, n in parallelograms(p)]
    assert len(ours) == len(set(ours)) and set(ours) == liu


@pytest.mark.parametrize("d", [1, 2, 5])
def test_linear_embedding_has_rqi_one(d):
    torch.manual_seed(0)
    a, b = torch.randn(d), torch.randn(d)
    embedding = torch.stack([a + k * b for k in range(10)])
    assert rqi(embedding) == 1.0


def test_rqi_ignores_the_embedding_scale_and_offset():
    # A line plus noise, so that RQI sits strictly between 0 and 1: there a rescaled or shifted
    # copy would score differently if the embedding were not standardised first.
    torch.manual_seed(0)
    a, b = torch.randn(3), torch.randn(3)
    embedding = torch.stack([a + k * b for k in range(12)]) + 0.2 * torch.randn(12, 3)
    base = rqi(embedding)
    assert 0.2 < base < 0.8, base
    per_dimension = torch.tensor([100.0, 1.0, 0.01])  # each dimension is standardised on its own
    for changed in (100 * embedding, embedding / 100, embedding + 7.0, -3 * embedding - 2.0, per_dimension * embedding):
        assert rqi(changed) == base


# Five tokens in 2-D: the x column is linear (6k), only the y column breaks the structure
# (token 2 lifted by 1, token 4 by 3). Each column is standardised on its own, so the x
# column's gaps stay 0, and the seven parallelograms of p = 5 miss by (0, g) with
# g = 1, -1, 3, -1, -2, 2, 4: a mean square of g**2 / 2 / 1.7 (1.7 the y column's sample
# variance): 0.294 for |g| = 1, 1.18 for |g| = 2, 2.65 and 4.71 for 3 and 4.
HAND_EMBEDDING = [[0, 0], [6, 0], [12, 1], [18, 0], [24, 3]]


def brute_force_rqi(rows, delta):
    p, d = len(rows), len(rows[0])
    e = [[0.0] * d for _ in range(p)]
    for k in range(d):  # each column standardised on its own (sample standard deviation)
        column = [row[k] for row in rows]
        mean = sum(column) / p
        std = math.sqrt(sum((x - mean) ** 2 for x in column) / (p - 1))
        for t in range(p):
            e[t][k] = (column[t] - mean) / std
    hits = total = 0
    for i in range(p):
        for j in range(i + 1, p):
            for m in range(j, p):
                for n in range(m + 1, p):
                    if i + n != j + m:
                        continue
                    total += 1
                    gap = sum((e[i][k] + e[n][k] - e[j][k] - e[m][k]) ** 2 for k in range(d)) / d
                    hits += gap < delta
    return hits / total


@pytest.mark.parametrize("delta, passing", [(0.25, 0), (0.3, 3), (1.2, 5), (2.7, 6), (5.0, 7)])
@pytest.mark.parametrize("scale, offset", [((1.0, 1.0), 0.0), ((1e-3, 1e-3), 0.0), ((1e3, 1e-2), -50.0)])
def test_rqi_of_a_hand_built_embedding(delta, passing, scale, offset):
    """The last case scales the two columns differently: standardised as one, the x column
    would then swamp the y column's misses."""
    expected = passing / 7
    assert brute_force_rqi(HAND_EMBEDDING, delta) == pytest.approx(expected)
    embedding = torch.tensor(scale, dtype=torch.float64) * torch.tensor(HAND_EMBEDDING, dtype=torch.float64) + offset
    assert rqi(embedding, delta) == pytest.approx(expected)


@pytest.mark.parametrize("spacing, gap_of_one, gap_of_two", [(6, 0.00912, 0.03646), (12, 0.00251, 0.01006)])
def test_rqi_default_delta_is_liu_s(spacing, gap_of_one, gap_of_two):
    # One dimension, 6k or 12k plus the lifts of HAND_EMBEDDING's y column: the parallelograms
    # miss by g / std. Liu et al.'s delta = 0.01 lets through only the three that miss by one:
    # at spacing 6 their gap is 0.00912, at spacing 12 the misses by two are at 0.01006, so
    # the two pin the default between those values.
    rows = [[spacing * k + y] for k, y in enumerate([0, 0, 1, 0, 3])]
    column = [row[0] for row in rows]
    mean = sum(column) / 5
    variance = sum((x - mean) ** 2 for x in column) / 4
    assert 1 / variance == pytest.approx(gap_of_one, abs=1e-5) and 4 / variance == pytest.approx(gap_of_two, abs=1e-5)
    assert brute_force_rqi(rows, 0.01) == pytest.approx(3 / 7)
    assert rqi(torch.tensor(rows, dtype=torch.float32)) == pytest.approx(3 / 7)


def test_random_embedding_has_rqi_near_zero():
    torch.manual_seed(0)
    values = [rqi(torch.randn(10, 1)) for _ in range(20)]
    assert sum(values) / len(values) < 0.1


def history(member, train, val, steps=range(0, 5001, 100)):
    rows = []
    for s in steps:
        rows.append({"member": member, "step": s, "train_acc": 1.0 if train is not None and s >= train else 0.1,
                     "val_acc": 1.0 if val is not None and s >= val else 0.05})
    return rows


def test_phase_of_each_synthetic_history():
    h = pd.DataFrame(history(0, 200, 400) + history(1, 200, 3000) + history(2, 300, None) + history(3, None, None))
    phases = classify_phases(h, threshold=0.9, lag=1000)
    assert phases["phase"].tolist() == ["comprehension", "grokking", "memorization", "confusion"]
    assert phases.loc[1, "val_step"] == 3000


def test_phase_boundaries_of_synthetic_histories():
    """A delay of exactly ``lag`` is comprehension, as in the authors' code, one step more is
    grokking; validation first is comprehension, however early; validation without training
    is confusion (training never fit)."""
    steps = range(5001)
    h = pd.DataFrame(history(0, 200, 1201, steps) + history(1, 200, 1200, steps) + history(2, 3000, 200) + history(3, None, 500))
    phases = classify_phases(h, threshold=0.9, lag=1000)["phase"].tolist()
    assert phases == ["grokking", "comprehension", "comprehension", "confusion"]


def test_rqi_standardises_with_the_sample_standard_deviation():
    """Three of the seven parallelograms of this embedding miss by (0, 1): a mean square of
    1/2 divided by the y column's sample variance, which this delta sits just above; divided
    by its population variance (5/4 larger a gap) they would miss the cut."""
    rows = [[6 * k, y] for k, y in enumerate([0, 0, 1, 0, 3])]
    y = [row[1] for row in rows]
    mean = sum(y) / len(y)
    sample_variance = sum((v - mean) ** 2 for v in y) / (len(y) - 1)
    gap = 0.5 / sample_variance
    assert gap < 0.3 < gap * 5 / 4
    assert rqi(torch.tensor(rows, dtype=torch.float64), 0.3) == pytest.approx(3 / 7)


def test_rqi_refuses_too_few_tokens():
    with pytest.raises(ValueError, match=r"^embedding of shape \(2, 1\) is not allowed"):
        rqi(torch.zeros(2, 1))


@pytest.mark.parametrize("seed", range(5))
def test_toy_split_trains_on_every_sum(seed):
    task = gc.ToyAddition(p=10, train_fraction=0.82)
    pairs, sums = task.examples()
    assert len(pairs) == 55 and sorted(set(sums.tolist())) == list(range(19))
    train, val = task.split(seed)
    assert len(train) == 45 and len(val) == 10 and not set(train.tolist()) & set(val.tolist())
    assert set(sums[train].tolist()) == set(range(19))
    assert all(a <= b for a, b in pairs.tolist())


def test_toy_splits_redrawn_to_cover_every_sum_stay_distinct_between_seeds():
    """At half the pairs most first draws miss a sum and are redrawn, some seeds more than
    1,000 times (then the split is built); a redraw must not land on another seed's
    permutation, or two members of one sweep would share a split."""
    task = gc.ToyAddition(p=10, train_fraction=0.5)
    splits = [frozenset(task.split(seed)[0].tolist()) for seed in range(40)]
    assert len(set(splits)) == 40


@pytest.mark.parametrize("fraction", [0.36, 0.5])
def test_every_toy_split_the_config_allows_covers_every_sum(fraction):
    """0.36 of 55 pairs is 19, one per sum: random draws almost never cover them all."""
    task = gc.ToyAddition(p=10, train_fraction=fraction)
    pairs, sums = task.examples()
    for seed in range(40):
        train, val = task.split(seed)
        assert len(train) == int(fraction * 55) and sorted(train.tolist() + val.tolist()) == list(range(55))
        assert set(sums[train].tolist()) == set(range(19)), seed


@pytest.mark.parametrize("fraction", [0.5, 0.82])
def test_a_toy_split_is_the_first_covering_draw_of_its_seed(fraction):
    """The rule that fixes the splits of every run in a store, and must not move: draws
    seed * 1000 + attempt of torch.randperm, attempt 0, 1, ..., up to the first that gives
    every sum a training pair (at these fractions, seeds 0-19 never run out of draws)."""
    task = gc.ToyAddition(p=10, train_fraction=fraction)
    _, sums = task.examples()
    n_train = int(fraction * 55)
    for seed in range(20):
        for attempt in range(1000):
            perm = torch.randperm(55, generator=torch.Generator().manual_seed(seed * 1000 + attempt))
            if len(set(sums[perm[:n_train]].tolist())) == 19:
                break
        assert torch.equal(task.split(seed)[0], perm[:n_train]), seed


def could_be(first, steps):
    """The steps at which an accuracy first seen at evaluation ``first`` could have crossed."""
    before = [s for s in steps if s < first]
    return range(int(before[-1]) + 1 if before else int(first), int(first) + 1)


def delays_possible(train, val, steps):
    """Brute force: every delay between two crossings, each between the evaluation before its
    first step and that step."""
    return {v - t for t in could_be(train, steps) for v in could_be(val, steps)}


def phases_possible(train, val, steps, lag):
    return {"grokking" if d > lag else "comprehension" for d in delays_possible(train, val, steps)}


def test_phase_resolved_where_the_evaluations_decide_it():
    steps = list(range(0, 5001, 75))
    crossings = [(200, 1150), (200, 1300), (200, 1000), (200, 1240), (300, None)]
    h = pd.DataFrame([row for m, (t, v) in enumerate(crossings) for row in history(m, t, v, steps)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # evaluations 75 apart against a lag of 1,000: no warning
        phases = classify_phases(h, threshold=0.9, lag=1000)
    for row in phases.itertuples():
        if row.phase in ("comprehension", "grokking"):
            possible = phases_possible(row.train_step, row.val_step, steps, 1000)
            assert row.resolved == (len(possible) == 1), (row, possible)
    assert phases["resolved"].tolist() == [False, True, True, False, True]


def test_phase_resolved_agrees_with_a_brute_force_on_an_irregular_grid():
    grid = [0, 60, 130, 200, 300, 450, 700, 999, 1000, 1400, 1900, 2500, 3200, 4000]
    crossings = [(0, 1000)] + [(t, v) for t in (1, 140, 290, 990) for v in (100, 700, 1150, 2000, 3900)]
    h = pd.DataFrame([row for m, (t, v) in enumerate(crossings) for row in history(m, t, v, grid)])
    seen = [(min(g for g in grid if g >= t), min(g for g in grid if g >= v)) for t, v in crossings]
    delays = [delays_possible(t, v, grid) for t, v in seen]
    # Lags on every edge: the least and the greatest delay each member's crossings allow.
    edges = {f(d) for d in delays for f in (min, max)}
    for lag in sorted({300, 640, 1001} | {e for e in edges if e > 0}):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # late on, this grid is coarser than most lags
            phases = classify_phases(h, threshold=0.9, lag=lag)
        assert phases["phase"].isin(["comprehension", "grokking"]).all()
        assert phases[["train_step", "val_step"]].to_numpy().tolist() == [list(pair) for pair in seen]
        for row, possible in zip(phases.itertuples(), delays):
            assert row.resolved == (len({d > lag for d in possible}) == 1), (lag, row)


def test_phase_warns_where_a_members_evaluations_lie_as_far_apart_as_the_lag():
    """Each member by its own evaluations: every 100 steps decides; every 1,500 steps, or every
    1,000 against a lag of 1,000, cannot tell grokking from comprehension."""
    grids = [range(0, 5001, 100), range(0, 5001, 1500), range(0, 5001, 1000)]
    h = pd.DataFrame([row for m, grid in enumerate(grids) for row in history(m, 150, 1500, grid)])
    with pytest.warns(UserWarning, match=r"^2 member\(s\) .* as far apart as the lag \(1000 steps\) or further \(up to 1500\)"):
        phases = classify_phases(h, threshold=0.9, lag=1000)
    assert phases["phase"].tolist() == ["grokking", "comprehension", "comprehension"]  # the last seen exactly 1,000 apart
    assert phases["resolved"].tolist() == [True, False, False]
    possible = [phases_possible(row.train_step, row.val_step, list(grid), 1000) for row, grid in zip(phases.itertuples(), grids)]
    assert [len(p) for p in possible] == [1, 2, 2]


def test_a_row_without_the_accuracy_is_no_evaluation_of_it():
    """A row that logged training accuracy alone (validation accuracy missing) says nothing of
    when validation crossed: here validation was evaluated at 0 and 1,150 only, so its crossing
    could lie anywhere from 1 to 1,150, a delay on either side of the lag."""
    rows = [{"member": 0, "step": s, "train_acc": float(s >= 100), "val_acc": v}
            for s, v in [(0, 0.0), (100, 0.0), (1100, float("nan")), (1150, 1.0)]]
    with pytest.warns(UserWarning, match="not resolved"):
        phases = classify_phases(pd.DataFrame(rows), threshold=0.9, lag=1000)
    assert phases[["train_step", "val_step", "phase"]].values.tolist() == [[100, 1150, "grokking"]]
    possible = {"grokking" if v - t > 1000 else "comprehension"
                for t in could_be(100, [0, 100, 1100, 1150]) for v in could_be(1150, [0, 100, 1150])}
    assert possible == {"grokking", "comprehension"} and not phases["resolved"].item()


def test_phase_agreement_counts_pairs_that_share_a_phase_by_brute_force():
    """Against every pair of members, one by one; with groups split 2-2, where a majority would
    have to break a tie."""
    rng = np.random.default_rng(0)
    phases = pd.DataFrame({
        "weight_decay": rng.choice([1.0, 2.0], 40),
        "split_seed": rng.integers(0, 4, 40),
        "seed": rng.integers(0, 4, 40),
        "phase": rng.choice(["comprehension", "grokking", "memorization"], 40),
    })
    for by in (["weight_decay", "split_seed"], ["weight_decay", "seed"], ["seed"]):
        same = total = 0
        for (_, a), (_, b) in itertools.combinations(phases.iterrows(), 2):
            if all(a[c] == b[c] for c in by):
                total += 1
                same += a.phase == b.phase
        assert phase_agreement(phases, by) == pytest.approx(same / total)
    tied = pd.DataFrame({"split_seed": [0, 0, 0, 0], "phase": ["grokking", "grokking", "confusion", "confusion"]})
    assert phase_agreement(tied, ["split_seed"]) == pytest.approx(2 / 6)


def test_phase_agreement_refuses_a_missing_column_and_groups_without_pairs():
    phases = pd.DataFrame({"seed": [0, 1], "phase": ["grokking", "confusion"]})
    with pytest.raises(ValueError, match="no column 'split_seed'"):
        phase_agreement(phases, ["split_seed"])
    with pytest.raises(ValueError, match="no two members are alike"):
        phase_agreement(phases, ["seed"])
    with pytest.raises(TypeError, match=r"must be a list of column names, e.g. \['seed'\]"):
        phase_agreement(phases, "seed")  # list("seed") would be four one-letter columns
    for column in ("phase", "seed"):
        blank = pd.concat([phases, phases]).reset_index(drop=True)
        blank.loc[0, column] = None
        with pytest.raises(ValueError, match=rf"phases\['{column}'\] has missing values"):
            phase_agreement(blank, ["seed"])

"""Power et al. 2022 (arXiv 2201.02177), reproduced small enough to run on a CPU in under a minute.

The runs are seeded and deterministic on the CPU; the margins in the assertions leave room
for the small numerical differences between PyTorch versions. One file per paper, so that
pytest-xdist (``--dist loadfile``) spreads the papers' runs over its workers.
"""

import pytest

import grokcore as gc

pytestmark = pytest.mark.science


@pytest.fixture(scope="module")
def power_run(tmp_path_factory):
    """x+y mod 31 with half and with 90% of the pairs for training, as one run of two members:
    the history and each member's steps to 99% accuracy."""
    config = gc.RunConfig(
        name="science-power",
        task=gc.AlgorithmicTask(op="x+y", p=31, train_fraction=0.5),
        model=gc.Transformer(n_layers=2, d_model=32, n_heads=4, d_mlp=128),
        optim=gc.AdamW(lr=3e-3, weight_decay=1.0),
        steps=4000,
        batch_size=512,
        max_batch_fraction=0.5,
        sweep={"train_fraction": [0.5, 0.9]},
        stop_at=0.99,
        eval_every=50,
        checkpoints=0,
    )
    history = gc.train(config, root=tmp_path_factory.mktemp("runs"), progress=False).history
    return history, gc.measures.grokking_delays(history).set_index("train_fraction")


def test_power_grokking_validation_near_chance_when_training_fits_then_much_later(power_run):
    """Power et al. 2022, Fig. 1: training accuracy reaches 99% while validation accuracy is
    still near chance (1/31), and validation gets there many times later. A slow rise of
    validation alongside training is not grokking: with 70% of the pairs validation is
    already at 43% when training fits, and gets to 99% 3.8 times later (90%: 89%, 2.4x)."""
    history, delays = power_run
    half = delays.loc[0.5]
    assert half.train_step < half.val_step, half
    h = history.query("train_fraction == 0.5").set_index("step")
    # Measured 0.067 when training fits and 11.6 times later (PyTorch 2.x, CPU).
    assert h.loc[half.train_step, "val_acc"] < 0.2, h.loc[: half.train_step, ["train_acc", "val_acc"]]
    assert half.val_step >= 6 * half.train_step, half


def test_power_less_training_data_generalises_later(power_run):
    """Power et al. 2022, Fig. 1 (center): with less data, 99% validation accuracy takes longer."""
    steps = power_run[1].val_step
    assert steps.notna().all(), power_run[1]
    assert steps[0.5] >= 2.5 * steps[0.9], power_run[1]


def test_power_fixed_sinusoidal_positions_generalise_later_than_learned(tmp_path):
    """The Power chapter's own finding (not the paper's): x/y generalises later with openai/grok's
    fixed sinusoidal position code than with learned positions; at paper scale, without weight
    decay, several times later. Here, small and with weight decay 1: x/y mod 47, one layer of
    width 64, learning rate 6e-3, three seeds per code, and a member stops once its validation
    accuracy reaches 50%. The median seeds are compared, so one seed that moves with a PyTorch
    version cannot flip the result. Measured (PyTorch 2.14, CPU): learned positions reached 50%
    at steps 1,098, 800 and 800; the fixed code at 1,000, and not within the 1,600-step budget
    in the other two seeds (given 2,400 steps: 2,200 and 2,217). Training fitted by step 445."""

    def halfway(positions: str):
        config = gc.RunConfig(
            name=f"science-power-positions-{positions}",
            task=gc.AlgorithmicTask(op="x/y", p=47, train_fraction=0.5),
            model=gc.Transformer(n_layers=1, d_model=64, n_heads=4, d_mlp=256, positions=positions),
            optim=gc.AdamW(lr=6e-3, weight_decay=1.0, betas=(0.9, 0.98), warmup_steps=10),
            steps=1600,
            batch_size=512,
            max_batch_fraction=0.5,
            seeds=3,
            stop_at=0.5,
            eval_every=100,
            checkpoints=0,
        )
        history = gc.train(config, root=tmp_path, progress=False).history
        train = gc.measures.grokking_delays(history).set_index("seed").train_step
        assert train.notna().all(), history.groupby("seed").train_acc.max()  # memorised either way
        # NaN (never within the budget) counts as later than any step
        return gc.measures.grokking_delays(history, threshold=0.5).set_index("seed").val_step.fillna(float("inf"))

    learned, fixed = halfway("learned"), halfway("sinusoidal")
    assert learned.median() < float("inf"), learned
    assert fixed.median() >= 1.5 * learned.median(), (learned, fixed)

"""Power et al. 2022 (arXiv 2201.02177), reproduced small enough to run on a CPU in under a minute.

The runs are seeded and deterministic on the CPU; the margins in the assertions leave room
for the small numerical differences between PyTorch versions. One file per paper, so that
pytest-xdist (``--dist loadfile``) spreads the papers' runs over its workers.
"""

import pytest

import grokcore as gc

pytestmark = pytest.mark.science


@pytest.fixture(scope="module")
def power_delays(tmp_path_factory):
    """x+y mod 31 with half and with 90% of the pairs for training, as one run of two members."""
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
    return gc.measures.grokking_delays(history).set_index("train_fraction")


def test_power_grokking_validation_follows_training_3x_later(power_delays):
    """Power et al. 2022, Fig. 1: training accuracy reaches 99% first, validation much later."""
    half = power_delays.loc[0.5]
    assert half.train_step < half.val_step, half
    assert half.val_step >= 3 * half.train_step, half


def test_power_less_training_data_generalises_later(power_delays):
    """Power et al. 2022, Fig. 1 (center): with less data, 99% validation accuracy takes longer."""
    steps = power_delays.val_step
    assert steps.notna().all(), power_delays
    assert steps[0.5] >= 2.5 * steps[0.9], power_delays

"""Thilak et al. 2022 (arXiv 2206.04817), reproduced small enough to run on a CPU in under a minute.

The runs are seeded and deterministic on the CPU; the margins in the assertions leave room
for the small numerical differences between PyTorch versions. One file per paper, so that
pytest-xdist (``--dist loadfile``) spreads the papers' runs over its workers.
"""

import numpy as np
import pytest

import grokcore as gc

pytestmark = pytest.mark.science


def test_thilak_slingshot_loss_spike_with_a_norm_burst_only_at_small_epsilon(tmp_path):
    """Thilak et al. 2022, Fig. 2 and 4: with Adam and no weight decay, once the training loss
    is tiny the last layer's norm grows fast, the training loss spikes, and the norm stalls.
    A large epsilon suppresses the cycle."""
    config = gc.RunConfig(
        name="science-slingshot",
        task=gc.AlgorithmicTask(op="x+y", p=31, train_fraction=0.5, op_token=False),
        model=gc.Transformer(n_layers=1, d_model=64, n_heads=4, d_mlp=256, norm="none", mlp_bias=True, init="nanda"),
        optim=gc.AdamW(lr=3e-3, weight_decay=0.0),
        steps=1400,
        sweep={"eps": [1e-8, 1e-4]},
        eval_every=20,
        checkpoints=0,
        track_norms=("unembed",),
    )
    history = gc.train(config, root=tmp_path, progress=False).history
    small, large = (g.reset_index(drop=True) for _, g in history.groupby("member"))

    def spikes(h):
        jump = h["train_loss"] > 100 * h["train_loss"].shift(1)
        return h.index[jump & (h["train_loss"].shift(1) < 1e-5)].tolist()

    assert spikes(small), "no training-loss spike with epsilon 1e-8"
    assert not spikes(large), "a spike with epsilon 1e-4"
    # The cycle: while the loss is tiny the norm accelerates, the loss spikes, the norm stalls.
    spike = small.loc[spikes(small)[0], "step"]
    norm = lambda step: np.interp(step, small["step"], small["norm_unembed"])  # noqa: E731
    burst = norm(spike) - norm(spike - 120)
    after = norm(spike + 200) - norm(spike)
    earlier = norm(spike - 120) - norm(spike - 240)
    assert burst > 5 * after and burst > 5 * earlier, (burst, after, earlier)

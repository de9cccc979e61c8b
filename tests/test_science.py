"""Each paper's phenomenon, reproduced small enough to run on a CPU in under a minute.

The runs are seeded and deterministic on the CPU; the margins in the assertions leave room
for the small numerical differences between PyTorch versions.
"""

import numpy as np
import pytest

import grokcore as gc
from grokcore.measures import fourier
from grokcore.measures.representation import classify_phases, rqi

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


@pytest.fixture(scope="module")
def nanda_run(tmp_path_factory):
    config = gc.RunConfig(
        name="science-nanda",
        task=gc.AlgorithmicTask(op="x+y", p=31, train_fraction=0.5, op_token=False),
        model=gc.Transformer(n_layers=1, d_model=64, n_heads=4, d_mlp=256, norm="none", mlp_bias=True, init="nanda"),
        optim=gc.AdamW(lr=3e-3, weight_decay=1.0),
        steps=5000,  # grokking ends between steps 2000 and 4000, depending on float rounding
        checkpoints=12,
    )
    return gc.train(config, root=tmp_path_factory.mktemp("runs"), progress=False)


def test_nanda_grokked_network_uses_a_few_key_frequencies(nanda_run):
    """Nanda et al. 2023, section 5: after grokking the logits live on a few frequencies."""
    history = nanda_run.history
    # Grokked: the median of the last five evaluations, so that one evaluation that lands in
    # a late loss spike (lr 3e-3 has them) does not decide the test.
    assert history["val_acc"].iloc[-5:].median() > 0.99, history.tail(5)
    measures, keys = fourier.progress_measures(nanda_run)
    assert 1 <= len(keys) <= 6, keys  # a handful of the (p - 1) / 2 = 15 frequencies
    last = measures.iloc[-1]
    assert last.restricted_loss < last.excluded_loss / 100, last
    # Early, before the circuit forms, keeping only those frequencies is no better than chance.
    assert measures.iloc[0].restricted_loss > 3.0
    # The embedding becomes sparse in the Fourier basis.
    assert last.gini_embedding > 2 * measures.iloc[0].gini_embedding


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


def test_liu_toy_model_shows_all_four_phases(tmp_path):
    """Liu et al. 2022, Fig. 6c: on the toy addition model, the decoder's learning rate and
    weight decay decide the phase. At a small learning rate, no weight decay comprehends,
    some weight decay groks, and too much confuses. At a large learning rate the decoder
    memorises. Generalising members have a perfectly structured (linear) embedding."""
    config = gc.RunConfig(
        name="science-liu-phases",
        task=gc.ToyAddition(p=10, train_fraction=0.82),
        model=gc.SumEmbeddingMLP(embed_dim=1, hidden=[64, 64], activation="tanh"),
        optim=gc.AdamW(betas=(0.9, 0.999), warmup_steps=0, groups={"embed": {"lr": 1e-3, "weight_decay": 0.0}}),
        steps=3000,
        batch_size=None,
        sweep={"lr": [4.64e-4, 6e-3], "weight_decay": [0.0, 1.78, 8.0]},
        eval_points=60,
        checkpoints=2,
    )
    run = gc.train(config, root=tmp_path, progress=False)
    phases = classify_phases(run.history, threshold=0.9, lag=300).set_index(["lr", "weight_decay"])
    phase = phases["phase"].to_dict()
    assert phase[(4.64e-4, 0.0)] == "comprehension", phases
    assert phase[(4.64e-4, 8.0)] == "confusion", phases
    assert phase[(6e-3, 0.0)] == "memorization", phases
    assert phase[(6e-3, 1.78)] == "memorization", phases
    # Grokking: generalisation that trails the fit much more than in comprehension.
    delay = phases["val_step"] - phases["train_step"]
    assert delay[(4.64e-4, 1.78)] > 2 * delay[(4.64e-4, 0.0)], phases

    quality = {key: rqi(run.model(member=int(m)).embed.weight) for key, m in phases["member"].items()}
    assert quality[(4.64e-4, 0.0)] > 0.95 and quality[(4.64e-4, 1.78)] > 0.95, quality
    assert quality[(6e-3, 0.0)] < 0.5, quality

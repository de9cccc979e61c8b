"""Nanda et al. 2023 (arXiv 2301.05217), reproduced small enough to run on a CPU in under a minute.

The runs are seeded and deterministic on the CPU; the margins in the assertions leave room
for the small numerical differences between PyTorch versions. One file per paper, so that
pytest-xdist (``--dist loadfile``) spreads the papers' runs over its workers.
"""

import pytest

import grokcore as gc
from grokcore.measures import fourier

pytestmark = pytest.mark.science


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

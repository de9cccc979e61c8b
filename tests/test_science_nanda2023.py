"""Nanda et al. 2023 (arXiv 2301.05217), reproduced small enough to run on a CPU in under a minute.

The runs are seeded and deterministic on the CPU; the margins in the assertions leave room
for the small numerical differences between PyTorch versions. One file per paper, so that
pytest-xdist (``--dist loadfile``) spreads the papers' runs over its workers.
"""

import math

import numpy as np
import pytest
import torch

import grokcore as gc
from grokcore.measures import fourier

pytestmark = pytest.mark.science


def nanda_config(name: str, optim: gc.AdamW, loss: str = "cross_entropy", **changes) -> gc.RunConfig:
    """The setting of this file's runs: Nanda et al.'s one-layer transformer on x + y mod 31,
    half of the pairs."""
    return gc.RunConfig(
        name=name,
        task=gc.AlgorithmicTask(op="x+y", p=31, train_fraction=0.5, op_token=False, loss=loss),
        model=gc.Transformer(n_layers=1, d_model=64, n_heads=4, d_mlp=256, norm="none", bias="mlp", init="nanda"),
        optim=optim,
        **changes,
    )


@pytest.fixture(scope="module")
def nanda_run(tmp_path_factory):
    config = nanda_config(
        "science-nanda",
        gc.AdamW(lr=3e-3, weight_decay=1.0),
        steps=5000,  # grokking ends between steps 2000 and 4000, depending on float rounding
        checkpoints=12,
    )
    return gc.train(config, root=tmp_path_factory.mktemp("runs"), progress=False)


def test_nanda_grokked_network_uses_a_few_key_frequencies(nanda_run):
    """Nanda et al. 2023, section 5: after grokking the logits live on a few frequencies; the
    circuit on them forms while the network still memorises (the restricted loss falls long
    before the validation loss), and removing it hurts the training fit ever more (the
    excluded loss rises after memorisation while training accuracy stays at 100%)."""
    history = nanda_run.history
    # Grokked: the median of the last five evaluations, so that one evaluation that lands in
    # a late loss spike (lr 3e-3 has them) does not decide the test.
    assert history["val_acc"].iloc[-5:].median() > 0.99, history.tail(5)
    measures, keys = fourier.progress_measures(nanda_run)
    assert 1 <= len(keys) <= 6, keys  # a handful of the (p - 1) / 2 = 15 frequencies
    chance = math.log(31)
    at_checkpoints = {c: np.interp(measures.step, history.step, history[c]) for c in ("val_loss", "train_acc")}
    measures = measures.assign(**at_checkpoints)

    # The keys carry the logits, the other frequencies nothing: keeping only those is no
    # better than chance (measured 2.9e-6 against 7.4, chance 3.4).
    last = measures.iloc[-1]
    others = [k for k in range(1, 16) if k not in keys]
    logits = fourier.pair_logits(nanda_run.model(), 31)
    no_keys, _ = fourier.restricted_and_excluded_loss(logits, 31, others, torch.ones(31 * 31, dtype=torch.bool))
    assert last.restricted_loss < 1e-3 and no_keys > 0.8 * chance, (last.restricted_loss, no_keys)
    # Memorisation ends, at the excluded loss's minimum, with the training set fitted; after it
    # the excluded loss rises far above chance while training accuracy stays at 100%
    # (measured: 0.78 at step 169 to 8.8 at 5000).
    low = measures["excluded_loss"].idxmin()
    memorised, after = measures.excluded_loss[low], measures.loc[low:]
    assert memorised < 0.5 * chance and last.excluded_loss > max(chance, 5 * memorised), measures
    assert (after.train_acc >= 0.99).all(), after
    # The circuit forms before the network generalises: the restricted loss falls to a tenth
    # of chance while the validation loss is still above chance (measured at step 879:
    # restricted 0.06, validation 8.5).
    formed = measures[measures.restricted_loss < 0.1 * chance]
    assert len(formed) and formed.val_loss.iloc[0] > chance, measures
    # The embedding becomes sparse in the Fourier basis.
    assert last.gini_embedding > 2 * measures.iloc[0].gini_embedding


def test_weight_decay_does_not_hold_back_adams_push_on_float32s_rounding():
    """The chapter's "What pushes the spikes": with AdamW and weight decay 1 (the chapter's cpu
    setting, up to 60 steps before its first float32 spike, at step 1,460), float32's rounding
    gives the last layer's gradient a part common to every output as large as the rest
    (measured: up to 1.1 times it), the update along it (weight decay's pull included) reaches
    0.21 of a full-sized step, and the weights' common part grows from 0.34 to 2.4 against that
    pull. In float64 that part of the gradient is rounding (1e-7 of the rest), and weight decay
    shrinks the weights' common part."""
    traces = {}
    for loss in ("cross_entropy", "cross_entropy_fp64"):
        config = nanda_config(
            "science-nanda-push",
            gc.AdamW(lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98), warmup_steps=10),  # the chapter's
            loss,
            steps=1400,  # 60 steps before the first float32 spike
            batch_size=None,
        )
        trace = gc.trace_output_layer(config, every=10, device="cpu", progress=False)
        trace["ratio"] = trace.gradient_common / trace.gradient_rest
        traces[loss] = trace[trace.step > 200]  # after the fit's big steps
    f32, f64 = traces["cross_entropy"], traces["cross_entropy_fp64"]
    assert f32.train_loss.iloc[-1] < 1e-6, "float32 spiked before the trace's end"  # the push comes before it
    # While the training loss is tiny (measured: from step 980 in both).
    tiny32, tiny64 = f32[f32.train_loss < 1e-6], f64[f64.train_loss < 1e-6]
    assert len(tiny32) >= 20 and len(tiny64) >= 20, (len(tiny32), len(tiny64))
    assert tiny64.ratio.max() < 1e-6, tiny64.ratio.max()
    assert tiny32.ratio.max() > 0.3, tiny32.ratio.max()
    biggest = tiny32.step_common.max(), tiny64.step_common.max()  # measured 0.21 and 3.7e-3
    assert biggest[0] > 0.1 and biggest[0] > 20 * biggest[1], biggest
    # Against weight decay: float32's common part grows to several times its low; float64's only shrinks.
    assert f32.weight_common.iloc[-1] > 5 * f32.weight_common.min(), f32.weight_common.describe()
    assert f64.weight_common.iloc[-1] < 0.5 * f64.weight_common.iloc[0], f64.weight_common.iloc[[0, -1]]

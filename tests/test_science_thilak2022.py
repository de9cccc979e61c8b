"""Thilak et al. 2022 (arXiv 2206.04817), reproduced small enough to run on a CPU in under a minute.

The runs are seeded and deterministic on the CPU; the margins in the assertions leave room
for the small numerical differences between PyTorch versions. One file per paper, so that
pytest-xdist (``--dist loadfile``) spreads the papers' runs over its workers.
"""

import numpy as np
import pytest

import grokcore as gc

pytestmark = pytest.mark.science


def slingshot_config(name: str, loss: str = "cross_entropy", **changes) -> gc.RunConfig:
    """The setting of this file's tests: Nanda et al.'s one-layer transformer on x + y mod 31,
    Adam (lr 3e-3) without weight decay, full batch."""
    return gc.RunConfig(
        name=name,
        task=gc.AlgorithmicTask(op="x+y", p=31, train_fraction=0.5, op_token=False, loss=loss),
        model=gc.Transformer(n_layers=1, d_model=64, n_heads=4, d_mlp=256, norm="none", bias="mlp", init="nanda"),
        optim=gc.AdamW(lr=3e-3, weight_decay=0.0),
        **changes,
    )


def test_thilak_slingshot_loss_spike_with_a_norm_burst_only_at_small_epsilon(tmp_path):
    """Thilak et al. 2022, Fig. 2 and 4: with Adam and no weight decay, once the training loss
    is tiny the last layer's norm grows fast, the training loss spikes, and the norm stalls.
    A large epsilon suppresses the cycle."""
    config = slingshot_config(
        "science-slingshot",
        steps=1400,
        sweep={"eps": [1e-8, 1e-4]},
        eval_every=20,
        checkpoints=0,
        track_norms=("unembed",),
    )
    history = gc.train(config, root=tmp_path, progress=False).history
    # Rises from below 1e-5 to above 1e-3: measured one, at step 1160 (to 0.02), with epsilon
    # 1e-8; with 1e-4 the loss is below 1e-5 at 42 evaluations and stays below 6e-5 after step 300.
    spikes = gc.measures.loss_spikes(history).merge(history.groupby("member", as_index=False)["eps"].first())
    assert (spikes["eps"] < 1e-6).any(), "no training-loss spike with epsilon 1e-8"
    assert (spikes["eps"] < 1e-6).all(), f"a spike with epsilon 1e-4: {spikes}"
    # The cycle: while the loss is tiny the norm accelerates, the loss spikes, the norm stalls.
    small = history[history["eps"] < 1e-6]
    spike = spikes["step"].min()
    norm = lambda step: np.interp(step, small["step"], small["norm_unembed"])  # noqa: E731
    burst = norm(spike) - norm(spike - 120)
    after = norm(spike + 200) - norm(spike)
    earlier = norm(spike - 120) - norm(spike - 240)
    assert burst > 5 * after and burst > 5 * earlier, (burst, after, earlier)


def test_the_spike_needs_the_float32_softmax(tmp_path):
    """The same cycle's spike, and the float32 softmax: in float32 a probability within 6e-8
    of 1 rounds to 1, so the training loss cannot fall much below 1e-8 and a fitted example's own
    class stops pulling on the weights (Prieto et al. 2025, arXiv:2501.04697: softmax collapse).
    With the softmax in float64, as Nanda et al.'s code takes it, two seeds of the run above
    fall more than ten times lower and neither spikes; in float32 both spike (measured: at steps
    1160 and 1180, from losses of 2-3e-8; in float64 the lowest losses were 1.6-1.7e-9).

    What float32 adds to the last layer lies along the direction no softmax sees: the part
    common to every output (its mean row) grows in float32 (measured: 1.5 and 1.4 at the start,
    4.0 and 4.2 at the end) and not in float64 (1.5 and 1.4 throughout), while the rest ends
    alike (11.5 and 11.2 against 11.7 and 11.4)."""
    runs = {}
    for loss in ("cross_entropy", "cross_entropy_fp64"):
        config = slingshot_config(
            "science-softmax",
            loss,
            steps=1300,
            seeds=2,
            eval_every=20,
            checkpoints=2,  # the first and the last network
        )
        runs[loss] = gc.train(config, root=tmp_path, progress=False)
    parts = {
        loss: np.array([[gc.measures.common_output_split(run.model(step, member=m).unembed.weight) for m in (0, 1)]
                        for step in (0, None)])  # [start/end, member, common/rest]
        for loss, run in runs.items()
    }
    f32, f64 = parts["cross_entropy"], parts["cross_entropy_fp64"]
    assert (f32[1, :, 0] > 2 * f32[0, :, 0]).all(), f32
    assert (abs(f64[1, :, 0] - f64[0, :, 0]) < 0.1 * f64[0, :, 0]).all(), f64
    assert (abs(f32[1, :, 1] - f64[1, :, 1]) < 0.1 * f64[1, :, 1]).all(), (f32, f64)
    runs = {loss: run.history for loss, run in runs.items()}
    spiked = {loss: set(gc.measures.loss_spikes(h)["member"]) for loss, h in runs.items()}
    assert spiked == {"cross_entropy": {0, 1}, "cross_entropy_fp64": set()}, spiked
    lowest = {loss: h.groupby("member")["train_loss"].min() for loss, h in runs.items()}
    assert (lowest["cross_entropy_fp64"] * 10 < lowest["cross_entropy"]).all(), lowest


def test_adam_turns_float32s_rounding_into_steps_that_no_softmax_sees():
    """Why the part common to every output grows (the test above), step by step
    (gc.trace_output_layer): in float32 the last layer's gradient gains a common part as large
    as the rest once the loss is tiny, and with a small epsilon Adam makes it a step a sizeable
    fraction of full size (measured: common / rest up to 1.7, the step's common part 0.23 of a
    full step at step 1120, just before the spike). In float64 the gradient's common part is
    rounding (1e-7 of the rest); at epsilon 1e-4 float32's is 7e-3 of the rest, but the step's
    common part stays near 1e-5 of full."""
    traces = {}
    for loss in ("cross_entropy", "cross_entropy_fp64"):
        config = slingshot_config(
            "science-adam-steps",
            loss,
            steps=1150,  # up to the spike (at step 1160 in float32)
            sweep={"eps": [1e-8, 1e-4]},
        )
        trace = gc.trace_output_layer(config, every=10, device="cpu")
        trace["ratio"] = trace.gradient_common / trace.gradient_rest
        traces[loss] = {eps: t[t.step > 200] for eps, t in trace.groupby("eps")}  # after the fit's big steps
    f32, f64 = traces["cross_entropy"], traces["cross_entropy_fp64"]
    for eps in (1e-8, 1e-4):
        assert f64[eps].ratio.max() < 1e-6, f64[eps].ratio.max()
    assert f32[1e-8].ratio.max() > 0.5, f32[1e-8].ratio.max()
    assert f32[1e-8].step_common.max() > 0.1, f32[1e-8].step_common.max()
    assert f32[1e-8].step_common.max() > 100 * f64[1e-8].step_common.max()
    assert f32[1e-4].ratio.iloc[-1] > 1e-3 and f32[1e-4].step_common.max() < 1e-3, f32[1e-4].tail()

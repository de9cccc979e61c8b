"""Config validation: what a config accepts, and what its errors say."""

import numpy as np
import pytest

import grokcore as gc


def config(**changes) -> gc.RunConfig:
    task = gc.AlgorithmicTask(op="x+y", p=11)
    model = gc.Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32)
    return gc.RunConfig(name="cfg", task=task, model=model, **changes)


def test_the_sweep_key_error_lists_only_keys_a_sweep_takes():
    with pytest.raises(gc.ConfigError) as refused:
        config(sweep={"batch_size": [1]})
    allowed = str(refused.value).split("must be one of ")[1].split(", ")
    assert allowed == ["train_fraction", "lr", "weight_decay", "eps", "init_scale"]
    for key in allowed:  # each one a sweep takes
        config(sweep={key: [0.5]})
    with pytest.raises(gc.ConfigError, match="sweep key 'seed' is not allowed"):
        config(sweep={"seed": [1, 2]})


def test_numpy_numbers_are_numbers():
    """An int or float from NumPy (a range, an array's element) is as good as Python's, and is
    kept as Python's: the config is written to config.json and hashed."""
    a = config(seed=np.int64(3), seeds=np.int32(2), steps=np.uint16(50), batch_size=np.int64(8))
    b = config(seed=3, seeds=2, steps=50, batch_size=8)
    assert (a.seed, a.seeds, a.steps, a.batch_size) == (3, 2, 50, 8)
    assert all(type(v) is int for v in (a.seed, a.seeds, a.steps, a.batch_size))
    assert a.hash() == b.hash()
    assert gc.AlgorithmicTask(p=np.int64(13)).p == 13
    assert gc.AdamW(warmup_steps=np.int64(5), lr=np.int64(1)).lr == 1.0  # a float field takes an integer
    optim = gc.AdamW(lr=np.float32(0.5), weight_decay=np.float64(0.25))  # and NumPy's floats
    assert (optim.lr, optim.weight_decay) == (0.5, 0.25) and type(optim.lr) is float
    # Still refused: bools (NumPy's or Python's), and a value that is not allowed.
    for value in (True, np.bool_(True), 2.0):
        with pytest.raises(gc.ConfigError, match="^seeds = .* has the wrong type: expected an integer"):
            config(seeds=value)
    with pytest.raises(gc.ConfigError, match=r"^seeds = 0 is not allowed"):
        config(seeds=np.int64(0))


def test_members_are_ordered_by_the_sweep_keys_alphabetically_then_seed():
    """The order that run.history's member column and run.model(member=k) follow."""
    members = config(sweep={"weight_decay": [0.1, 1.0], "lr": [0.001, 0.01]}, seeds=2, seed=5).members()
    order = [(m["lr"], m["weight_decay"], m["seed"]) for m in members]
    expected = [(lr, wd, seed) for lr in (0.001, 0.01) for wd in (0.1, 1.0) for seed in (5, 6)]
    assert order == expected

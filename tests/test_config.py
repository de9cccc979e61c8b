"""Config validation: what a config accepts, and what its errors say."""

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

import grokcore as gc
from grokcore.config import Spec


def config(**changes) -> gc.RunConfig:
    task = gc.AlgorithmicTask(op="x+y", p=11)
    model = gc.Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32)
    return gc.RunConfig(name="cfg", task=task, model=model, **changes)


def test_the_sweep_key_error_lists_only_keys_a_sweep_takes():
    with pytest.raises(gc.ConfigError) as refused:
        config(sweep={"batch_size": [1]})
    allowed = str(refused.value).split("must be one of ")[1].split(", ")
    assert allowed == ["split_seed", "train_fraction", "lr", "weight_decay", "eps", "init_scale"]
    for key in allowed:  # each one a sweep takes
        config(sweep={key: [3 if key == "split_seed" else 0.5]})
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


def test_split_seeds_are_whole_numbers_that_a_split_can_derive_seeds_from():
    members = config(sweep={"split_seed": np.arange(7, 9)}, seeds=2).members()
    assert [(m["seed"], m["split_seed"]) for m in members] == [(0, 7), (1, 7), (0, 8), (1, 8)]
    assert all(type(m["split_seed"]) is int for m in members)
    for bad in ([-1], [1.5], [True], [np.bool_(False)], [2**32], ["a"]):
        with pytest.raises(gc.ConfigError, match=r"^sweep\['split_seed'\] = .* must be whole numbers in \[0, 2\*\*32\)"):
            config(sweep={"split_seed": bad})


SMALL_MODELS = [
    gc.Transformer(n_layers=1, d_model=8, n_heads=2, d_mlp=8),
    gc.ModularMLP(width=8),
    gc.SumEmbeddingMLP(hidden=(8,)),
]
TASKS = [
    gc.AlgorithmicTask(op="x+y", p=7),
    gc.AlgorithmicTask(op="x/y", p=7, op_token=False, loss="mse"),
    gc.AlgorithmicTask(op="x.y", n=3),
    gc.ToyAddition(p=5, train_fraction=0.8),
]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: type(t).__name__)
@pytest.mark.parametrize("model", SMALL_MODELS, ids=lambda m: type(m).__name__)
def test_a_model_needs_an_output_for_every_answer_of_its_task(task, model):
    """A pair whose model cannot output every answer (ModularMLP's p outputs for ToyAddition's
    2p - 1 sums) is refused when the config is built, not at step 0 of train(); every other
    pair is accepted. What the built model outputs on the task's examples decides which."""
    inputs, targets = task.examples()
    fits = model.build(task.model_dims())(inputs).shape[-1] > targets.max().item()
    if fits:
        gc.RunConfig(name="pair", task=task, model=model)
        return
    message = f"^model = {type(model).__name__} is not allowed with task = {type(task).__name__}: it has"
    with pytest.raises(gc.ConfigError, match=message):
        gc.RunConfig(name="pair", task=task, model=model)


def test_the_modular_mlp_is_refused_for_toy_addition():
    """The case that crashed in train() with 'Target 13 is out of bounds'."""
    with pytest.raises(gc.ConfigError, match=r"it has 10 outputs, and the task's answers are 19 classes"):
        gc.RunConfig(name="mm", task=gc.ToyAddition(), model=gc.ModularMLP(width=8), steps=5)


def test_numpy_arrays_and_ranges_are_lists():
    """A 1-D array or a range is taken where a list is, and hashes as the list typed out would."""
    typed = [0.0001, 0.00046415888336127773, 0.002154434690031882, 0.01]  # np.geomspace(1e-4, 1e-2, 4)
    swept = config(sweep={"lr": np.geomspace(1e-4, 1e-2, 4)})
    assert swept.sweep == {"lr": tuple(typed)} and all(type(v) is float for v in swept.sweep["lr"])
    assert swept.canonical_json() == config(sweep={"lr": typed}).canonical_json()
    scales = [config(sweep={"init_scale": v}) for v in (range(1, 4), np.arange(1, 4), [1.0, 2.0, 3.0])]
    assert len({c.hash() for c in scales}) == 1 and scales[0].sweep == {"init_scale": (1.0, 2.0, 3.0)}
    optim = gc.AdamW(betas=np.array([0.9, 0.98]))
    assert optim.betas == (0.9, 0.98) and all(type(b) is float for b in optim.betas)
    assert config(optim=optim).hash() == config(optim=gc.AdamW(betas=[0.9, 0.98])).hash()
    # -0.0 equals 0.0 and trains alike: one config, one hash.
    assert config(optim=gc.AdamW(weight_decay=-0.0)).hash() == config(optim=gc.AdamW(weight_decay=0.0)).hash()
    norms = config(track_norms=np.array(["unembed"])).track_norms
    assert norms == ("unembed",) and type(norms[0]) is str
    assert gc.SumEmbeddingMLP(hidden=np.array([4, 4])).to_dict() == gc.SumEmbeddingMLP(hidden=[4, 4]).to_dict()


def test_a_bad_swept_value_is_named_by_its_sweep():
    """The value was given in the sweep, not in the section whose check refuses it."""
    with pytest.raises(gc.ConfigError) as error:
        config(sweep={"eps": [1e-8, 0]})
    assert str(error.value) == "sweep['eps'] = [1e-08, 0]: eps = 0.0 is not allowed: must be a number in (0, inf)"
    with pytest.raises(gc.ConfigError, match=r"^sweep\['train_fraction'\] = \[0\.5, 1\.5\]: train_fraction = 1\.5 "):
        config(sweep={"train_fraction": (0.5, 1.5)})


def test_describe_lists_each_option_with_its_default():
    lines = gc.AdamW.describe().splitlines()
    assert [line.split(":")[0] for line in lines] == ["lr", "weight_decay", "betas", "eps", "warmup_steps", "groups"]
    assert lines[0] == "lr: a number = 0.001; a number in (0, inf). learning rate"
    assert lines[-1].startswith("groups: a dict = {}. per parameter-name prefix")  # a default_factory's value
    run = {line.split(":")[0]: line for line in gc.RunConfig.describe().splitlines()}
    assert run["task"].startswith("task: Spec = required.")
    assert run["optim"].startswith("optim: AdamW = AdamW(lr=0.001, weight_decay=1.0,")


def test_a_size_that_the_operation_ignores_changes_no_run():
    """A modular operation ignores the group degree n, a permutation one the modulus p (the
    data-fraction notebook sets both for every operation): either may change and the run is the
    same run, with the ignored one at its default."""
    task = gc.AlgorithmicTask

    def run(t):
        return config().replace(task=t)

    same = [(task(op="x+y", p=59, n=4), task(op="x+y", p=59)), (task(op="x.y", p=59, n=4), task(op="x.y", p=97, n=4))]
    for a, b in same:
        assert run(a).hash() == run(b).hash()
    assert run(task(op="x+y", p=59)).hash() != run(task(op="x+y", p=61)).hash()
    assert run(task(op="x.y", n=4)).hash() != run(task(op="x.y", n=5)).hash()
    assert task(op="x+y", p=59, n=4) == task(op="x+y", p=59) and task(op="x+y", p=59, n=4).n == 5
    stored = run(task(op="x.y", p=59, n=4))
    assert gc.RunConfig.from_dict(stored.to_dict()) == stored  # what the run store reloads is the same run
    assert stored.task.replace(op="x+y").p == 97  # the p given to x.y was dropped, not kept for later


def test_arrays_that_are_not_lists_are_refused():
    """A 0-D or 2-D array holds no list of values; an empty one holds none."""
    refused = {"not a 0-D array": np.array(1e-3), "not a 2-D array": np.ones((2, 2)), "1-D array)": np.array([])}
    for why, values in refused.items():
        with pytest.raises(gc.ConfigError) as error:
            config(sweep={"lr": values})
        message = str(error.value)
        assert message.startswith("sweep['lr'] = array(") and message.endswith(why)
        assert "is not allowed: must be a non-empty list (or tuple, range, 1-D array)" in message
    expected = "has the wrong type: expected a tuple/list of a number, not a {}-D array"
    for betas, ndim in ((np.array(0.9), 0), (np.array([[0.9, 0.98]]), 2)):
        with pytest.raises(gc.ConfigError, match=r"^betas = array\(.* " + re.escape(expected.format(ndim)) + "$"):
            gc.AdamW(betas=betas)


def test_a_run_name_must_make_a_file_name(tmp_path):
    """The run folder <name>-<10 hex digits> must fit a file name: 255 bytes, NUL and newlines excluded."""
    longest = config(steps=1, eval_points=2, checkpoints=0).replace(name="a" * 244)
    assert len(longest.run_name.encode()) == 255
    assert gc.train(longest, root=tmp_path).path.name == longest.run_name  # the folder is made
    config().replace(name="é" * 122)  # 244 bytes in UTF-8
    allowed = "is not allowed: must be a non-empty printable label of at most 244 bytes"
    for name in ("a" * 245, "é" * 123, "a\x00b", "a\nb", "a\tb", "\udc80"):
        with pytest.raises(gc.ConfigError, match=r"^name = .* " + allowed):
            config().replace(name=name)


def test_parameter_groups_take_numpy_numbers_as_floats():
    """np.geomspace(...)[i] or np.float32 in a group is a number, kept as the Python float it equals."""
    optim = gc.AdamW(groups={"embed": {"lr": np.float64(1e-3), "weight_decay": np.float32(0.5)}})
    assert optim.groups == {"embed": {"lr": 0.001, "weight_decay": 0.5}}
    assert all(type(v) is float for v in optim.groups["embed"].values())
    with pytest.raises(gc.ConfigError, match=r"^groups\['embed'\]\['lr'\] = .* is not allowed"):
        gc.AdamW(groups={"embed": {"lr": np.float32("nan")}})


def test_a_config_cannot_be_changed_behind_its_hash():
    """A config is frozen and named by its hash, its sweep and groups too: editing them in a
    copy made by replace() must neither pass unchecked nor change the original (variants built
    in a loop would collapse into one run). Equal configs hash equal, so they can key a dict,
    and a config survives pickling (SLURM jobs, worker processes) whole."""
    import copy
    import pickle

    a = config(optim=gc.AdamW(groups={"embed": {"lr": 1e-3}}), sweep={"lr": [1e-3, 1e-2]})
    name = a.run_name
    b = a.replace(name="other")
    edits = [
        lambda: b.optim.groups["embed"].update(lr=-1.0),
        lambda: b.optim.groups.__setitem__("blocks", {"lr": 1.0}),
        lambda: b.sweep.__setitem__("lr", (0.1,)),
        lambda: b.sweep.pop("lr"),
        lambda: b.sweep.clear(),
    ]
    for edit in edits:
        with pytest.raises(TypeError, match="cannot be changed: make a new config with .replace"):
            edit()
    assert a.run_name == name and a.optim.groups == {"embed": {"lr": 1e-3}} and a.sweep == {"lr": (1e-3, 1e-2)}
    same = config(optim=gc.AdamW(groups={"embed": {"lr": 0.001}}), sweep={"lr": (0.001, 0.01)})
    assert {a: "run"}[same] == "run"
    for twin in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):
        assert twin == a and twin.run_name == name
        with pytest.raises(TypeError):
            twin.sweep["lr"] = (0.1,)


def test_a_stored_config_with_the_old_mlp_bias_field_still_reads():
    """Runs written before ``bias`` replaced ``mlp_bias`` (2026-12-06) open as the same network."""
    cfg = gc.Transformer(n_layers=1, norm="none", bias="mlp", init="nanda")
    stored = cfg.to_dict()
    del stored["bias"]
    for old, new in [(True, "mlp"), (False, "none")]:
        assert Spec.from_dict({**stored, "mlp_bias": old}) == cfg.replace(bias=new)


def test_the_phase_diagram_grid_is_log_spaced_in_lr_and_even_in_weight_decay():
    """Worked out by hand: lr_i = lo * (hi / lo) ** (i / (n - 1)), wd_j = max * j / (n - 1)."""
    grid = gc.lr_weight_decay_grid([1e-5, 1e-2], 4, 20.0, 5)
    assert grid["lr"] == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2], rel=1e-12)
    assert grid["weight_decay"] == pytest.approx([0.0, 5.0, 10.0, 15.0, 20.0], rel=1e-12)
    assert all(type(v) is float for v in grid["lr"] + grid["weight_decay"])  # hashed as if typed
    # One point each: the smallest lr and no weight decay; NumPy's numbers as good as Python's.
    assert gc.lr_weight_decay_grid(np.array([3e-4, 1e-2]), np.int64(1), np.float32(4), 1) == {"lr": [3e-4], "weight_decay": [0.0]}
    config(sweep=grid)  # a sweep a config takes


def test_the_phase_diagram_grid_keeps_the_lists_the_liu_notebooks_wrote_out():
    """The Liu notebooks built their sweep with these NumPy calls before the grid had a function;
    equal lists to the bit keep the config hashes, and so the stored runs, of their presets."""
    presets = sorted((Path(__file__).parents[1] / "parameters" / "liu2022").glob("*/*.yaml"))
    assert len(presets) == 6
    for preset in presets:
        p = yaml.safe_load(preset.read_text())
        assert gc.lr_weight_decay_grid(p["lr_range"], p["n_lr"], p["weight_decay_max"], p["n_weight_decay"]) == {
            "lr": np.geomspace(*p["lr_range"], p["n_lr"]).tolist(),
            "weight_decay": np.linspace(0, p["weight_decay_max"], p["n_weight_decay"]).tolist(),
        }, preset


@pytest.mark.parametrize(
    "args, name",
    [
        (([1e-2], 3, 1.0, 2), "lr_range"),  # np.geomspace(*lr_range, n_lr) would read n_lr as the stop ...
        (([1e-3, 1e-2, 5], 3, 1.0, 2), "lr_range"),  # ... and a third number as the count
        (([1e-2, 1e-3], 3, 1.0, 2), "lr_range"),
        (([0.0, 1e-3], 3, 1.0, 2), "lr_range"),
        (([1e-3, float("nan")], 3, 1.0, 2), "lr_range"),
        ((1e-3, 3, 1.0, 2), "lr_range"),
        (([1e-3, 1e-2], 0, 1.0, 2), "n_lr"),
        (([1e-3, 1e-2], 2.5, 1.0, 2), "n_lr"),
        (([1e-3, 1e-2], 3, 1.0, True), "n_weight_decay"),
        (([1e-3, 1e-2], 3, 1.0, 0), "n_weight_decay"),
        (([1e-3, 1e-2], 3, float("nan"), 2), "weight_decay_max"),
        (([1e-3, 1e-2], 3, -1.0, 2), "weight_decay_max"),
        (([1e-3, 1e-2], 3, float("inf"), 2), "weight_decay_max"),
    ],
)
def test_the_phase_diagram_grid_names_the_parameter_it_refuses(args, name):
    with pytest.raises(gc.ConfigError, match=rf"^{name} = .* is not allowed: must be "):
        gc.lr_weight_decay_grid(*args)

"""The training loop against plain PyTorch, the run store, and resume."""

import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import grokcore as gc
from grokcore.optim import EnsembleAdamW
from grokcore.train import (
    MALLOC_ENV,
    Trainer,
    build_member,
    checkpoint_schedule,
    compile_metrics_pays_off,
    compile_pays_off,
    compiled_method,
    cpu_chunk_size,
    eval_schedule,
    flatten,
    log_steps,
    write_history,
)


def small_config(**changes):
    base = dict(
        name="test",
        task=gc.AlgorithmicTask(op="x+y", p=11, train_fraction=0.5),
        model=gc.Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32),
        optim=gc.AdamW(lr=3e-3, weight_decay=0.5, warmup_steps=5),
        steps=30,
        eval_points=8,
        checkpoints=4,
    )
    base.update(changes)
    return gc.RunConfig(**base)


# The transformer's members run through vmap, the quadratic MLP's through its own forward_members.
MODELS = [gc.Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32), gc.ModularMLP(width=24)]


def plain_pytorch_steps(config, member, steps, groups=()):
    """The reference: nn.Module + torch.optim.AdamW + LambdaLR, full batch, as Nanda's trainer.
    ``groups``: (parameter names, lr, weight decay) of torch's own parameter groups. Yields
    (step, model) after each step, the weights' ``.grad`` still that step's gradient."""
    model = build_member(config, member)
    params = dict(model.named_parameters())
    grouped = [{"params": [params.pop(name) for name in names], "lr": lr, "weight_decay": wd} for names, lr, wd in groups]
    opt = torch.optim.AdamW(
        [*grouped, {"params": list(params.values())}],
        lr=member["lr"], betas=config.optim.betas, eps=member["eps"], weight_decay=member["weight_decay"],
    )
    warmup = config.optim.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, t / warmup))
    inputs, targets = config.task.examples()
    train_idx, _ = config.task.member_split(member)
    for step in range(1, steps + 1):
        loss = F.cross_entropy(model(inputs[train_idx]), targets[train_idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        yield step, model


def plain_pytorch_trajectory(config, member, steps, groups=()):
    """The reference's weights after ``steps`` steps."""
    *_, (_, model) = plain_pytorch_steps(config, member, steps, groups)
    return flatten(model)


def test_single_member_equals_torch_adamw():
    config = small_config()
    trainer = Trainer(config, torch.device("cpu"))
    for _ in range(25):
        trainer.train_step()
    expected = plain_pytorch_trajectory(config, config.members()[0], 25)
    assert torch.allclose(trainer.flat.detach()[0], expected, atol=2e-5, rtol=1e-4)


def test_trace_output_layer_splits_gradient_and_step_as_plain_torch_does():
    """gc.trace_output_layer against nn.Module + torch.optim.AdamW, the split done by hand: the
    mean row over the outputs, added back to every output, and the rest; the step's parts as
    fractions of lr * sqrt(the layer's size); the training loss after the step. Two members
    with different eps, full batch."""
    config = small_config(steps=12, sweep={"eps": [1e-8, 1e-3]}, optim=gc.AdamW(lr=3e-3, weight_decay=0.5, warmup_steps=2))
    trace = gc.trace_output_layer(config, every=4, device="cpu").set_index(["member", "step"])
    assert list(trace.index.get_level_values("step").unique()) == [4, 8, 12]

    def split(matrix):  # plain Python: the norm of the mean row repeated on every row, and of the rest
        rows = matrix.tolist()
        mean = [sum(column) / len(rows) for column in zip(*rows)]
        common = math.sqrt(len(rows) * sum(x * x for x in mean))
        rest = math.sqrt(sum((x - m) ** 2 for row in rows for x, m in zip(row, mean)))
        return common, rest

    inputs, targets = config.task.examples()
    for k, member in enumerate(config.members()):
        train_idx, _ = config.task.member_split(member)
        before = build_member(config, member).unembed.weight.detach()  # the weights before step 1
        for step, model in plain_pytorch_steps(config, member, 12):
            weight = model.unembed.weight
            taken, before = weight.detach() - before, weight.detach().clone()
            if step % 4:
                continue
            full = 3e-3 * math.sqrt(weight.numel())
            row = trace.loc[(k, step)]
            assert row.eps == member["eps"] and row.seed == member["seed"]
            with torch.no_grad():
                after = F.cross_entropy(model(inputs[train_idx]), targets[train_idx]).item()
            assert row.train_loss == pytest.approx(after, rel=1e-4), (k, step)
            expected = {"weight": split(weight.detach()), "gradient": split(weight.grad),
                        "step": [x / full for x in split(taken)]}
            for part, (common, rest) in expected.items():
                # A float32 gradient's common part is rounding (1e-8 here): judged against the whole.
                tolerance = 1e-4 * math.hypot(common, rest)
                assert row[f"{part}_common"] == pytest.approx(common, abs=tolerance), (k, step, part)
                assert row[f"{part}_rest"] == pytest.approx(rest, abs=tolerance), (k, step, part)


def test_trace_output_layer_refuses_bad_input_before_training():
    config = small_config()
    with pytest.raises(gc.ConfigError, match=r"every = 0 is not allowed"):
        gc.trace_output_layer(config, every=0)
    with pytest.raises(gc.ConfigError, match=r"progress = 'yes' is not allowed"):
        gc.trace_output_layer(config, progress="yes")
    with pytest.raises(gc.ConfigError, match=r"layer = 'blocks.0' is not allowed: it must name one \(outputs, width\) weight"):
        gc.trace_output_layer(config, layer="blocks.0")
    with pytest.raises(gc.ConfigError, match=r"layer prefix 'nope' matches no parameter"):
        gc.trace_output_layer(config, layer="nope")


def test_parameter_groups_and_swept_eps_equal_torch_adamw_with_param_groups():
    """Liu et al.'s separate embedding learning rate (``optim.groups``) and a swept epsilon
    against torch's AdamW with two parameter groups and that epsilon."""
    optim = gc.AdamW(lr=3e-3, weight_decay=0.5, warmup_steps=5, groups={"embed": {"lr": 2e-2, "weight_decay": 0.0}})
    config = small_config(optim=optim, sweep={"eps": [1e-8, 3e-2]})
    trainer = Trainer(config, torch.device("cpu"))
    for _ in range(25):
        trainer.train_step()
    for k, member in enumerate(config.members()):
        expected = plain_pytorch_trajectory(config, member, 25, groups=[(["embed.weight"], 2e-2, 0.0)])
        assert torch.allclose(trainer.flat.detach()[k], expected, atol=2e-5, rtol=1e-4), member


@pytest.mark.parametrize("model", MODELS, ids=["transformer", "modular_mlp"])
@pytest.mark.parametrize("batch_size", [None, 40], ids=["full_batch", "batch_40"])
def test_each_members_gradient_is_that_of_its_own_mean_loss(model, batch_size):
    """Members with different training fractions (padded index rows of the full batch) and, with
    a batch cap of half the training set, different batch sizes: the trainer's gradient row k is the gradient
    of member k's own mean loss, computed by an nn.Module on its real examples alone. A wrong
    scale per member would pass the trajectory tests, since AdamW undoes most of it."""
    mse = isinstance(model, gc.ModularMLP)
    task = gc.AlgorithmicTask(op="x+y", p=11, op_token=not mse, loss="mse" if mse else "cross_entropy")
    config = small_config(task=task, model=model, batch_size=batch_size, max_batch_fraction=0.5 if batch_size else 1.0,
                          sweep={"train_fraction": [0.3, 0.5, 0.8]})
    trainer = Trainer(config, torch.device("cpu"))
    assert (trainer.batch is None) == (batch_size is None)  # the full batch: the padded split itself
    trainer.train_step()  # away from the initial weights
    idx, share = trainer.sample_batch()
    counts = (share > 0).sum(1).tolist()
    assert len(set(counts)) == 3, "the members must differ in how many examples they average over"
    outputs, gradient = trainer._outputs_and_gradient(trainer.flat, idx, share)
    (grad,) = torch.autograd.grad(outputs, trainer.flat, gradient)
    inputs, targets = config.task.examples()
    for k, member in enumerate(config.members()):
        net = build_member(config, member)
        torch.nn.utils.vector_to_parameters(trainer.flat.detach()[k], net.parameters())
        real = idx[k, : counts[k]]  # real examples come first, padding after
        assert share[k, counts[k]:].sum() == 0
        out = net(inputs[real])
        if mse:
            loss = F.mse_loss(out, F.one_hot(targets[real], out.shape[-1]).float())
        else:
            loss = F.cross_entropy(out, targets[real])
        expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(net.parameters()))])
        torch.testing.assert_close(grad[k], expected, rtol=1e-4, atol=1e-7)


def plain_python_adamw(p, grads, lr, wd, betas, eps, warmup, active):
    """AdamW with a linear warm-up on a list of floats; a step with ``active`` False moves no
    weight (its learning rate is 0) but still updates the moments."""
    (b1, b2), m, v = betas, [0.0] * len(p), [0.0] * len(p)
    for t, (g, on) in enumerate(zip(grads, active)):
        a = lr * min(1.0, t / warmup) * on
        p = [x * (1 - a * wd) for x in p]
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        c1, c2 = 1 - b1 ** (t + 1), math.sqrt(1 - b2 ** (t + 1))
        p = [x - a / c1 * mi / (math.sqrt(vi) / c2 + eps) for x, mi, vi in zip(p, m, v)]
    return p


def test_ensemble_adamw_rows_equal_adamw_written_out_per_member():
    K, P, T = 3, 4, 12
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(K, P, generator=generator, dtype=torch.float64)
    scales = torch.tensor([1.0, 1e-3, 10.0], dtype=torch.float64)[:, None]  # eps matters for member 1
    grads = torch.randn(T, K, P, generator=generator, dtype=torch.float64) * scales
    lr, wd, eps = [1e-2, 3e-2, 5e-3], [0.0, 0.5, 2.0], [1e-8, 1e-2, 1e-1]
    active = [[True] * T, [t < 5 for t in range(T)], [True] * T]  # member 1 stops after 5 steps
    params = start.clone()
    opt = EnsembleAdamW(params, gc.AdamW(betas=(0.8, 0.95), warmup_steps=3), *(torch.tensor(v) for v in (lr, wd, eps)))
    for t in range(T):
        opt.step(grads[t], torch.tensor([[float(active[k][t])] for k in range(K)], dtype=torch.float64))
    for k in range(K):
        expected = plain_python_adamw(
            start[k].tolist(), grads[:, k].tolist(), lr[k], wd[k], (0.8, 0.95), eps[k], 3, active[k]
        )
        assert params[k].tolist() == pytest.approx(expected, rel=1e-6, abs=1e-9), k


def test_compile_only_where_it_pays_off():
    # Break-even at 40 s of compiling against ~0.35 ms saved a step for one model, ~7 ms for 64.
    assert not compile_pays_off(steps=40_000, members=1)  # Nanda's paper run: graphs alone
    assert compile_pays_off(steps=300_000, members=1)
    assert not compile_pays_off(steps=2_000, members=64)
    assert compile_pays_off(steps=10_000, members=64)
    assert compile_pays_off(steps=10_000, members=300)  # Liu's transformer phase diagram
    # Evaluations: ~10 s of compiling against ~0.6 ms per member saved at each (4 ms more without graphs).
    nanda = small_config(steps=40_000, eval_points=100, eval_every=100)  # about 500 evaluations
    assert not compile_metrics_pays_off(len(eval_schedule(nanda)), members=1)
    assert not compile_metrics_pays_off(100, members=64)  # a 64-member sweep of Power's model: 17 s sooner
    assert compile_metrics_pays_off(100, members=300)
    long_run = small_config(steps=1_000_000, eval_every=100)
    # One model's evaluation replayed as a CUDA graph beats its compiled version; launched
    # op by op, 10,000 evaluations of 4 ms repay compiling.
    assert not compile_metrics_pays_off(len(eval_schedule(long_run)), members=1)
    assert compile_metrics_pays_off(len(eval_schedule(long_run)), members=1, graphed=False)


def test_failed_compile_falls_back_to_the_same_trajectory():
    """A compiler that fails (as on some torch versions) leaves no trace: the run goes on
    eagerly, with a warning, and its weights equal those of a run that never compiled."""
    config = small_config()
    eager = Trainer(config, torch.device("cpu"))
    broken = Trainer(config, torch.device("cpu"))

    def failing(*args):
        raise RuntimeError("inductor cannot compile this")

    broken.use_compile = True  # the CPU never compiles; pretend it did, with a failing compiler
    broken._outputs_fn = broken._metrics_fn = failing
    with pytest.warns(UserWarning, match="torch.compile failed"):
        broken.train_step()
    assert not broken.use_compile
    for _ in range(9):
        broken.train_step()
    for _ in range(10):
        eager.train_step()
    assert torch.equal(broken.flat, eager.flat)

    at_evaluation = Trainer(config, torch.device("cpu"))
    at_evaluation.use_compile = at_evaluation.metrics_compiled = True
    at_evaluation._metrics_fn = failing
    with pytest.warns(UserWarning, match="torch.compile failed"):
        metrics = at_evaluation.evaluate()
    assert torch.equal(metrics, Trainer(config, torch.device("cpu")).evaluate())


@pytest.fixture
def no_compile_wrappers():
    """The process's torch.compile wrappers (``compiled_method``) dropped before and after: a
    test that fakes torch.compile neither finds real ones nor leaves its fakes behind."""
    compiled_method.cache_clear()
    yield
    compiled_method.cache_clear()


def test_a_retried_compile_keeps_its_other_options(monkeypatch, no_compile_wrappers):
    """Only combo kernels are dropped: shape padding stays off (as on a GPU), so the retried
    step compiles to the code it would have compiled to."""
    trainer = Trainer(small_config(), torch.device("cpu"))
    asked = []

    def failing_with_combo_kernels(f, dynamic, options):
        asked.append(dict(options))
        if "combo_kernels" not in options:
            return f

        def failing(*args):
            raise RuntimeError("combo kernels crashed")

        return failing

    monkeypatch.setattr(torch, "compile", failing_with_combo_kernels)
    trainer.compile_options = {"combo_kernels": True, "shape_padding": False}
    trainer._set_compiled(True)
    with pytest.warns(UserWarning, match="compiling again without combo_kernels"):
        trainer.train_step()
    assert trainer.use_compile and trainer.compile_options == {"shape_padding": False}
    assert {"shape_padding": False} in asked


def test_compile_that_fails_with_inductor_options_is_retried_without_them(monkeypatch, no_compile_wrappers):
    """Combo kernels are inductor's least tried option: where compiling with them fails, the
    step compiles again without them (with a warning) before it gives up compiling."""
    config = small_config()
    retried = Trainer(config, torch.device("cpu"))
    asked = []

    def compile_failing_with_options(f, dynamic, options):
        asked.append(dict(options))
        if not options:
            return f  # compiles (to the same function) without options

        def failing(*args):
            raise RuntimeError("combo kernels crashed")

        return failing

    monkeypatch.setattr(torch, "compile", compile_failing_with_options)
    retried.compile_options = {"combo_kernels": True}  # as on a GPU
    retried._set_compiled(True)
    with pytest.warns(UserWarning, match="compiling again without combo_kernels"):
        retried.train_step()
    assert retried.use_compile and retried.compile_options == {}
    assert {"combo_kernels": True} in asked and {} in asked
    eager = Trainer(config, torch.device("cpu"))
    for _ in range(9):
        retried.train_step()
    for _ in range(10):
        eager.train_step()
    assert torch.equal(retried.flat, eager.flat)


def test_torch_warnings_nobody_can_act_on_are_hidden_and_others_are_not():
    # In a new process: pytest restores the warning filters after importing the test modules.
    # The first two texts are torch 2.11's own.
    script = """
import warnings
import grokcore.train
with warnings.catch_warnings(record=True) as caught:
    warnings.warn("Attempting to run cuBLAS, but there was no current CUDA context! Attempting to"
                  " set the primary context... (Triggered internally at CublasHandlePool.cpp:335.)")
    warnings.warn("\\nOnline softmax is disabled on the fly since Inductor decides to\\nsplit the reduction.")
    warnings.warn("Attempting to run cuBLAS with no CUDA device")
    warnings.warn("Online softmax is disabled on the fly", DeprecationWarning)
print([(w.category.__name__, str(w.message)) for w in caught])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(
        [("UserWarning", "Attempting to run cuBLAS with no CUDA device"),
         ("DeprecationWarning", "Online softmax is disabled on the fly")]
    )


@pytest.mark.parametrize("model", MODELS, ids=["vmap", "forward_members"])
def test_members_with_different_hyperparameters_equal_separate_runs(model):
    config = small_config(model=model, seeds=2, sweep={"lr": [1e-3, 5e-3], "weight_decay": [0.0, 1.0]}, batch_size=16)
    ensemble = Trainer(config, torch.device("cpu"))
    for _ in range(15):
        ensemble.train_step()
    members = config.members()
    assert len(members) == 8
    for k in (0, 3, 6):
        m = members[k]
        alone = Trainer(
            small_config(
                model=model, seed=m["seed"], optim=gc.AdamW(lr=m["lr"], weight_decay=m["weight_decay"], warmup_steps=5), batch_size=16
            ),
            torch.device("cpu"),
        )
        for _ in range(15):
            alone.train_step()
        assert torch.allclose(ensemble.flat.detach()[k], alone.flat.detach()[0], atol=2e-5, rtol=1e-4)


# A value other than small_config's for every sweepable setting that lives in a config section.
OTHER_VALUES = {"train_fraction": 0.7, "lr": 1e-2, "weight_decay": 0.0, "eps": 1e-3, "init_scale": 0.5}


@pytest.mark.parametrize("key", [k for k, section in gc.config.SWEEPABLE.items() if section is not None])
def test_a_swept_setting_trains_as_the_same_setting_made_in_the_config(key):
    """Every sweep key reaches training: a member swept to a value trains as a run whose config
    section holds that value. A key added to SWEEPABLE but not applied per member by the
    trainer would train every member alike, and fails here."""
    assert key in OTHER_VALUES, f"sweep key {key!r} is new: give OTHER_VALUES a value for it"
    config = small_config(sweep={key: [OTHER_VALUES[key]]})
    section = gc.config.SWEEPABLE[key]
    alone = small_config(**{section: getattr(config, section).replace(**{key: OTHER_VALUES[key]})})
    assert alone.sweep == {} and getattr(getattr(alone, section), key) != getattr(getattr(small_config(), section), key)
    swept, direct = Trainer(config, torch.device("cpu")), Trainer(alone, torch.device("cpu"))
    for _ in range(10):
        swept.train_step()
        direct.train_step()
    assert torch.allclose(swept.flat.detach(), direct.flat.detach(), atol=1e-6, rtol=1e-5)
    default = Trainer(small_config(), torch.device("cpu"))
    for _ in range(10):
        default.train_step()
    assert not torch.allclose(swept.flat.detach(), default.flat.detach(), atol=1e-6, rtol=1e-5)


def test_init_scale_multiplies_every_initial_weight():
    """Omnigrok's alpha: a member's init_scale multiplies each initial weight of its seed's
    network, whether it is swept or set on the model."""
    swept = Trainer(small_config(sweep={"init_scale": [1.0, 0.25]}), torch.device("cpu")).flat.detach()
    assert torch.equal(swept[1], 0.25 * swept[0])  # a power of two: exact in floating point
    model = gc.Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32, init_scale=0.25)
    assert torch.equal(Trainer(small_config(model=model), torch.device("cpu")).flat.detach()[0], swept[1])


@pytest.mark.parametrize("batch_size", [20, None])
def test_batches_are_without_replacement_and_capped(batch_size):
    """Each member draws min(batch_size, ceil(n / 2)) examples (Power et al.'s batch rule; with
    no batch size, half its split) from its own training split, without replacement, and never
    a padding slot, when the splits' sizes differ."""
    config = small_config(batch_size=batch_size, max_batch_fraction=0.5, sweep={"train_fraction": [0.31, 0.9]})
    trainer = Trainer(config, torch.device("cpu"))
    idx, share = trainer.sample_batch()
    for k, member in enumerate(trainer.members):
        n_train = int(member["train_fraction"] * 121)  # 37 (odd: half rounds up) and 108 (the cap binds)
        own = trainer.data.train_idx[k][trainer.data.train_weight[k] > 0].tolist()
        assert len(own) == n_train
        real = idx[k][share[k] > 0].tolist()
        assert len(real) == min(batch_size or n_train, -(-n_train // 2))
        assert len(set(real)) == len(real)
        assert set(real) <= set(own)
    trainer.step_count += 1
    assert not torch.equal(trainer.sample_batch()[0], idx)


def test_batches_are_the_smallest_hash_keys_worked_out_by_hand():
    """The draw itself, in plain Python integers: member k's batch at step t is the examples of
    its split with the B smallest keys hash(hash(hash(seed_k) ^ t) ^ example), in that order.
    It pins which examples every step trains on, so that a change of the trainer's code cannot
    silently change the book's runs."""
    M = 0xFFFFFFFF

    def hash32(x):
        x &= M
        x = ((x ^ (x >> 16)) * 0x7FEB352D) & M
        x = ((x ^ (x >> 15)) * 0x5BD1E995) & M
        return x ^ (x >> 16)

    config = small_config(batch_size=6, seeds=2, sweep={"train_fraction": [0.3, 0.6]})
    trainer = Trainer(config, torch.device("cpu"))
    for step in (0, 1, 17):
        trainer.step_count.fill_(step)
        idx, _ = trainer.sample_batch()
        for k, member in enumerate(trainer.members):
            split = trainer.data.train_idx[k][trainer.data.train_weight[k] > 0].tolist()  # padding last
            member_key = hash32(hash32(member["seed"] * 0x9E3779B1 + 0x632BE5AB) ^ step)
            keys = [hash32(member_key ^ (i * 0x85EBCA6B)) for i in range(len(split))]
            drawn = sorted(range(len(split)), key=keys.__getitem__)[:6]
            assert idx[k].tolist() == [split[i] for i in drawn]


def test_members_with_different_seeds_draw_different_batches():
    """Positions within each member's own split, so that differing splits cannot pass for differing draws."""
    trainer = Trainer(small_config(batch_size=8, seeds=2), torch.device("cpu"))
    idx, _ = trainer.sample_batch()
    positions = [sorted(trainer.data.train_idx[k].tolist().index(i) for i in idx[k].tolist()) for k in range(2)]
    assert positions[0] != positions[1]


def test_every_n_steps_schedules_include_the_first_and_last_step():
    config = small_config(steps=1000, eval_points=2, checkpoints=0, checkpoint_every=250, eval_every=300)
    evals = eval_schedule(config)
    assert {0, 300, 600, 900, 1000} <= set(evals)
    assert checkpoint_schedule(config, evals) == [0, 250, 500, 750, 1000]
    assert 1000 in eval_schedule(small_config(steps=1000, eval_points=2, checkpoints=0))
    uneven = small_config(steps=1000, eval_points=2, checkpoints=0, checkpoint_every=300)
    assert checkpoint_schedule(uneven, eval_schedule(uneven)) == [0, 300, 600, 900, 1000]


def test_the_trained_network_is_kept_where_the_interval_misses_the_last_step(tmp_path):
    run = gc.train(small_config(steps=31, eval_points=2, checkpoints=0, checkpoint_every=10), root=tmp_path, progress=False)
    assert run.checkpoint_steps == [0, 10, 20, 30, 31]
    last = torch.load(run.path / "checkpoints" / "step_0000031.pt", weights_only=False)
    assert last["step"] == 31


def test_schedules_are_log_spaced_and_dense_early():
    steps = log_steps(100_000, 50)
    assert steps[0] == 0 and steps[-1] == 100_000
    assert steps[:5] == [0, 1, 2, 3, 4]  # dense early: every one of the first steps
    ratios = [b / a for a, b in zip(steps[10:], steps[11:])]
    assert max(ratios) / min(ratios) < 1.5


def test_a_schedule_of_n_points_has_at_most_n():
    """checkpoints=1 keeps the trained network alone, 2 the initial one too (as the Gromov test
    wants), not a third at step 1."""
    assert log_steps(1000, 0) == [] and log_steps(1000, 1) == [1000] and log_steps(1000, 2) == [0, 1000]
    assert log_steps(1000, 3) == [0, 1, 1000]
    for steps in (1, 2, 7, 1000, 100_000):
        for n in range(1, 40):
            points = log_steps(steps, n)
            assert len(points) <= n and points == sorted(set(points)) and points[-1] == steps
            assert (0 in points) == (n >= 2)


def test_checkpoints_are_evaluations_nearest_to_log_spaced_steps():
    """Every checkpoint has metrics (it is an evaluation step): for each log-spaced target, the
    evaluation nearest to it on a log scale, plus every ``checkpoint_every`` steps."""
    config = small_config(steps=1000, eval_points=20, checkpoints=6, checkpoint_every=250)
    evals = eval_schedule(config)
    checkpoints = checkpoint_schedule(config, evals)
    assert set(checkpoints) <= set(evals)
    assert {0, 250, 500, 750, 1000} <= set(checkpoints)
    nearest = {min(evals, key=lambda e: abs(math.log1p(e) - math.log1p(w))) for w in log_steps(1000, 6)}
    assert set(checkpoints) == nearest | {0, 250, 500, 750, 1000}


def test_log_mode_writes_progress_lines_to_the_process_stderr(tmp_path, monkeypatch, capfd):
    """GROKCORE_PROGRESS=log (what `python -m grokcore run` gives its kernel): plain lines on
    the process's own stderr, which a notebook's kernel shares with the command's log."""
    monkeypatch.setenv("GROKCORE_PROGRESS", "log")
    monkeypatch.setattr(sys.modules["grokcore.train"], "LOG_EVERY_S", 0.0)
    gc.train(small_config(), root=tmp_path)
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("test-")]
    assert len(lines) == len(eval_schedule(small_config())), lines  # one per evaluation here
    assert "step 0 of 30, mean of 1 member(s): train_acc" in lines[0] and "step 30 of 30" in lines[-1]
    assert "left" not in lines[0] and "left" not in lines[-1] and all(re.search(r"; about \d+ s left\)$", line) for line in lines[1:-1])


def test_time_left_reads_in_the_unit_a_person_would_use():
    from grokcore.train import _time_left

    assert _time_left(100, 10.0, 400) == "; about 40 s left"
    assert _time_left(100, 10.0, 30_000) == "; about 50 min left"
    assert _time_left(100, 10.0, 6_000_000) == "; about 166.7 h left"
    assert _time_left(0, 3.0, 10) == "" and _time_left(10, 3.0, 0) == ""


def test_finished_run_is_loaded_not_retrained(tmp_path, monkeypatch):
    config = small_config()
    run = gc.train(config, root=tmp_path, progress=False)
    assert run.done and (run.path / "DONE").exists()
    assert run.path.name == f"test-{config.hash()}"
    meta = json.loads((run.path / "config.json").read_text())
    assert gc.RunConfig.from_dict(meta["config"]) == config

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(gc.train.__globals__["Trainer"], "__init__", fail)
    again = gc.train(config, root=tmp_path, progress=False)
    assert again.history.equals(run.history)


def test_run_finished_by_another_process_while_waiting_is_loaded_not_retrained(tmp_path, monkeypatch):
    config = small_config()
    done = gc.train(config, root=tmp_path / "done", progress=False).path
    train_module = sys.modules["grokcore.train"]
    real_exclusive = train_module.exclusive

    def lock_after_the_other_process_finished(path):
        # The other process finishes between this one's first look and its lock.
        path.mkdir(parents=True)
        for name in ("DONE", "config.json", "history.csv"):
            (path / name).write_bytes((done / name).read_bytes())
        return real_exclusive(path)

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train_module, "exclusive", lock_after_the_other_process_finished)
    monkeypatch.setattr(train_module.Trainer, "__init__", fail)
    run = gc.train(config, root=tmp_path / "racing", progress=False)
    assert run.done and not (run.path / "state.pt").exists()


def test_a_crash_between_evaluations_loses_at_most_save_every_s(tmp_path, monkeypatch):
    # Evaluations only at steps 0 and 200: the timed save must not wait for the next one.
    config = small_config(steps=200, eval_points=2, checkpoints=0)
    real_step = Trainer.train_step

    def crash_at_step_50(self):
        if int(self.step_count) == 50:
            raise RuntimeError("node lost")
        real_step(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_50)
    with pytest.raises(RuntimeError, match="node lost"):
        gc.train(config, root=tmp_path, progress=False, save_every_s=0.0)
    saved = torch.load(next(tmp_path.glob("test-*/state.pt")), weights_only=False)
    assert saved["trainer"]["step"] == 50


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"until": -5}, r"^until = -5 is not allowed"),
        ({"until": 2.5}, r"^until = 2.5 is not allowed"),
        ({"save_every_s": "60"}, r"^save_every_s = '60' is not allowed: must be a number of seconds >= 0"),
        ({"save_every_s": None}, r"^save_every_s = None is not allowed"),
        ({"save_every_s": float("nan")}, r"^save_every_s = nan is not allowed"),
        ({"save_every_s": -1}, r"^save_every_s = -1 is not allowed"),
        ({"precision": "fp16"}, r"^precision = 'fp16' is not allowed: must be one of 'fp32': exact float32; 'tf32': "),
        ({"precision": None}, r"^precision = None is not allowed"),
        ({"precision": ["bf16"]}, r"^precision = \['bf16'\] is not allowed"),
        ({"progress": "log"}, r"^progress = 'log' is not allowed: must be True or False, or None \(decided for you\)"),
        ({"torch_compile": "False"}, r"^torch_compile = 'False' is not allowed: must be True or False, or None"),
        ({"cuda_graphs": None}, r"^cuda_graphs = None is not allowed: must be True or False$"),
        ({"cuda_graphs": "no"}, r"^cuda_graphs = 'no' is not allowed"),
        ({"device": "gpu"}, r"^device = 'gpu' is not allowed: use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"device": "meta"}, r"^device = 'meta' is not allowed: use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        pytest.param(
            {"device": "cuda"}, r"^device = 'cuda' is not allowed: torch finds no GPU\(s\) here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
        ),
    ],
)
def test_train_refuses_bad_arguments_before_any_work(tmp_path, arguments, message):
    with pytest.raises(gc.ConfigError, match=message):
        gc.train(small_config(), root=tmp_path, **{"progress": False, **arguments})
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_what_is_not_a_run_config(tmp_path):
    with pytest.raises(gc.ConfigError, match=r"^config = dict is not allowed: must be a grokcore.RunConfig"):
        gc.train(small_config().to_dict(), root=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["yes", "true", "", "LOG"])
def test_an_unknown_progress_setting_is_refused_before_any_work(tmp_path, monkeypatch, value):
    monkeypatch.setenv("GROKCORE_PROGRESS", value)
    with pytest.raises(gc.ConfigError, match=r"^GROKCORE_PROGRESS = .* is not allowed: must be 0 \(none\), 1 \(bars\) or log"):
        gc.train(small_config(), root=tmp_path)
    assert list(tmp_path.iterdir()) == []
    for allowed in ("0", "1", "log"):
        monkeypatch.setenv("GROKCORE_PROGRESS", allowed)
        gc.train(small_config(steps=2), root=tmp_path)


@pytest.mark.parametrize("until", [17, 19])  # between evaluations, and at one
def test_resume_equals_uninterrupted_run(tmp_path, until):
    config = small_config(batch_size=16, steps=40, eval_points=12, seeds=2)
    assert (until in eval_schedule(config)) == (until == 19)
    whole = gc.train(config, root=tmp_path / "a", progress=False).history
    partial = gc.train(config, root=tmp_path / "b", until=until, progress=False)
    assert not partial.done
    assert torch.load(partial.path / "state.pt", weights_only=False)["trainer"]["step"] == until
    resumed = gc.train(config, root=tmp_path / "b", progress=False).history
    columns = [c for c in whole.columns if c != "wall_time"]
    assert len(whole) == len(resumed) == 2 * len(eval_schedule(config))
    assert whole[columns].equals(resumed[columns])


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_saves_after_the_step_and_a_second_stops_at_once(tmp_path, monkeypatch, capfd, presses):
    """One Ctrl-C (here in the middle of step 23) lets the step finish and saves the state; a
    second, while that step still runs (a long compile), stops at once and saves nothing, so the
    state on disk is the last periodic save. Either way a resumed run equals an uninterrupted one."""
    import signal

    from grokcore.train import Trainer

    config = small_config(steps=40, eval_points=12)
    whole = gc.train(config, root=tmp_path / "a", progress=False).history
    step_once = Trainer.train_step
    calls = []

    def step_with_ctrl_c(self):
        calls.append(1)
        if len(calls) == 24:  # step 23 of a run from 0
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
        return step_once(self)

    monkeypatch.setattr(Trainer, "train_step", step_with_ctrl_c)
    message = "stopped at step 24; state saved" if presses == 1 else "stopped at once by a second Ctrl-C"
    with pytest.raises(KeyboardInterrupt, match=message):
        gc.train(config, root=tmp_path / "b", progress=False, save_every_s=1e9)
    assert "Ctrl-C again stops at once" in capfd.readouterr().err
    state = tmp_path / "b" / config.run_name / "state.pt"
    assert state.exists() == (presses == 1)  # no periodic save in this short run
    monkeypatch.setattr(Trainer, "train_step", step_once)
    resumed = gc.train(config, root=tmp_path / "b", progress=False).history
    columns = [c for c in whole.columns if c != "wall_time"]
    assert whole[columns].equals(resumed[columns])


def test_a_stop_asked_for_in_the_last_step_still_stops_the_caller(tmp_path, monkeypatch):
    """SIGTERM in a run's last step: the run finishes (nothing is lost by ending it), and then
    the stop reaches the caller, so that a loop of runs (a notebook's, under SLURM) goes no
    further; before, it was dropped and the next run started."""
    import signal

    from grokcore.train import Preempted

    config = small_config(steps=10, eval_points=3)
    step_once = Trainer.train_step

    def step_with_sigterm(self):
        if int(self.step_count) == config.steps - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return step_once(self)

    monkeypatch.setattr(Trainer, "train_step", step_with_sigterm)
    with pytest.raises(Preempted, match=r"^stopped after finishing test-"):
        gc.train(config, root=tmp_path, progress=False)
    (path,) = tmp_path.iterdir()
    assert (path / "DONE").exists() and not (path / "state.pt").exists()


def test_a_resumed_run_drops_the_checkpoints_of_the_attempt_it_replaces(tmp_path):
    """A run lost after its last save may have written checkpoints past it; resumed, it writes
    its own, and none of the lost attempt's is left to be taken for its last network."""
    config = small_config(steps=40, eval_points=12, checkpoints=0, checkpoint_every=10)
    partial = gc.train(config, root=tmp_path, until=15, progress=False)
    stale = partial.path / "checkpoints" / "step_0000037.pt"  # as if the lost attempt's members stopped at 37
    torch.save({"flat": torch.zeros(1), "step": 37}, stale)
    run = gc.train(config, root=tmp_path, progress=False)
    assert not stale.exists()
    assert run.checkpoint_steps == [0, 10, 20, 30, 40]


def test_a_fresh_start_drops_what_an_attempt_lost_before_its_first_save_left(tmp_path):
    """Killed before its first save (no state.pt), an attempt leaves checkpoints and perhaps a
    history; the run starts afresh, and none of them is left to be taken for its own."""
    config = small_config(steps=40, eval_points=12, checkpoints=0, checkpoint_every=10)
    lost = gc.train(config, root=tmp_path, until=15, progress=False)
    (lost.path / "state.pt").unlink()  # as if it had died before saving
    stale = lost.path / "checkpoints" / "step_0000037.pt"  # as if its members had stopped at 37
    torch.save({"flat": torch.zeros(1), "step": 37}, stale)
    run = gc.train(config, root=tmp_path, progress=False)
    assert not stale.exists() and run.checkpoint_steps == [0, 10, 20, 30, 40]


def test_a_resumed_run_keeps_the_checkpoint_of_its_saved_step(tmp_path):
    """Saved at step 10, where it also checkpointed: the resumed run does not write step 10
    again (it was evaluated before the save), so that checkpoint must survive."""
    config = small_config(steps=40, eval_points=12, checkpoints=0, checkpoint_every=10)
    partial = gc.train(config, root=tmp_path, until=10, progress=False)
    kept = (partial.path / "checkpoints" / "step_0000010.pt").read_bytes()
    run = gc.train(config, root=tmp_path, progress=False)
    assert (run.path / "checkpoints" / "step_0000010.pt").read_bytes() == kept


def test_the_cpu_multiplies_in_float32_whatever_the_precision(tmp_path):
    """precision is how a GPU multiplies matrices: on the CPU "bf16" trains exactly as the
    default does, and the run records the float32 it used."""
    config = small_config()
    default = gc.train(config, root=tmp_path / "a", progress=False)
    bf16 = gc.train(config, root=tmp_path / "b", progress=False, precision="bf16")
    columns = [c for c in default.history.columns if c != "wall_time"]
    assert default.history[columns].equals(bf16.history[columns])
    assert json.loads((bf16.path / "config.json").read_text())["precision"] == "fp32"
    assert not Trainer(config, torch.device("cpu"), precision="bf16").bf16


def test_a_bf16_trainer_runs_its_step_forward_under_autocast(monkeypatch):
    """The wiring of precision="bf16" (a GPU's, which CI lacks): the step's forward runs inside
    a bfloat16 autocast without a cast cache, and the loss's gradient starts from float32."""
    trainer = Trainer(small_config(), torch.device("cpu"))
    entered = []

    def autocast(device_type, dtype=None, cache_enabled=True, **kwargs):
        entered.append((device_type, dtype, cache_enabled))
        return contextlib.nullcontext()

    monkeypatch.setattr(torch, "autocast", autocast)
    idx, share = trainer.sample_batch()
    trainer._outputs_and_gradient(trainer.flat, idx, share)
    assert entered == []  # not bf16: no autocast at all
    trainer.bf16 = True  # as on a GPU with precision="bf16"
    outputs, gradient = trainer._outputs_and_gradient(trainer.flat, idx, share)
    assert entered == [("cuda", torch.bfloat16, False)]
    assert outputs.dtype == gradient.dtype == torch.float32


def record_precision(run_path, precision):
    meta = json.loads((run_path / "config.json").read_text())
    (run_path / "config.json").write_text(json.dumps({**meta, "precision": precision}))


def test_a_run_started_in_bf16_is_not_resumed_in_another_precision(tmp_path):
    """The precision is not in the config's hash, and bf16 changes what a run measures: resuming
    across it is refused before any work, and a finished run is returned with a warning."""
    config = small_config()
    partial = gc.train(config, root=tmp_path, until=10, progress=False)
    record_precision(partial.path, "bf16")  # as a GPU run in bf16 records it
    state = (partial.path / "state.pt").read_bytes()
    # bf16 asked for rightly, or not, but the CPU multiplies in float32: said so, not "pass bf16".
    for precision in ("bf16", "tf32"):
        with pytest.raises(gc.ConfigError, match=r"^test-.* started with precision = 'bf16', which the CPU cannot continue"):
            gc.train(config, root=tmp_path, progress=False, precision=precision)
    assert (partial.path / "state.pt").read_bytes() == state
    record_precision(partial.path, "tf32")  # TF32 and float32 differ only in rounding: resumed
    run = gc.train(config, root=tmp_path, progress=False)
    record_precision(run.path, "bf16")
    with pytest.warns(UserWarning, match=r"was trained with precision = 'bf16', not 'tf32'"):
        assert gc.train(config, root=tmp_path, progress=False).done
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # returned as asked for: nothing to warn of
        assert gc.train(config, root=tmp_path, progress=False, precision="bf16").done
        # A run asked for in bf16 on the CPU, which records the float32 it used, returned as asked again.
        cpu = gc.train(config, root=tmp_path / "cpu", progress=False, precision="bf16")
        assert json.loads((cpu.path / "config.json").read_text())["precision"] == "fp32"
        assert gc.train(config, root=tmp_path / "cpu", progress=False, precision="bf16").done


def test_a_bf16_run_on_a_gpu_is_resumed_only_in_bf16(tmp_path):
    """On a GPU (the CPU's device_precision is float32, so the check is told a GPU's), resuming
    a bf16 run in another precision names the one to pass."""
    from grokcore.train import _check_same_precision

    partial = gc.train(small_config(), root=tmp_path, until=10, progress=False)
    record_precision(partial.path, "bf16")
    gpu = torch.device("cuda")
    with pytest.raises(gc.ConfigError, match=r"^precision = 'tf32' is not allowed for resuming test-.*: pass precision='bf16'"):
        _check_same_precision(partial.path, "tf32", gpu, finished=False)
    _check_same_precision(partial.path, "bf16", gpu, finished=False)  # no error


def test_checkpoints_restore_the_network(tmp_path):
    config = small_config()
    run = gc.train(config, root=tmp_path, progress=False)
    steps = run.checkpoint_steps
    assert steps[0] == 0 and steps[-1] == config.steps and len(steps) >= 3
    model = run.model()
    inputs, targets = config.task.examples()
    _, val_idx = config.task.split(0)
    with torch.no_grad():
        correct = (model(inputs[val_idx]).argmax(-1) == targets[val_idx]).sum().item()
    last = run.history.iloc[-1]
    # Exactly the fraction, as a float64: 9 of 10 must read 0.9, not float32's 0.8999999762.
    assert last["val_acc"] == correct / len(val_idx)
    with pytest.raises(ValueError, match=r"^member = 1 is not allowed: this run has members 0 to 0"):
        run.model(member=1)


def test_tracked_norms_are_those_of_the_named_modules_alone(tmp_path):
    """"blocks.1" is block 1, not blocks 10 and 11 too; a trailing dot changes nothing."""
    model = gc.Transformer(n_layers=12, d_model=8, n_heads=2, d_mlp=8)
    config = small_config(model=model, steps=1, track_norms=("blocks.1", "unembed."))
    first = gc.train(config, root=tmp_path, progress=False).history.iloc[0]
    network = build_member(config, config.members()[0])
    by_hand = lambda module: math.sqrt(sum(float((p.detach().double() ** 2).sum()) for p in module.parameters()))  # noqa: E731
    assert first["norm_blocks.1"] == pytest.approx(by_hand(network.blocks[1]), rel=1e-6)
    assert first["norm_unembed."] == pytest.approx(by_hand(network.unembed), rel=1e-6)
    assert first["weight_norm"] == pytest.approx(by_hand(network), rel=1e-6)


def test_building_members_leaves_the_callers_gpu_generators_alone(monkeypatch):
    """torch.manual_seed reseeds every GPU too (or queues it until CUDA starts): a run must not."""
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", seeded.append)
    monkeypatch.setattr(torch.cuda, "manual_seed", seeded.append)
    Trainer(small_config(seeds=3), torch.device("cpu"))
    assert seeded == []


def test_a_prefix_that_names_no_parameter_leaves_no_run_folder(tmp_path):
    config = small_config(track_norms=("unembedding",))
    with pytest.raises(gc.ConfigError, match="unembedding"):
        gc.train(config, root=tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_a_failed_clean_up_does_not_hide_the_error(tmp_path, monkeypatch):
    """On NFS an unlinked open file leaves a .nfs file behind and rmdir fails: the caller must
    still see the config's error, not the clean-up's."""

    def busy(self):
        raise OSError(39, "Directory not empty")

    monkeypatch.setattr(type(tmp_path), "rmdir", busy)
    with pytest.raises(gc.ConfigError, match="unembedding"):
        gc.train(small_config(track_norms=("unembedding",)), root=tmp_path, progress=False)


def test_hash_is_stable_and_sensitive():
    a, b = small_config(), small_config()
    assert a.hash() == b.hash()
    assert small_config(steps=31).hash() != a.hash()
    assert small_config(optim=gc.AdamW(lr=3e-3, weight_decay=0.5, warmup_steps=6)).hash() != a.hash()
    # The same sweep written with ints or floats is the same run.
    as_ints, as_floats = small_config(sweep={"weight_decay": [0, 1]}), small_config(sweep={"weight_decay": [0.0, 1.0]})
    assert as_ints.hash() == as_floats.hash()
    groups = lambda value: small_config(optim=gc.AdamW(groups={"embed": {"lr": value}})).hash()  # noqa: E731
    assert groups(1) == groups(1.0) != groups(2.0)
    # Groups of disjoint modules, written in either order, are one run.
    two = {"embed": {"lr": 1e-3}, "blocks.1": {"lr": 1e-2}, "blocks.10": {"weight_decay": 0.0}}
    in_order = small_config(optim=gc.AdamW(groups=two)).hash()
    assert small_config(optim=gc.AdamW(groups=dict(reversed(two.items())))).hash() == in_order


def metrics_by_hand(run, step, member, config):
    """A member's mean losses and accuracies at checkpoint ``step`` (None: the last) on its own
    training and validation examples, counted one example at a time."""
    inputs, targets = config.task.examples()
    settings = config.members()[member]
    splits = dict(zip(("train", "val"), config.task.member_split(settings)))
    out = {}
    for name, idx in splits.items():
        with torch.no_grad():
            logits = run.model(step, member)(inputs[idx])
        losses = F.cross_entropy(logits, targets[idx], reduction="none").tolist()
        right = [int(a == b) for a, b in zip(logits.argmax(-1).tolist(), targets[idx].tolist())]
        out[f"{name}_loss"], out[f"{name}_acc"] = sum(losses) / len(losses), sum(right) / len(right)
    return out


def test_stop_at_freezes_members(tmp_path):
    config = small_config(task=gc.AlgorithmicTask(op="x+y", p=11, train_fraction=0.9), steps=400, stop_at=0.5, eval_points=40)
    run = gc.train(config, root=tmp_path, progress=False)
    h = run.history
    assert h["val_acc"].iloc[-1] >= 0.5
    assert h["step"].max() < 400
    # The network as it stopped is kept, and it is the one that reached stop_at.
    assert run.checkpoint_steps[-1] == h["step"].max()
    assert metrics_by_hand(run, None, 0, config)["val_acc"] == pytest.approx(h["val_acc"].iloc[-1], abs=1e-6)


def test_split_seed_draws_the_split_apart_from_the_initialisation(tmp_path):
    """Sweeping split_seed: members of one seed start from the same weights on their own
    splits, and members of one split seed share it. The metrics recorded at step 0 are
    counted again by hand on task.split(split_seed)."""
    config = small_config(steps=5, eval_points=3, checkpoints=2, seeds=2, sweep={"split_seed": [7, 8]})
    run = gc.train(config, root=tmp_path, progress=False)
    members = [(m["seed"], m["split_seed"]) for m in config.members()]
    assert members == [(0, 7), (1, 7), (0, 8), (1, 8)]
    start = run.flat_params(0)
    assert torch.equal(start[0], start[2]) and torch.equal(start[1], start[3])
    assert not torch.equal(start[0], start[1])
    inputs, targets = config.task.examples()
    recorded = run.history.query("step == 0").set_index("member")
    assert recorded["split_seed"].tolist() == [7, 7, 8, 8]
    for member, (_, split_seed) in enumerate(members):
        for name, idx in zip(("train", "val"), config.task.split(split_seed)):
            with torch.no_grad():
                logits = run.model(0, member)(inputs[idx])
            losses = F.cross_entropy(logits, targets[idx], reduction="none").tolist()
            assert recorded.loc[member, f"{name}_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def two_speed_config(**changes):
    """Member 0 (lr 1e-2) reaches 50% validation accuracy early; member 1 (lr 1e-6) never does."""
    return small_config(task=gc.AlgorithmicTask(op="x+y", p=11, train_fraction=0.9), steps=300, stop_at=0.5,
                        eval_points=30, sweep={"lr": [1e-2, 1e-6]}, **changes)


def test_a_stopped_member_is_frozen_while_the_other_trains_on(tmp_path):
    config = two_speed_config(checkpoints=30)
    run = gc.train(config, root=tmp_path, progress=False)
    h = run.history
    h0, h1 = h[h.member == 0], h[h.member == 1]
    stop = int(h0.step.max())
    assert stop < 300 and h1.step.max() == 300
    assert (h0.val_acc.iloc[:-1] < 0.5).all() and h0.val_acc.iloc[-1] >= 0.5  # stopped at the first row there
    later = [s for s in run.checkpoint_steps if s > stop]
    assert later
    at_stop = run.flat_params(stop)[0]
    for step in later:  # neither decayed nor pushed on by its momentum
        assert torch.equal(run.flat_params(step)[0], at_stop), step
    assert metrics_by_hand(run, later[-1], 0, config)["val_acc"] == pytest.approx(h0.val_acc.iloc[-1])


def test_stop_at_one_stops_at_the_first_perfect_evaluation(tmp_path):
    # Gromov's quadratic MLP: 100% near step 250 of 600 for every seed we tried, past 99% before.
    # (A tiny transformer's 5-pair validation set flickered, and whether it reached 100% at
    # all changed with the CPU's thread count.)
    config = small_config(task=gc.AlgorithmicTask(op="x+y", p=17, train_fraction=0.6, op_token=False, loss="mse"),
                          model=gc.ModularMLP(width=64), batch_size=None, steps=600, stop_at=1.0, eval_points=60,
                          optim=gc.AdamW(lr=5e-3, weight_decay=5.0, betas=(0.9, 0.98), warmup_steps=0), checkpoints=0)
    h = gc.train(config, root=tmp_path, progress=False).history
    assert (h.val_acc == 1.0).any(), "the run must reach 100% for this test to mean anything"
    assert (h.val_acc >= 0.99).sum() > 1, "and pass 99% before, so that stopping there would differ"
    assert h.step.max() == h.loc[h.val_acc == 1.0, "step"].min()


def test_resume_after_a_member_stopped_keeps_it_stopped(tmp_path):
    config = two_speed_config(checkpoints=2)
    whole = gc.train(config, root=tmp_path / "a", progress=False)
    stop = int(whole.history.query("member == 0").step.max())
    gc.train(config, root=tmp_path / "b", until=stop + 7, progress=False)
    resumed = gc.train(config, root=tmp_path / "b", progress=False)
    columns = [c for c in whole.history.columns if c != "wall_time"]
    assert whole.history[columns].equals(resumed.history[columns])
    assert torch.equal(whole.flat_params(300), resumed.flat_params(300))


def test_each_member_s_history_carries_its_own_settings_and_metrics(tmp_path):
    config = small_config(seeds=2, sweep={"lr": [1e-3, 5e-3], "weight_decay": [0.0, 1.0]}, batch_size=16, steps=12)
    run = gc.train(config, root=tmp_path, progress=False)
    h = run.history
    for k, member in enumerate(config.members()):
        rows = h[h.member == k]
        assert list(rows.step) == sorted(rows.step)
        for key in ("seed", "lr", "weight_decay"):
            assert (rows[key] == member[key]).all(), key
        assert rows.val_acc.iloc[-1] == pytest.approx(metrics_by_hand(run, 12, k, config)["val_acc"])


def test_history_file_reads_back_as_the_rows_written(tmp_path):
    """write_history's csv, read as Run reads it: a row per member and evaluation, sorted by
    member and step, with the member's seed and swept values; a diverged loss (nan, inf) and a
    sweep of ints and floats come back as written."""
    import pandas as pd

    config = small_config(seeds=2, sweep={"lr": [1, 0.5]})
    trainer = Trainer(config, torch.device("cpu"))
    n = len(trainer.metric_names)
    members = config.members()
    rows = [[k, step, *[step + k / 10] * n, step / 100] for step in (10, 0, 5) for k in range(len(members))]
    rows[0][2], rows[1][3] = math.nan, math.inf
    write_history(tmp_path, trainer, rows)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history.columns) == ["member", "seed", "lr", "step", *trainer.metric_names, "wall_time"]
    expected = sorted(rows, key=lambda row: (row[0], row[1]))
    assert len(history) == len(expected) == 3 * len(members)
    for (_, got), (k, step, *metrics, wall) in zip(history.iterrows(), expected):
        assert (got.member, got.step, got.seed, got.lr) == (k, step, members[k]["seed"], members[k]["lr"])
        values = [got[name] for name in trainer.metric_names] + [got.wall_time]
        for value, want in zip(values, [*metrics, wall]):
            assert value == want or (math.isnan(value) and math.isnan(want))


@pytest.mark.parametrize("joined", [False, True], ids=["apart", "joined"])  # the CPU's passes, a GPU's
@pytest.mark.parametrize(
    "changes",
    [
        {},  # one member
        {"seeds": 2},  # each member's own splits (the split follows the seed), of one width
        {"sweep": {"lr": [3e-3, 1e-2]}},  # one validation set that both members share: a pass of its own
        {"sweep": {"train_fraction": [0.3, 0.8]}},  # padded rows of one width, each member's own
    ],
)
def test_metrics_are_each_member_s_own_counted_by_hand(tmp_path, monkeypatch, changes, joined):
    """Each member's losses and accuracies count its own real examples alone, however the
    evaluation lays its splits out: padded rows of members of different training fractions,
    one set shared by all members, and the training and validation sets in one forward pass
    (as on a GPU) or apart (as on the CPU)."""
    train_module = sys.modules["grokcore.train"]
    passes = train_module.eval_passes
    monkeypatch.setattr(train_module, "eval_passes", lambda evals, members, join: passes(evals, members, joined))
    config = small_config(steps=100, eval_points=4, checkpoints=2, **changes)
    run = gc.train(config, root=tmp_path, progress=False)
    for k in range(len(config.members())):
        last = run.history[run.history.member == k].iloc[-1]
        assert last.step == 100
        for name, value in metrics_by_hand(run, 100, k, config).items():
            assert last[name] == pytest.approx(value, rel=1e-5), (k, name)


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"steps": 0}, "steps"),
        ({"batch_size": 0}, "batch_size"),
        ({"seeds": 0}, "seeds"),
        ({"sweep": {"lrr": [1e-3]}}, "sweep key 'lrr'"),
        ({"sweep": {"lr": [-1.0]}}, r"sweep\['lr'\] = .*: lr = "),
        ({"sweep": {"train_fraction": [1.5]}}, r"sweep\['train_fraction'\] = .*: train_fraction = "),
        ({"stop_at": 2.0}, "stop_at"),
        ({"stop_at": 0.0}, "stop_at"),
        ({"name": "../elsewhere"}, "name"),
        ({"name": "a/b"}, "name"),
        ({"task": gc.Transformer(), "model": gc.AlgorithmicTask()}, "task"),
        ({"model": gc.AlgorithmicTask()}, "model"),
        ({"optim": gc.Transformer()}, "optim"),
        # 0.1% of the 121 equations of p = 11 is not one equation.
        ({"sweep": {"train_fraction": [0.5, 0.001]}}, r"sweep\['train_fraction'\] = .*: train_fraction = "),
        # NaN fails every comparison, so a range check alone would let it through.
        ({"sweep": {"lr": [float("nan")]}}, r"sweep\['lr'\] = .*: lr = "),
        ({"stop_at": float("nan")}, "stop_at"),
        ({"optim": gc.AdamW(), "sweep": {"weight_decay": [float("inf")]}}, r"sweep\['weight_decay'\] = .*: weight_decay = "),
        ({"sweep": [1e-3]}, "sweep"),
        ({"track_norms": ("unembed", "unembed")}, "track_norms"),
        ({"track_norms": ("",)}, "track_norms"),
        ({"seed": 2**32 - 1, "seeds": 2}, "seed"),
        ({"seed": 10**400}, "seed"),
        ({"stop_at": 10**400}, "stop_at"),  # an int beyond float's range: no OverflowError
        ({"sweep": {"lr": [10**400]}}, r"sweep\['lr'\] = "),
    ],
)
def test_run_config_rejects_bad_values(changes, name):
    with pytest.raises(gc.ConfigError, match=rf"^{name}"):
        small_config(**changes)


def test_the_largest_seeds_allowed_train():
    trainer = Trainer(small_config(seed=2**32 - 2, seeds=2), torch.device("cpu"))
    assert trainer.seeds.tolist() == [2**32 - 2, 2**32 - 1]
    trainer.train_step()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": float("nan")}, "lr = nan"),
        ({"groups": [1]}, "groups = [1]"),
        ({"groups": {"embed": {"lr": float("nan")}}}, "groups['embed']['lr'] = nan"),
        ({"groups": {"embed": {"momentum": 0.9}}}, "groups['embed'] = "),
        ({"groups": {1: {"lr": 1e-3}}}, "groups key 1 "),
        # A parameter in two groups: which values it took would depend on the dict's order.
        ({"groups": {"blocks": {"lr": 1e-3}, "blocks.0": {"lr": 1e-2}}}, "groups keys 'blocks' and 'blocks.0' "),
        ({"groups": {"blocks-x": {"lr": 1e-3}, "blocks.0.mlp": {"lr": 1e-2}, "blocks": {"lr": 1e-4}}},
         "groups keys 'blocks.0.mlp' and 'blocks' "),
        ({"groups": {"embed.": {"lr": 1e-3}, "embed": {"lr": 1e-2}}}, "groups keys 'embed.' and 'embed' "),
        ({"betas": (0.9, 1.0)}, "betas = "),
        ({"lr": 10**400}, "lr = 1000"),
        ({"groups": {"embed": {"lr": 10**400}}}, "groups['embed']['lr'] = 1000"),
    ],
)
def test_adamw_rejects_bad_values(kwargs, message):
    with pytest.raises(gc.ConfigError, match="^" + re.escape(message)):
        gc.AdamW(**kwargs)


def test_cpu_chunk_size_bounds_a_chunk_to_2_pow_26_weight_examples():
    assert cpu_chunk_size(8, 420_096 * 512) == 1  # Power 2x128: one member at a time
    assert cpu_chunk_size(64, 11_904 * 480) == 11  # 2**26 // 5,713,920
    assert cpu_chunk_size(8, 11_904 * 480) is None  # all 8 fit in one chunk


FAULTS_PER_STEP = """
import resource, statistics, torch
import grokcore as gc
from grokcore.train import Trainer

config = gc.RunConfig(
    name="faults",
    task=gc.AlgorithmicTask(op="x+y", p=31, op_token=False, loss="mse"),
    model=gc.ModularMLP(width=128),
    batch_size=None,
    steps=10,
    seeds=8,
)
trainer = Trainer(config, torch.device("cpu"))
faults = []
for _ in range(25):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    trainer.train_step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults[5:]))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the C library is not glibc")
def test_cpu_steps_reuse_freed_memory_instead_of_page_faulting():
    """With glibc's defaults a step of this ensemble takes about 1,000 minor page faults
    (freed blocks go back to the kernel and come back zeroed); kept, almost none. A fresh
    process, so that only the Trainer can have changed the allocator."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP], env=env, capture_output=True, text=True, check=True)
    assert float(out.stdout.split()[-1]) < 20


@pytest.mark.parametrize("model", MODELS, ids=["vmap", "forward_members"])
@pytest.mark.parametrize("batch_size, chunk", [(16, None), (None, 2)])  # minibatches; full batch in chunks of 2
def test_stopped_members_cost_no_cpu_work_and_leave_the_others_unchanged(batch_size, chunk, model, monkeypatch):
    monkeypatch.setattr(sys.modules["grokcore.train"], "cpu_chunk_size", lambda members, work: chunk)
    config = small_config(model=model, seeds=3, sweep={"lr": [1e-3, 5e-3]}, batch_size=batch_size)  # 6 members
    whole, pruned = Trainer(config, torch.device("cpu")), Trainer(config, torch.device("cpu"))
    for _ in range(5):
        whole.train_step()
        pruned.train_step()
    for k in (1, 4):  # as the training loop does when a member reaches stop_at
        pruned.stopped_at[k], pruned.active[k] = 5, 0.0
    frozen = pruned.flat.detach()[[1, 4]].clone()
    members_run, forward = [], pruned._forward
    pruned._forward = lambda params, x: members_run.append(x.shape[0]) or forward(params, x)
    for _ in range(10):
        whole.train_step()
        pruned.train_step()
    assert members_run == [4] * 10  # forward and backward of the 4 members still training only
    live = [0, 2, 3, 5]
    assert torch.allclose(whole.flat.detach()[live], pruned.flat.detach()[live], atol=1e-6, rtol=1e-5)
    assert torch.equal(pruned.flat.detach()[[1, 4]], frozen)
    pruned.stopped_at, pruned.active[:] = [5] * 6, 0.0  # all stopped: a step changes nothing
    before = pruned.flat.detach().clone()
    pruned.train_step()
    assert torch.equal(pruned.flat.detach(), before)


@pytest.mark.parametrize("seeds", [1, 2])  # 5 members sharing one validation set; 10, each with its own
@pytest.mark.parametrize("chunk", [1, 2])  # one at a time without vmap; in chunks of 2 through vmap or the model's own
@pytest.mark.parametrize("model", MODELS, ids=["vmap", "forward_members"])
def test_members_run_in_chunks_train_exactly_as_all_at_once(model, chunk, seeds, monkeypatch):
    config = small_config(model=model, seeds=seeds, sweep={"lr": [1e-3, 2e-3, 3e-3, 4e-3, 5e-3]}, batch_size=16)
    members = 5 * seeds
    whole = Trainer(config, torch.device("cpu"))
    asked, calls = [], []
    train = sys.modules["grokcore.train"]
    monkeypatch.setattr(train, "cpu_chunk_size", lambda members, work: asked.append(members) or chunk)
    # Count the calls of what runs a chunk: the model's forward_members, or the network through
    # functional_call (which vmap calls once per chunk, and the one-at-a-time path once per member).
    if isinstance(model, gc.ModularMLP):
        inner = gc.models.ModularMLPModel.forward_members
        counted = lambda self, *args: calls.append(1) or inner(self, *args)  # noqa: E731
        monkeypatch.setattr(gc.models.ModularMLPModel, "forward_members", counted)
    else:
        inner = train.functional_call
        monkeypatch.setattr(train, "functional_call", lambda *args: calls.append(1) or inner(*args))
    vmapped, real_vmap = [], train.vmap
    monkeypatch.setattr(train, "vmap", lambda f, **kw: vmapped.append(kw["chunk_size"]) or real_vmap(f, **kw))
    chunked = Trainer(config, torch.device("cpu"))
    assert asked == [members]
    # Through vmap only the transformer in chunks of 2 (training and shared-input forwards).
    assert vmapped == ([2, 2] if chunk == 2 and isinstance(model, gc.Transformer) else [])
    for _ in range(10):
        whole.train_step()
        calls.clear()
        chunked.train_step()
        assert len(calls) == math.ceil(members / chunk)  # 5 members in chunks of 2: the last is short
    assert torch.allclose(whole.flat.detach(), chunked.flat.detach(), atol=1e-6, rtol=1e-5)
    assert torch.allclose(whole.evaluate(), chunked.evaluate(), atol=1e-6, rtol=1e-5)

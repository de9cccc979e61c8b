"""Fourier measures against brute-force sums written out with math.cos / math.sin, the
progress measures against a network measured by hand, and an ensemble member's measures
against a run of its seed alone."""

import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import grokcore as gc
from grokcore.measures import fourier


@pytest.mark.parametrize("p", [5, 7, 13])
def test_basis_is_orthonormal(p):
    basis, names = fourier.fourier_basis(p)
    assert basis.shape == (p, p) and len(names) == p
    assert torch.allclose(basis @ basis.T, torch.eye(p), atol=1e-6)


def brute_frequency_norms(matrix, p):
    out = []
    for k in range((p - 1) // 2 + 1):
        total = 0.0
        for j in range(len(matrix[0])):
            if k == 0:
                c = sum(matrix[x][j] for x in range(p)) / math.sqrt(p)
                total += c * c
            else:
                c = sum(matrix[x][j] * math.cos(2 * math.pi * k * x / p) for x in range(p)) * math.sqrt(2 / p)
                s = sum(matrix[x][j] * math.sin(2 * math.pi * k * x / p) for x in range(p)) * math.sqrt(2 / p)
                total += c * c + s * s
        out.append(math.sqrt(total))
    return out


def test_frequency_norms_match_brute_force():
    random.seed(0)
    p = 7
    m = [[random.gauss(0, 1) for _ in range(3)] for _ in range(p)]
    ours = fourier.frequency_norms(torch.tensor(m), p).tolist()
    assert ours == pytest.approx(brute_frequency_norms(m, p), abs=1e-5)


def test_gini_matches_mean_difference_formula():
    random.seed(1)
    xs = [random.random() for _ in range(20)]
    n = len(xs)
    brute = sum(abs(a - b) for a in xs for b in xs) / (2 * n * sum(xs))
    # Hurley & Rickard's sorted-sum form equals the classical mean-difference Gini.
    assert fourier.gini(torch.tensor(xs, dtype=torch.float64)) == pytest.approx(brute, abs=1e-12)
    assert fourier.gini(torch.ones(10)) == pytest.approx(0.0, abs=1e-12)
    assert fourier.gini(torch.tensor([0.0] * 99 + [1.0])) == pytest.approx(0.99, abs=1e-9)


def test_neuron_frequency_of_a_pure_wave():
    p, k = 11, 3
    acts = []
    for a in range(p):
        for b in range(p):
            acts.append([math.cos(2 * math.pi * k * (a + b) / p + 0.4), math.cos(2 * math.pi * 2 * a / p) + 0.01 * math.sin(b)])
    freq, frac = fourier.neuron_frequencies(torch.tensor(acts), p)
    assert freq[0] == k and frac[0] == pytest.approx(1.0, abs=1e-5)
    assert freq[1] == 2 and frac[1] > 0.99


def explained_by_least_squares(values, p, k):
    """The share of a function of (a, b)'s variance that a least-squares fit on
    {1, cos, sin}(w_k a) x {1, cos, sin}(w_k b) explains (numpy's lstsq, math.cos, math.sin).
    ``values`` over all pairs, a-major: one function, or one per column."""
    trig = [lambda x: 1.0, lambda x: math.cos(2 * math.pi * k * x / p), lambda x: math.sin(2 * math.pi * k * x / p)]
    design = np.array([[f(a) * g(b) for f in trig for g in trig] for a in range(p) for b in range(p)])
    y = np.array(values)
    residual = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    return 1 - (residual**2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def test_neuron_frequencies_explain_variance_not_the_mean():
    """A neuron is its frequency's share of its variance: an offset (a neuron's mean firing
    rate) must not count as explained, or every neuron would pass the 85% threshold."""
    p = 11
    wave = lambda k, x: math.cos(2 * math.pi * k * x / p)  # noqa: E731
    neuron = [5 + wave(2, a + b) + 0.8 * wave(3, a) for a in range(p) for b in range(p)]
    freq, frac = fourier.neuron_frequencies(torch.tensor(neuron)[:, None], p)
    expected = explained_by_least_squares(neuron, p, 2)
    assert expected == pytest.approx(0.5 / 0.82, abs=1e-9)  # mean squares 1/2 and 0.8^2 / 2
    assert freq[0] == 2 and frac[0] == pytest.approx(expected, abs=1e-5)


def brute_restricted_excluded(logits, p, freqs, train):
    """Project each class's logit surface onto cos/sin(w(a+b)) by explicit sums."""
    pairs = [(a, b) for a in range(p) for b in range(p)]
    restricted = [[0.0] * p for _ in pairs]
    excluded = [[0.0] * p for _ in pairs]
    for c in range(p):
        column = [logits[i][c] for i in range(len(pairs))]
        mean = sum(column) / len(column)
        along = [0.0] * len(pairs)
        for k in freqs:
            for trig in (math.cos, math.sin):
                d = [trig(2 * math.pi * k * (a + b) / p) for a, b in pairs]
                norm = math.sqrt(sum(v * v for v in d))
                coef = sum(u * v for u, v in zip(column, d)) / norm
                along = [s + coef * v / norm for s, v in zip(along, d)]
        for i in range(len(pairs)):
            restricted[i][c] = along[i] + mean
            excluded[i][c] = column[i] - along[i]
    target = torch.tensor([(a + b) % p for a, b in pairs])
    r = F.cross_entropy(torch.tensor(restricted, dtype=torch.float64), target).item()
    mask = torch.tensor(train)
    e = F.cross_entropy(torch.tensor(excluded, dtype=torch.float64)[mask], target[mask]).item()
    return r, e


def test_restricted_and_excluded_loss_match_brute_force():
    torch.manual_seed(0)
    p = 7
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
    c = torch.arange(p)
    # Logits of an ideal circuit on frequency 2, plus noise.
    logits = 3 * torch.cos(2 * math.pi * 2 * ((a + b)[:, None] - c[None, :]) / p) + 0.3 * torch.randn(p * p, p)
    train = (torch.rand(p * p) < 0.5).tolist()
    ours = fourier.restricted_and_excluded_loss(logits, p, [2], torch.tensor(train))
    assert ours == pytest.approx(brute_restricted_excluded(logits.tolist(), p, [2], train), rel=1e-4)
    # The circuit lives on frequency 2: keeping it is far better than removing it.
    assert ours[0] < ours[1]


def test_progress_measures_of_a_member_equal_those_of_its_seed_trained_alone(tmp_path):
    """The chapter's per-seed table reads member k of one run: it must see seed k's network
    and seed k's training split, exactly as a run of that seed alone would."""
    def run(**seeds):
        config = gc.RunConfig(
            name="fourier-members",
            task=gc.AlgorithmicTask(op="x+y", p=11, train_fraction=0.5, op_token=False),
            model=gc.Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32, norm="none", bias="mlp", init="nanda"),
            optim=gc.AdamW(lr=3e-3, weight_decay=1.0),
            steps=30,
            batch_size=None,
            checkpoint_every=10,
            **seeds,
        )
        return gc.train(config, root=tmp_path, progress=False)

    together, alone = run(seed=3, seeds=2), run(seed=4)
    freqs = [1, 2]  # fixed, so the comparison does not hinge on which frequencies get picked
    measured, _ = fourier.progress_measures(together, member=1, key_freqs=freqs)
    expected, _ = fourier.progress_measures(alone, member=0, key_freqs=freqs)
    assert list(measured.step) == list(expected.step)
    assert {0, 10, 20, 30} <= set(expected.step)
    for column in expected.columns.drop("step"):
        assert measured[column].tolist() == pytest.approx(expected[column].tolist(), rel=1e-4), column
    # Each row reads its own checkpoint: the weights' norm is the one training logged at that step.
    logged = together.history.query("member == 1").set_index("step").weight_norm
    assert measured.sum_sq_weights.pow(0.5).tolist() == pytest.approx(logged[measured.step].tolist(), rel=1e-5)


def neuron_logit_map_by_perturbation(model, p, d_mlp):
    """W_L[c, n]: how much residue c's logit moves when neuron n of the last MLP fires one
    unit more at the readout, measured by running the network with that neuron nudged."""
    x = torch.tensor([[0, 0, p]])
    columns = []
    for n in range(d_mlp):
        def nudge(module, inputs, out, n=n):
            out = out.clone()
            out[:, -1, n] += 1.0
            return out

        with torch.no_grad():
            base = model(x)[0, :p]
            hook = model.blocks[-1].mlp.act.register_forward_hook(nudge)
            moved = model(x)[0, :p]
            hook.remove()
        columns.append((moved - base).tolist())
    return [list(row) for row in zip(*columns)]  # (p, d_mlp)


def mlp_neurons_by_hand(model, p):
    """The MLP neurons after the ReLU at the readout position (the "="), for every pair
    (a, b), a-major, worked out from the weights in float64 for one block without LayerNorm
    (Nanda et al.'s): embedding plus position, each head's causal attention from "=" with its
    softmax written out, the residual, then relu(W_in x + b)."""
    w = {name: t.detach().double() for name, t in model.named_parameters()}
    n_heads = model.blocks[0].attn.n_heads
    rows = []
    for a in range(p):
        for b in range(p):
            x = w["embed.weight"][[a, b, p]] + w["pos.weight"][:3]  # (3, d_model)
            q, k, v = (x @ w["blocks.0.attn.qkv.weight"].T).chunk(3, dim=1)
            d_head = q.shape[1] // n_heads
            mixed = []
            for h in range(n_heads):
                s = slice(h * d_head, (h + 1) * d_head)
                pattern = torch.softmax(k[:, s] @ q[2, s] / math.sqrt(d_head), 0)  # "=" sees all three
                mixed.append(pattern @ v[:, s])
            resid = x[2] + w["blocks.0.attn.out.weight"] @ torch.cat(mixed)
            rows.append(torch.relu(w["blocks.0.mlp.inp.weight"] @ resid + w["blocks.0.mlp.inp.bias"]))
    return torch.stack(rows)


def gini_by_mean_difference(xs):
    return sum(abs(a - b) for a in xs for b in xs) / (2 * len(xs) * sum(xs))


def test_progress_measures_equal_the_network_measured_by_hand(tmp_path):
    """Every measure at the last checkpoint of a short run, recomputed from the network alone:
    logits of each pair (a, b) fed one by one, the training pairs read off the task's own
    examples, Fourier norms written out with math.cos / math.sin, the neuron-logit map by
    nudging each neuron, Gini coefficients by the mean-difference formula, the MLP neurons
    from the weights and their frequencies by least squares."""
    p, d_mlp = 11, 32
    config = gc.RunConfig(
        name="fourier-by-hand",
        task=gc.AlgorithmicTask(op="x+y", p=p, train_fraction=0.5, op_token=False),
        model=gc.Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=d_mlp, norm="none", bias="mlp", init="nanda"),
        optim=gc.AdamW(lr=3e-3, weight_decay=1.0),
        steps=40,
        batch_size=None,
        checkpoints=3,
    )
    run = gc.train(config, root=tmp_path, progress=False)
    freqs = [1, 4]
    measured, key_freqs = fourier.progress_measures(run, key_freqs=freqs)
    last = measured.set_index("step").loc[40]
    model = run.model(40)

    inputs, _ = config.task.examples()
    train_idx, _ = config.task.split(config.seed)
    trained_on = {tuple(row[:2]) for row in inputs[train_idx].tolist()}
    pairs = [(a, b) for a in range(p) for b in range(p)]
    with torch.no_grad():
        logits = [model(torch.tensor([[a, b, p]]))[0, :p].tolist() for a, b in pairs]
    restricted, excluded = brute_restricted_excluded(logits, p, freqs, [pair in trained_on for pair in pairs])
    assert last.restricted_loss == pytest.approx(restricted, rel=1e-4)
    assert last.excluded_loss == pytest.approx(excluded, rel=1e-4)

    # Sparsity over the non-constant frequencies (the constant says nothing about a circuit).
    sparsity = lambda matrix: gini_by_mean_difference(brute_frequency_norms(matrix, p)[1:])  # noqa: E731
    assert last.gini_embedding == pytest.approx(sparsity(model.embed.weight[:p].tolist()), rel=1e-4)
    assert last.gini_neuron_logit == pytest.approx(sparsity(neuron_logit_map_by_perturbation(model, p, d_mlp)), rel=1e-4)
    # Key frequencies, when not given, are those of the last network; at a threshold
    # where the first network has others (a network this young has no neuron at 85%).
    assert fourier.progress_measures(run, threshold=0.5)[1] == fourier.key_frequencies(model, p, 0.5)
    assert fourier.key_frequencies(model, p, 0.5) != fourier.key_frequencies(run.model(0), p, 0.5)

    # The neurons are Nanda et al.'s (hook_post): after the ReLU, at the readout position.
    by_hand = mlp_neurons_by_hand(model, p)
    assert (by_hand == 0).any() and (by_hand > 0).any()  # the ReLU cuts: before it would differ
    acts = fourier.neuron_activations(model, fourier.all_pairs(p))
    assert torch.allclose(acts.double(), by_hand, atol=1e-5)
    # Each neuron's frequency and share by least squares on those activations, and the key
    # frequencies from them (dead neurons, with no variance, explain nothing).
    with np.errstate(invalid="ignore"):
        shares = np.stack([explained_by_least_squares(by_hand.numpy(), p, k) for k in range(1, (p + 1) // 2)])
    shares = np.nan_to_num(shares)  # (frequency, neuron)
    freq, frac = fourier.neuron_frequencies(acts, p)
    assert frac.tolist() == pytest.approx(shares.max(0).tolist(), abs=1e-4)
    second, best = np.sort(shares, 0)[-2:]
    clear = best - second > 1e-3  # not a neuron that fires on one pair: it ties every frequency
    assert freq[clear].tolist() == (shares.argmax(0)[clear] + 1).tolist()
    keys = sorted({int(k) + 1 for k, share in zip(shares.argmax(0), shares.max(0)) if share >= 0.5})
    assert keys and fourier.key_frequencies(model, p, 0.5) == keys


@pytest.mark.parametrize("op_token", [False, True])
def test_all_pairs_are_the_task_inputs(op_token):
    """The measures feed the network every pair as the task does: ``a b =`` (Nanda) or
    ``a op b =`` (Power), a-major; a Power-format network's logits are those of its inputs."""
    p = 7
    task = gc.AlgorithmicTask(op="x+y", p=p, op_token=op_token)
    inputs, _ = task.examples()
    assert torch.equal(fourier.all_pairs(p, op_token), inputs)
    torch.manual_seed(0)
    model = gc.Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32).build(task.model_dims())
    with torch.no_grad():
        assert torch.equal(fourier.pair_logits(model, p, op_token), model(inputs)[:, :p])


def test_restricted_and_excluded_loss_match_a_least_squares_fit():
    """Independently of the projection the code uses: fit each class's logits over all pairs by
    least squares on a constant and cos, sin(w_k (a + b)) for every key frequency. The fit is
    the restricted logits; the logits minus the fit, plus the constant, are the excluded ones."""
    torch.manual_seed(1)
    p, freqs = 11, [1, 3, 4]
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
    c = torch.arange(p)
    logits = 2 * torch.cos(2 * math.pi * 3 * ((a + b)[:, None] - c[None, :]) / p) + torch.randn(p * p, p)
    train = torch.rand(p * p) < 0.4
    s = (a + b).double().numpy()
    design = np.stack([np.ones(p * p)] + [f(2 * np.pi * k * s / p) for k in freqs for f in (np.cos, np.sin)], 1)
    coef, *_ = np.linalg.lstsq(design, logits.double().numpy(), rcond=None)
    fit = design @ coef
    excluded = logits.double().numpy() - fit + coef[0]
    target = (a + b) % p
    expected = (
        F.cross_entropy(torch.from_numpy(fit), target).item(),
        F.cross_entropy(torch.from_numpy(excluded)[train], target[train]).item(),
    )
    assert fourier.restricted_and_excluded_loss(logits, p, freqs, train) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("freqs", [[2, 2], [2, 5], [0, 2], [2, 9], [1.5]])
def test_key_frequencies_that_name_no_wave_or_one_twice_are_refused(freqs):
    """At p = 7, 5 is 2's wave again (7 - 2) and 9 is 2 (mod 7): projected twice, the losses
    were silently wrong; 0 (the constant) made them NaN."""
    logits = torch.randn(49, 7)
    with pytest.raises(ValueError, match=r"^key_freqs = .* is not allowed: must be distinct whole numbers from 1 to 3 \(p = 7\)"):
        fourier.restricted_and_excluded_loss(logits, 7, freqs, torch.ones(49, dtype=torch.bool))


def test_phases_are_located_from_the_measures():
    """Nanda et al.'s phase boundaries on measures written by hand: memorisation ends at the
    excluded loss's minimum (300); circuit formation when the validation loss falls below half
    its value there (first at 600); clean-up once the embedding's Gini coefficient has made 90%
    of its rise after that (0.2 -> 1.0: first at least 0.92 at 900)."""
    steps = list(range(0, 1001, 100))
    measures = pd.DataFrame(
        {
            "step": steps,
            "excluded_loss": [5.0, 3.0, 2.0, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
            "gini_embedding": [0.1] * 6 + [0.2, 0.4, 0.7, 0.95, 1.0],
        }
    )
    fine = list(range(0, 1001, 50))
    val_loss = [4.0 if s <= 400 else 2.5 if s < 600 else 0.1 for s in fine]
    history = pd.DataFrame({"step": fine, "val_loss": val_loss})
    assert fourier.phases(history, measures) == {"memorisation_end": 300, "circuit_formation_end": 600, "cleanup_end": 900}
    # Clean-up ends at 90% of the rise to the final value (0.9 here: 0.83, first reached at
    # 800), not to a peak before it (1.0: 0.92, at 900).
    overshoot = measures.assign(gini_embedding=[0.1] * 6 + [0.2, 0.4, 0.85, 1.0, 0.9])
    assert fourier.phases(history, overshoot)["cleanup_end"] == 800
    # A Gini still rising at the last checkpoint first reaches the level that checkpoint sets
    # there (0.2 -> 1.0 in equal steps: 0.92 only at 1000): clean-up is not seen to end. One
    # checkpoint more, on the plateau, and it is (at 1000).
    rising = measures.assign(gini_embedding=[0.1] * 6 + [0.2, 0.4, 0.6, 0.8, 1.0])
    assert math.isnan(fourier.phases(history, rising)["cleanup_end"])
    plateau = pd.concat([rising, pd.DataFrame({"step": [1100], "excluded_loss": [7.0], "gini_embedding": [1.0]})])
    assert fourier.phases(history, plateau)["cleanup_end"] == 1000
    # Rows relabelled (measures joined with pd.concat repeat their labels): the same phases.
    assert fourier.phases(history, measures.set_axis([0] * len(measures))) == fourier.phases(history, measures)
    # A Gini that falls or stays flat after circuit formation: no clean-up is seen to end.
    for gini in ([0.1] * 6 + [0.5, 0.4, 0.3, 0.2, 0.1], [0.3] * 11):
        assert math.isnan(fourier.phases(history, measures.assign(gini_embedding=gini))["cleanup_end"])
    # A run that never generalises has no circuit-formation or clean-up boundary.
    stuck = fourier.phases(history.assign(val_loss=4.0), measures)
    assert stuck["memorisation_end"] == 300 and math.isnan(stuck["circuit_formation_end"]) and math.isnan(stuck["cleanup_end"])
    # A missing validation loss where memorisation ends, or a missing measure, is left out of
    # its curve (the plateau read off the rows beside it), not spread as NaN into the phases.
    gap = history.assign(val_loss=history["val_loss"].where(history["step"] != 300))
    assert fourier.phases(gap, measures) == fourier.phases(history, measures)
    missing = pd.concat([measures, pd.DataFrame({"step": [350], "excluded_loss": [float("nan")], "gini_embedding": [0.1]})])
    assert fourier.phases(history, missing) == fourier.phases(history, measures)
    with pytest.raises(ValueError, match=r"^measures has no row with excluded_loss"):
        fourier.phases(history, measures.assign(excluded_loss=float("nan")))
    # A missing excluded loss at the last checkpoint leaves the Gini's plateau (its last value) alone.
    last = measures.assign(excluded_loss=measures["excluded_loss"].where(measures["step"] < 1000))
    assert fourier.phases(history, last) == fourier.phases(history, measures)


def test_measures_refuse_what_they_do_not_measure():
    """Nanda et al.'s measures are for a transformer on x + y over an odd prime, one member at a time."""
    from types import SimpleNamespace

    subtraction = SimpleNamespace(config=SimpleNamespace(task=gc.AlgorithmicTask(op="x-y", p=11)))
    with pytest.raises(ValueError, match=r"^task.op = 'x-y' is not allowed"):
        fourier.progress_measures(subtraction)
    addition = gc.AlgorithmicTask(op="x+y", p=11, op_token=False)
    mlp = SimpleNamespace(config=SimpleNamespace(task=addition, model=gc.ModularMLP(width=8)), members=[{}])
    with pytest.raises(ValueError, match=r"^model = ModularMLP is not allowed"):
        fourier.progress_measures(mlp)
    no_equals = SimpleNamespace(config=SimpleNamespace(task=addition.replace(eq_token=False)))
    with pytest.raises(ValueError, match=r"^task.eq_token = False is not allowed"):
        fourier.progress_measures(no_equals)
    both = SimpleNamespace(config=SimpleNamespace(task=addition, model=gc.Transformer(readout="concat")), members=[{}])
    with pytest.raises(ValueError, match=r"^model.readout = 'concat' is not allowed"):
        fourier.progress_measures(both)
    one = SimpleNamespace(config=SimpleNamespace(task=addition, model=gc.Transformer()), members=[{}])
    with pytest.raises(ValueError, match=r"^member = 3 is not allowed: this run has members 0 to 0"):
        fourier.progress_measures(one, member=3)
    with pytest.raises(ValueError, match=r"^p = 2 is not allowed"):
        fourier.fourier_basis(2)
    two = pd.DataFrame({"member": [0, 1], "step": [0, 0], "val_loss": [1.0, 1.0]})
    with pytest.raises(ValueError, match=r"^history has members \[0, 1\]"):
        fourier.phases(two, pd.DataFrame())
    with pytest.raises(ValueError, match=r"^values is empty"):
        fourier.gini(torch.tensor([]))
    assert math.isnan(fourier.gini(torch.zeros(4)))

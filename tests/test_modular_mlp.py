"""The quadratic MLP and the closed-form solutions of Gromov 2023 / Doshi et al. 2024, and the
per-neuron frequency/phase read-out (``wave_phases``, ``neuron_phases``) checked against waves
written out with math.cos."""

import math

import pytest
import torch

import grokcore as gc
from grokcore.measures.fourier import neuron_phases, wave_phases
from grokcore.models import ModularMLP, solution_accuracy, solution_for
from grokcore.models.modular_mlp import primitive_root


def test_forward_is_w_times_squared_sum_of_rows():
    torch.manual_seed(0)
    p, width = 5, 7
    task = gc.AlgorithmicTask(op="x+y", p=p, op_token=False)
    model = ModularMLP(width=width).build(task.model_dims())
    inputs, _ = task.examples()
    out = model(inputs)
    U, W = model.inp.tolist(), model.out.tolist()
    for row, (a, b, _) in enumerate(inputs.tolist()):
        for q in range(p):
            expected = sum(W[k][q] * (U[0][a][k] + U[1][b][k]) ** 2 for k in range(width))
            assert out[row, q].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_members_forward_equals_each_network_alone():
    """K stacked networks, each on its own examples, as the training loop runs an ensemble."""
    torch.manual_seed(0)
    task = gc.AlgorithmicTask(op="x-y", p=7)  # operands at positions 0 and 2
    models = [ModularMLP(width=6).build(task.model_dims()) for _ in range(3)]
    inputs, _ = task.examples()
    tokens = torch.stack([inputs[torch.randperm(len(inputs))[:10]] for _ in models])  # (3, 10, 4)
    params = {name: torch.stack([dict(m.named_parameters())[name] for m in models]) for name in ("inp", "out")}
    together = models[0].forward_members(params, tokens)
    for k, model in enumerate(models):
        assert torch.allclose(together[k], model(tokens[k]), atol=1e-6)
    # vmap over forward still works (users' own ensembles, per-example gradients) and agrees.
    vmapped = torch.func.vmap(lambda ps, x: torch.func.functional_call(models[0], ps, (x,)))(params, tokens)
    assert torch.allclose(together, vmapped, atol=1e-6)
    grads = torch.autograd.grad(together.square().sum(), [params["inp"], params["out"]])
    for k, model in enumerate(models):
        alone = torch.autograd.grad(model(tokens[k]).square().sum(), [model.inp, model.out])
        assert all(torch.allclose(g[k], a, atol=1e-5) for g, a in zip(grads, alone))


def test_the_gpu_lookup_gives_the_cpu_lookup_values_and_gradients(monkeypatch):
    """rows_of takes the embedding off the CPU; run that branch here against index_select."""
    torch.manual_seed(0)
    task = gc.AlgorithmicTask(op="x+y", p=7, op_token=False)
    model = ModularMLP(width=5).build(task.model_dims())
    params = {"inp": torch.randn(3, 2, 7, 5, requires_grad=True), "out": torch.randn(3, 5, 7, requires_grad=True)}
    tokens = task.examples()[0][torch.randint(0, 49, (3, 20))]
    results = []
    for devices in (("cpu",), ()):
        monkeypatch.setattr(gc.models.modular_mlp, "INDEX_SELECT_DEVICES", devices)
        out = model.forward_members(params, tokens)
        results.append((out, *torch.autograd.grad(out.square().sum(), list(params.values()))))
    for a, b in zip(*results):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("token", [-1, 5])
def test_an_operand_outside_the_table_is_refused(token):
    """forward looks each operand up in its own table; the members' joint table of
    forward_members would silently read a neighbouring row."""
    model = ModularMLP(width=4).build(gc.AlgorithmicTask(op="x+y", p=5, op_token=False).model_dims())
    with pytest.raises(IndexError):
        model(torch.tensor([[0, token, 5]]))  # the last position, "=", is not an operand


@pytest.mark.parametrize("p", [11, 23, 31, 47, 97])
@pytest.mark.parametrize("op", ["x+y", "x-y", "x^2+y^2", "x*y"])
def test_analytic_solution_is_exact_on_every_pair(p, op):
    task = gc.AlgorithmicTask(op=op, p=p, op_token=False)
    assert solution_accuracy(task, *solution_for(op, p, width=10 * p)) == 1.0


def test_analytic_accuracy_grows_with_width():
    task = gc.AlgorithmicTask(op="x+y", p=23, op_token=False)
    narrow = solution_accuracy(task, *solution_for("x+y", 23, width=23))
    wide = solution_accuracy(task, *solution_for("x+y", 23, width=230))
    assert narrow < wide == 1.0


def test_no_construction_for_a_cross_term():
    assert solution_for("x^2+xy+y^2", 23, 100) is None


@pytest.mark.parametrize("p", [5, 7, 11, 13, 97, 113])
def test_primitive_root_generates_the_group(p):
    g = primitive_root(p)
    assert sorted(pow(g, e, p) for e in range(p - 1)) == list(range(1, p))


def wrapped(angle):
    """``angle`` wrapped to [-pi, pi]: phases are equal when this of their difference is 0."""
    return math.remainder(angle, 2 * math.pi)


def wave(p, terms, const=0.0):
    """The column const + sum of A cos(2 pi k x / p + phase) over (A, k, phase), x = 0..p-1."""
    return [const + sum(A * math.cos(2 * math.pi * k * x / p + phase) for A, k, phase in terms) for x in range(p)]


def columns(waves):
    return torch.tensor(waves, dtype=torch.float64).T  # (p, n): one wave per column


def test_wave_phases_reads_frequency_phase_and_share_of_pure_waves():
    p = 13  # frequencies 1..6
    # Every frequency, phases over (-pi, pi] (pi itself included), a constant offset on some:
    # the offset is not a frequency and must not lower the share.
    planted = [(1, 0.3), (2, -2.5), (3, math.pi), (4, 1.7), (5, -0.05), (6, 2.9), (2, 0.0)]
    waves = [wave(p, [(0.5 + j, k, phase)], const=0.4 * j) for j, (k, phase) in enumerate(planted)]
    freq, share, phase = wave_phases(columns(waves), p)
    assert freq.tolist() == [k for k, _ in planted]
    for j, (_, expected) in enumerate(planted):
        assert abs(wrapped(phase[j].item() - expected)) < 1e-4, (j, phase[j].item(), expected)
    assert share.tolist() == pytest.approx([1.0] * len(planted), abs=1e-5)


@pytest.mark.parametrize("value", [0.0, 0.37, -2.5e-3, 1e-20])
def test_a_constant_column_has_no_frequency_and_no_phase(value):
    p = 47
    vectors = torch.tensor([[value, math.cos(2 * math.pi * 3 * x / p)] for x in range(p)], dtype=torch.float32)
    freq, share, phase = wave_phases(vectors, p)
    assert freq.tolist() == [0, 3] and share[0].item() == 0.0 and share[1].item() == pytest.approx(1.0, abs=1e-5)
    assert math.isnan(phase[0].item()) and abs(phase[1].item()) < 1e-4


@pytest.mark.parametrize("mean, amplitude", [(1.0, 1e-5), (0.0, 1e-12), (3.0, 1e-3)])
def test_a_small_wave_on_a_large_mean_is_still_a_wave(mean, amplitude):
    """Some 80 float32 steps of 1.0 are signal, not rounding; and small weights are not constant."""
    p = 47
    column = [[mean + amplitude * math.cos(2 * math.pi * 5 * x / p + 0.7)] for x in range(p)]
    freq, share, phase = wave_phases(torch.tensor(column, dtype=torch.float32), p)
    assert freq.tolist() == [5] and share[0].item() > 0.9 and abs(wrapped(phase[0].item() - 0.7)) < 0.05


def test_wave_phases_share_of_a_mixture_is_the_dominant_energy_fraction():
    p = 17
    # A cosine of amplitude A carries A^2 p / 2 of a column's energy about its mean, so the
    # dominant wave's share is A1^2 / (A1^2 + A2^2); the constant is removed with the mean.
    mixes = [((2.0, 3, 0.4), (1.0, 5, -1.1), 0.7), ((1.5, 8, -2.0), (1.2, 1, 2.2), -3.0)]
    waves = [wave(p, [big, small], const) for big, small, const in mixes]
    freq, share, phase = wave_phases(columns(waves), p)
    for j, ((A1, k1, phi1), (A2, _, _), _) in enumerate(mixes):
        assert freq[j].item() == k1
        assert share[j].item() == pytest.approx(A1**2 / (A1**2 + A2**2), abs=1e-5)
        # Distinct frequencies are orthogonal over Z_p: the smaller wave leaves the phase alone.
        assert abs(wrapped(phase[j].item() - phi1)) < 1e-4


@pytest.mark.parametrize("p", [11, 23])
def test_wave_phases_folds_high_frequencies_with_negated_phase(p):
    # cos(2 pi k x / p + phi) = cos(2 pi (k - p) x / p + phi) = cos(2 pi (p - k) x / p - phi):
    # frequency k > (p - 1) / 2 is frequency p - k with the phase negated.
    planted = [((p + 1) // 2, 0.8), (p - 1, -1.3), (p - 2, 2.6)]
    freq, share, phase = wave_phases(columns([wave(p, [(1.0, k, phi)]) for k, phi in planted]), p)
    assert freq.tolist() == [p - k for k, _ in planted]
    for j, (_, phi) in enumerate(planted):
        assert abs(wrapped(phase[j].item() + phi)) < 1e-4, (j, phase[j].item(), -phi)
    assert share.tolist() == pytest.approx([1.0] * len(planted), abs=1e-5)


def planted_solution(p, width, seed=0):
    """The frequencies sigma and phases psi_1, psi_2 that ``analytic_solution`` plants, drawn
    from the same generator calls in the same order (its docstring: sigma a permutation of
    1..N taken mod p, psi uniform in (-pi, pi))."""
    g = torch.Generator().manual_seed(seed)
    sigma = [(int(s) + 1) % p for s in torch.randperm(width, generator=g)]
    psi = (torch.rand(2, width, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    return sigma, psi[0].tolist(), psi[1].tolist()


def test_neuron_phases_recover_the_planted_analytic_solution():
    """Gromov 2023, eqs. 8-12: neuron k of the construction is a cosine at frequency sigma_k
    with phases psi_1, psi_2 on its inputs and psi_1 + psi_2 on its output."""
    p, width = 23, 40  # sigma runs over 1..40 mod 23: frequencies above (p - 1) / 2 and one 0
    U, W = solution_for("x+y", p, width=width)
    sigma, psi1, psi2 = planted_solution(p, width)
    A = (2 / width) ** (1 / 3)
    # The planted values are the construction's: rebuild every weight from them with math.cos.
    for j in range(width):
        for i in range(p):
            for s, psi in enumerate((psi1, psi2)):
                assert U[s, i, j].item() == pytest.approx(A * math.cos(2 * math.pi * sigma[j] * i / p + psi[j]), abs=1e-5)
            assert W[j, i].item() == pytest.approx(
                A * math.cos(2 * math.pi * sigma[j] * i / p + psi1[j] + psi2[j]), abs=1e-5
            )

    # sigma = 0 (neuron with sigma = p before the mod) makes constant weights: no frequency, no phase.
    constant = [j for j in range(width) if sigma[j] == 0]
    assert len(constant) == 1
    frame = neuron_phases(U, W, p)
    for j in constant:
        row = frame.iloc[j]
        assert row.freq_in1 == row.freq_in2 == row.freq_out == 0 and row.share_out == 0, (j, row)
        assert math.isnan(row.phase_in1) and math.isnan(row.phase_sum_error), (j, row)
    cosines = [j for j in range(width) if j not in constant]
    assert any(sigma[j] > (p - 1) // 2 for j in cosines) and any(sigma[j] <= (p - 1) // 2 for j in cosines)
    for j in cosines:
        # Frequencies above (p - 1) / 2 read as p - sigma with every phase negated.
        fold = sigma[j] > (p - 1) // 2
        k, sign = (p - sigma[j], -1) if fold else (sigma[j], 1)
        row = frame.iloc[j]
        assert row.freq_in1 == row.freq_in2 == row.freq_out == k, (j, row)
        # A pure cosine holds all of its vector's energy about the mean.
        assert [row.share_in1, row.share_in2, row.share_out] == pytest.approx([1, 1, 1], abs=1e-4), (j, row)
        for name, expected in (("in1", psi1[j]), ("in2", psi2[j]), ("out", psi1[j] + psi2[j])):
            assert abs(wrapped(row[f"phase_{name}"] - sign * expected)) < 1e-4, (j, name, row)
        assert abs(row.phase_sum_error) < 1e-4, (j, row)


def test_primitive_root_refuses_p_two():
    with pytest.raises(ValueError, match=r"^p = 2 is not allowed"):
        primitive_root(2)

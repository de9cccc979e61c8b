"""The quadratic MLP and the closed-form solutions of Gromov 2023 / Doshi et al. 2024."""

import pytest
import torch

import grokcore as gc
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


def test_trained_phases_of_the_analytic_solution_sum():
    """The phase relation the chapter measures holds exactly for the construction."""
    from grokcore.measures.fourier import neuron_phases

    p = 23
    U, W = solution_for("x+y", p, width=40)
    frame = neuron_phases(U, W, p)
    nonzero = frame["freq_in1"] > 0
    assert (frame.loc[nonzero, "phase_sum_error"].abs() < 1e-3).mean() > 0.9
    assert (frame["freq_in1"] == frame["freq_out"]).all()

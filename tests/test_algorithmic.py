"""Every operation table against plain Python arithmetic; splits."""

import itertools
import math

import pytest
import torch

from grokcore import AlgorithmicTask, ConfigError, ToyAddition
from grokcore.tasks.algorithmic import OPS, PERM_OPS, POWER_OPS
from grokcore.tasks.base import LOSSES, example_loss, loss_gradient

P = 11

# Independent definitions: Fermat inverse written out as a loop search, not pow().
def inverse(y, p):
    return next(i for i in range(1, p) if (i * y) % p == 1)


PLAIN = {
    "x+y": lambda x, y, p: (x + y) % p,
    "x-y": lambda x, y, p: (x - y) % p,
    "x*y": lambda x, y, p: (x * y) % p,
    "x/y": lambda x, y, p: (x * inverse(y, p)) % p,
    "x/y if y odd else x-y": lambda x, y, p: (x * inverse(y, p)) % p if y % 2 == 1 else (x - y) % p,
    "x^2+y^2": lambda x, y, p: (x**2 + y**2) % p,
    "x^2+xy+y^2": lambda x, y, p: (x**2 + x * y + y**2) % p,
    "x^2+xy+y^2+x": lambda x, y, p: (x**2 + x * y + y**2 + x) % p,
    "x^3+xy": lambda x, y, p: (x**3 + x * y) % p,
    "x^3+xy^2+y": lambda x, y, p: (x**3 + x * y**2 + y) % p,
}


def decode(task):
    inputs, targets = task.examples()
    return [tuple(row) for row in inputs.tolist()], targets.tolist()


@pytest.mark.parametrize("op", list(PLAIN))
def test_modular_table_matches_python(op):
    task = AlgorithmicTask(op=op, p=P)
    rows, answers = decode(task)
    expected_pairs = [(x, y) for x in range(P) for y in range(P) if op != "x/y" or y != 0]
    assert len(rows) == len(expected_pairs)
    for (x, op_tok, y, eq), z, (ex, ey) in zip(rows, answers, expected_pairs):
        assert (x, y) == (ex, ey)
        assert (op_tok, eq) == (P, P + 1)
        assert z == PLAIN[op](x, y, P)


def test_division_inverts_multiplication():
    rows, answers = decode(AlgorithmicTask(op="x/y", p=P))
    for (x, _, y, _), z in zip(rows, answers):
        assert (z * y) % P == x


def compose_left_first(a, b):
    """Apply a, then b: i -> b[a[i]]."""
    return tuple(b[a[i]] for i in range(len(a)))


def invert(a):
    return tuple(sorted(range(len(a)), key=lambda i: a[i]))


PERM_PLAIN = {
    "x.y": lambda a, b: compose_left_first(a, b),
    "x.y.x^-1": lambda a, b: compose_left_first(compose_left_first(a, b), invert(a)),
    "x.y.x": lambda a, b: compose_left_first(compose_left_first(a, b), a),
}


@pytest.mark.parametrize("op", list(PERM_PLAIN))
@pytest.mark.parametrize("n", [4, 5])
def test_permutation_tables_match_itertools(op, n):
    perms = list(itertools.permutations(range(n)))
    rows, answers = decode(AlgorithmicTask(op=op, n=n))
    assert len(rows) == len(perms) ** 2
    for (i, _, j, _), k in zip(rows, answers):
        assert perms[k] == PERM_PLAIN[op](perms[i], perms[j])


def test_permutation_products_follow_openai_grok_s_sympy_convention():
    """openai/grok builds its S5 tables with sympy's Permutation product, a * b: apply a, then
    b. Checked with sympy itself (a dependency of PyTorch), not with a rule written out here."""
    from sympy.combinatorics import Permutation

    perms = list(itertools.permutations(range(4)))
    rows, answers = decode(AlgorithmicTask(op="x.y", n=4))
    for (i, _, j, _), k in zip(rows, answers):
        assert list(perms[k]) == (Permutation(list(perms[i])) * Permutation(list(perms[j]))).array_form
    rows, answers = decode(AlgorithmicTask(op="x.y.x^-1", n=4))
    for (i, _, j, _), k in zip(rows, answers):
        x, y = Permutation(list(perms[i])), Permutation(list(perms[j]))
        assert list(perms[k]) == (x * y * ~x).array_form


def cycle_type(perm: tuple) -> list[int]:
    """The sorted lengths of a permutation's cycles."""
    seen, lengths = set(), []
    for start in range(len(perm)):
        length, i = 0, start
        while i not in seen:
            seen.add(i)
            i, length = perm[i], length + 1
        if length:
            lengths.append(length)
    return sorted(lengths)


def test_s5_group_facts():
    """Facts of S5 that hold whichever way round composition is written: x.y.x^-1, a conjugate
    of y, has y's cycle type; x.y with x the identity is y."""
    perms = list(itertools.permutations(range(5)))
    rows, answers = decode(AlgorithmicTask(op="x.y.x^-1"))
    assert all(cycle_type(perms[k]) == cycle_type(perms[j]) for (_, _, j, _), k in zip(rows, answers))
    rows, answers = decode(AlgorithmicTask(op="x.y"))
    identity = perms.index(tuple(range(5)))
    assert all(k == j for (i, _, j, _), k in zip(rows, answers) if i == identity)


def test_every_op_is_tested():
    assert set(OPS) == set(PLAIN) | set(PERM_PLAIN) and set(PERM_OPS) == set(PERM_PLAIN)
    # Power et al.'s appendix lists twelve, all of them operations we have; x*y is not one.
    assert len(set(POWER_OPS)) == 12 and set(POWER_OPS) <= set(OPS) and "x*y" not in POWER_OPS


def test_nanda_format_has_no_op_token():
    task = AlgorithmicTask(op="x+y", p=P, op_token=False)
    inputs, targets = task.examples()
    assert inputs.shape == (P * P, 3)
    assert (inputs[:, 2] == P).all()
    dims = task.model_dims()
    assert (dims["vocab_size"], dims["seq_len"], dims["n_outputs"]) == (P + 1, 3, P + 1)
    assert dims["operand_positions"] == (0, 1)


@pytest.mark.parametrize("op_token", [False, True])
def test_inputs_without_the_equals_token(op_token):
    """eq_token=False (Liu et al.'s code): the operands alone, 'a b' (or 'a op b'), and outputs
    for the answers (and the op token, where there is one) only."""
    task = AlgorithmicTask(op="x-y", p=P, op_token=op_token, eq_token=False)
    inputs, targets = task.examples()
    expected = [[a, P, b] if op_token else [a, b] for a in range(P) for b in range(P)]
    assert inputs.tolist() == expected
    assert targets.tolist() == [(a - b) % P for a in range(P) for b in range(P)]
    dims = task.model_dims()
    vocab = P + 1 if op_token else P
    assert (dims["vocab_size"], dims["seq_len"], dims["n_outputs"]) == (vocab, 3 if op_token else 2, vocab)
    assert dims["operand_positions"] == ((0, 2) if op_token else (0, 1))


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.5, 0.9])
def test_split_sizes_and_disjoint(fraction):
    task = AlgorithmicTask(op="x/y", p=P, train_fraction=fraction)
    n = P * (P - 1)
    train, val = task.split(seed=3)
    assert len(train) == int(fraction * n) and len(val) == n - len(train)
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(n))


def test_split_is_seeded():
    task = AlgorithmicTask(op="x+y", p=P)
    assert torch.equal(task.split(1)[0], task.split(1)[0])
    assert not torch.equal(task.split(1)[0], task.split(2)[0])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"p": 96}, "p"),
        ({"p": 1}, "p"),
        ({"train_fraction": 1.5}, "train_fraction"),
        ({"train_fraction": 0.0}, "train_fraction"),
        ({"op": "x%y"}, "op"),
        ({"p": "97"}, "p"),
        ({"p": 97.0}, "p"),
        # 0.5% of 7 x 7 = 49 equations rounds down to none.
        ({"p": 7, "train_fraction": 0.005}, "train_fraction"),
        ({"train_fraction": float("nan")}, "train_fraction"),
    ],
)
def test_bad_parameters_name_themselves(kwargs, name):
    with pytest.raises(ConfigError, match=rf"^{name} = "):
        AlgorithmicTask(**kwargs)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"op": "x+y", "p": 9}, ["p = 9", "'x+y'", "prime"]),
        ({"op": "x.y", "n": 8}, ["n = 8", "'x.y'", "from 2 to 7"]),
        ({"op": "x.y", "n": 1}, ["n = 1"]),
    ],
)
def test_each_op_checks_the_size_it_uses(kwargs, words):
    with pytest.raises(ConfigError) as error:
        AlgorithmicTask(**kwargs)
    assert all(w in str(error.value) for w in words), error.value


def test_each_op_ignores_the_size_it_does_not_use():
    assert AlgorithmicTask(op="x.y", p=4, n=3).n_values == 6  # S_3; p unused
    assert AlgorithmicTask(op="x+y", p=7, n=100).n_values == 7  # n unused


def test_a_misspelt_or_unknown_value_names_what_is_allowed():
    with pytest.raises(ConfigError, match=r"^'fraction' is not a parameter of AlgorithmicTask: allowed: op, p, n, train_fraction"):
        AlgorithmicTask(fraction=0.3)
    with pytest.raises(ConfigError, match=r"^loss = 'l1' is not allowed: must be one of 'cross_entropy', 'cross_entropy_fp64', 'mse'"):
        AlgorithmicTask(loss="l1")


@pytest.mark.parametrize("op", OPS)
def test_equation_count_is_the_table_length(op):
    task = AlgorithmicTask(op=op, p=7, n=3)
    assert task.n_examples == len(task.table()[0])


@pytest.mark.parametrize("kwargs", [{"p": 2}, {"train_fraction": 0.1}, {"p": 4, "train_fraction": 0.5}])
def test_toy_addition_refuses_splits_that_miss_a_sum(kwargs):
    # 19 sums at p = 10 need 19 of the 55 training pairs; at p = 4, 7 of 10.
    with pytest.raises(ConfigError, match=r"^(p|train_fraction) = "):
        ToyAddition(**kwargs)


def test_losses_match_their_formulas_by_hand():
    """Cross entropy is -log softmax at the target; mse is the mean over the C outputs of the
    squared distance to the one-hot target (Omnigrok's nn.MSELoss on one-hot labels)."""
    outputs = [[0.5, -1.0, 2.0, 0.0], [3.0, 0.25, -0.5, 1.0]]
    targets = [2, 1]
    mse = [sum((o - (c == t)) ** 2 for c, o in enumerate(row)) / len(row) for row, t in zip(outputs, targets)]
    ce = [math.log(sum(math.exp(o) for o in row)) - row[t] for row, t in zip(outputs, targets)]
    for loss, expected in (("mse", mse), ("cross_entropy", ce)):
        got = example_loss(loss, torch.tensor(outputs), torch.tensor(targets))
        assert got.tolist() == pytest.approx(expected, rel=1e-6), loss


def test_loss_gradients_match_their_derivatives_by_hand():
    """The trainer's backward starts from loss_gradient: softmax minus the one-hot target
    for cross entropy, 2 (o - onehot) / C for mse, written out here in plain Python."""
    outputs = [[0.5, -1.0, 2.0, 0.0], [3.0, 0.25, -0.5, 1.0]]
    targets = [2, 1]
    ce = [
        [math.exp(o) / sum(math.exp(v) for v in row) - (c == t) for c, o in enumerate(row)]
        for row, t in zip(outputs, targets)
    ]
    mse = [[2 * (o - (c == t)) / len(row) for c, o in enumerate(row)] for row, t in zip(outputs, targets)]
    for loss, expected in (("cross_entropy", ce), ("mse", mse)):
        got = loss_gradient(loss, torch.tensor(outputs), torch.tensor(targets))
        for row, want in zip(got.tolist(), expected):
            assert row == pytest.approx(want, rel=1e-6, abs=1e-7), loss
    with pytest.raises(ValueError, match="^loss = 'hinge' is not allowed"):
        loss_gradient("hinge", torch.zeros(1, 2), torch.zeros(1, dtype=torch.long))


def test_a_float64_softmax_keeps_what_float32_rounds_away():
    """An example fitted so well that its class's probability is within 6e-8 of 1: float32
    rounds that probability to 1, so its loss reads 0 and its own class adds nothing to the
    gradient; cross_entropy_fp64 keeps both, as plain Python's doubles work them out."""
    outputs = [[30.0, 0.0, 1.0, -2.0], [-1.0, 25.0, 2.5, 0.0]]
    targets = [0, 1]
    rest = [sum(math.exp(v - row[t]) for c, v in enumerate(row) if c != t) for row, t in zip(outputs, targets)]
    loss = [math.log1p(r) for r in rest]  # -log p(target)
    grad = [[-r / (1 + r) if c == t else math.exp(v - row[t]) / (1 + r) for c, v in enumerate(row)]
            for row, t, r in zip(outputs, targets, rest)]
    o, y = torch.tensor(outputs), torch.tensor(targets)
    assert example_loss("cross_entropy_fp64", o, y).tolist() == pytest.approx(loss, rel=1e-6)
    got = loss_gradient("cross_entropy_fp64", o, y)
    assert got.dtype == torch.float32
    for row, want in zip(got.tolist(), grad):
        assert row == pytest.approx(want, rel=1e-6)
    assert example_loss("cross_entropy", o, y).tolist() == [0.0, 0.0]
    assert loss_gradient("cross_entropy", o, y)[[0, 1], [0, 1]].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_kinds_gradient_is_autograds_derivative_of_its_loss(loss):
    """Every loss kind (a new one included) gives the trainer the derivative of the loss that
    evaluations report, for outputs of any leading shape, here (members, examples, classes)."""
    outputs = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    targets = torch.randint(7, (3, 5), generator=torch.Generator().manual_seed(1))
    (by_autograd,) = torch.autograd.grad(example_loss(loss, outputs, targets).sum(), outputs)
    torch.testing.assert_close(loss_gradient(loss, outputs.detach(), targets), by_autograd)


def test_a_task_s_examples_are_its_own_to_change():
    """The table is cached per op and p; changing one task's targets in place must not change
    another's (a caller relabelling answers, say, to corrupt a fraction of them)."""
    task = AlgorithmicTask(op="x+y", p=7)
    _, targets = task.examples()
    targets[0] = 99
    task.table()[2][1] = 99
    inputs, fresh = AlgorithmicTask(op="x+y", p=7, train_fraction=0.3).examples()
    assert fresh.tolist() == [(int(x) + int(y)) % 7 for x, y in inputs[:, [0, 2]].tolist()]

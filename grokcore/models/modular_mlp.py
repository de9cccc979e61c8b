"""The two-layer MLP with a power activation of Gromov 2023 and Doshi et al. 2024.

    f(a, b) = W phi(U_1 e_a + U_2 e_b),   phi(x) = x^S

(arXiv 2301.02679, eq. 4; arXiv 2406.03495, eq. 1). ``U_s e_a`` is row ``a`` of ``U_s``, so
the first layer is an embedding lookup per operand. With S = 2 the network is quadratic in
its inputs, and modular arithmetic has a solution in closed form: every neuron is a cosine
at one frequency, and the phases of its output weights are the sums of the phases of its
input weights. :func:`analytic_solution` builds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from grokcore.config import POSITIVE, Spec, interval, spec_field


@dataclass(frozen=True)
class ModularMLP(Spec):
    """Config of :class:`ModularMLPModel`."""

    width: int = spec_field(500, check=POSITIVE, doc="hidden neurons N")
    power: int = spec_field(2, check=interval(1, 8), doc="S in phi(x) = x^S")
    init_std: Optional[float] = spec_field(None, check=POSITIVE, doc="None: 0.5 / (2 N)^(1/3)")
    init_scale: float = spec_field(1.0, check=POSITIVE, doc="multiply every initial weight by this")

    def n_outputs(self, dims: dict) -> int:
        """How many outputs the built model has: one per operand value (answers are operands), not per token."""
        return dims["n_values"]

    def build(self, dims: dict) -> "ModularMLPModel":
        return ModularMLPModel(self, n_values=dims["n_values"], operand_positions=dims["operand_positions"])


class ModularMLPModel(nn.Module):
    def __init__(self, cfg: ModularMLP, n_values: int, operand_positions: tuple[int, ...]):
        super().__init__()
        self.cfg = cfg
        self.positions = tuple(operand_positions)
        std = cfg.init_std if cfg.init_std is not None else 0.5 / (2 * cfg.width) ** (1 / 3)
        self.inp = nn.Parameter(torch.randn(len(self.positions), n_values, cfg.width) * std)  # U_s, one per operand
        self.out = nn.Parameter(torch.randn(cfg.width, n_values) * std)  # W (transposed)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> outputs (B, n_values)."""
        first, *rest = (F.embedding(tokens[:, pos], self.inp[s]) for s, pos in enumerate(self.positions))
        hidden = sum(rest, first)  # starting at 0 would cost one more pass over (B, N)
        return hidden.pow(self.cfg.power) @ self.out

    def forward_members(self, params: dict[str, Tensor], tokens: Tensor) -> Tensor:
        """K networks at once: ``params`` (K, *shape) per parameter, tokens (K, B, T) ->
        outputs (K, B, n_values), for any K; ``tokens`` may be a view expanded over members.
        The training loop calls this instead of ``vmap`` over :meth:`forward`. It does not
        check the tokens (that would cost a host sync a step): an operand outside 0..n-1
        would read another operand's or member's row, where :meth:`forward` raises.

        The rows of all K first layers form one table, so each operand's lookup is one
        lookup in it (:func:`rows_of`). Through vmap, a lookup and its backward cost 4-5 times
        as much on the CPU (770 µs for 8 members of the Gromov MLP with p = 31, N = 128 and
        480 examples, on 2 cores), and an 8-member step took 2.9 ms instead of 2.2.
        """
        U, W = params["inp"], params["out"]  # (K, S, n, N), (K, N, n)
        K, S, n, N = U.shape
        table = U.reshape(K * S * n, N)
        first_row = torch.arange(K, device=tokens.device)[:, None] * (S * n)  # member k's U_0
        hidden = None
        for s, pos in enumerate(self.positions):
            index = (tokens[..., pos] + first_row + s * n).reshape(-1)
            rows = rows_of(table, index)
            hidden = rows if hidden is None else hidden + rows  # starting at 0 would cost one more pass
        return torch.bmm(hidden.view(K, -1, N).pow(self.cfg.power), W)  # K = 1 too: faster than mm on the CPU


#: Devices where :func:`rows_of` uses ``index_select``.
INDEX_SELECT_DEVICES = ("cpu",)


def rows_of(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for a 1-d index. On the CPU through ``index_select``, whose backward
    (``index_add_``) is 2.5 times as fast as the embedding's there; elsewhere through the
    embedding, not ``index_add_``, whose atomic adds on a GPU land in an order that changes
    from run to run. (The embedding's own backward is not always in a fixed order either: it
    was not for the transformer's 11,490 lookups of Nanda et al.'s full batch. Case (d) of
    benchmarks/speed.py, this model's paper sweep, ended with equal weights through two
    different paths.)"""
    if table.device.type in INDEX_SELECT_DEVICES:
        return torch.index_select(table, 0, index)
    return F.embedding(index, table)


def analytic_solution(
    p: int,
    width: int,
    seed: int = 0,
    inner: tuple[Callable[[int], int], Callable[[int], int]] = (lambda a: a, lambda b: b),
    outer_inverse: Callable[[int], Optional[int]] = lambda q: q,
) -> tuple[Tensor, Tensor]:
    """Weights (U, W) of the quadratic MLP that computes F(f1(a) + f2(b)) mod p exactly.

    Neuron k gets a frequency sigma(k) (a random permutation of 1..N, taken mod p) and
    random phases psi_1, psi_2; its input weights are A cos(2 pi sigma f_s(i) / p + psi_s) and
    its output weight for class q is A cos(2 pi sigma F^-1(q) / p + psi_1 + psi_2), with
    A = (2 / N)^(1/3) (Doshi et al., eq. 2, S = 2). Squaring the sum of the two inputs gives a
    term cos(2 pi sigma (f1(a) + f2(b)) / p + psi_1 + psi_2); against the output weights it adds
    up to N/2 at F^-1(q) = f1(a) + f2(b) and cancels elsewhere (Gromov, eqs. 8-16).

    ``outer_inverse(q)`` may return None for a class that F never takes (its weights are 0).
    Returns U of shape (2, p, N) and W of shape (N, p), as :class:`ModularMLPModel` holds them.
    """
    g = torch.Generator().manual_seed(seed)
    freq = (torch.randperm(width, generator=g) + 1).double() % p
    psi = (torch.rand(2, width, generator=g, dtype=torch.float64) * 2 - 1) * math.pi
    amplitude = (2 / width) ** (1 / 3)
    U = torch.stack(
        [
            amplitude * torch.cos(2 * math.pi * freq[None, :] * torch.tensor([f(i) % p for i in range(p)]).double()[:, None] / p + psi[s][None, :])
            for s, f in enumerate(inner)
        ]
    )
    W = torch.zeros(width, p, dtype=torch.float64)
    for q in range(p):
        t = outer_inverse(q)
        if t is not None:
            W[:, q] = amplitude * torch.cos(2 * math.pi * freq * (t % p) / p + psi[0] + psi[1])
    return U.float(), W.float()


def primitive_root(p: int) -> int:
    """The smallest generator of the multiplicative group mod a prime p >= 3."""
    if p < 3:
        raise ValueError(f"p = {p} is not allowed: the multiplicative solution needs a prime p >= 3")
    factors = {d for d in range(2, p) if (p - 1) % d == 0 and all(d % e for e in range(2, int(d**0.5) + 1))}
    return next(g for g in range(2, p) if all(pow(g, (p - 1) // f, p) != 1 for f in factors))


def analytic_multiplication(p: int, width: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Weights of the quadratic MLP that computes a * b mod p (Doshi et al., eq. 6).

    Through a primitive root g, a * b = g^(log a + log b): addition mod p - 1 of discrete
    logarithms. Neuron 0 is reserved for the residue 0 (a = 0 or b = 0 gives 0); the other
    N - 1 neurons solve the addition of logarithms with amplitude (2 / (N - 1))^(1/3).
    """
    g = primitive_root(p)
    log = {pow(g, e, p): e for e in range(p - 1)}
    gen = torch.Generator().manual_seed(seed)
    n = width - 1
    freq = (torch.randperm(n, generator=gen) + 1).double() % (p - 1)
    psi = (torch.rand(2, n, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    c = (2 / n) ** (1 / 3)
    U = torch.zeros(2, p, width, dtype=torch.float64)
    W = torch.zeros(width, p, dtype=torch.float64)
    U[:, 0, 0] = 1.0  # neuron 0 fires for a 0 operand and votes for the answer 0
    W[0, 0] = 1.0
    for i in range(1, p):
        for s in range(2):
            U[s, i, 1:] = c * torch.cos(2 * math.pi * freq * log[i] / (p - 1) + psi[s])
        W[1:, i] = c * torch.cos(2 * math.pi * freq * log[i] / (p - 1) + psi[0] + psi[1])
    return U.float(), W.float()


@torch.no_grad()
def solution_accuracy(task, U: Tensor, W: Tensor, power: int = 2) -> float:
    """Accuracy of the weights (U, W) on every equation of an ``AlgorithmicTask``."""
    model = ModularMLP(width=W.shape[0], power=power).build(task.model_dims())
    model.inp.copy_(U)
    model.out.copy_(W)
    inputs, targets = task.examples()
    return (model(inputs).argmax(-1) == targets).float().mean().item()


#: Closed-form solutions by op: x op y = F(f1(x) + f2(y)) with F invertible (Gromov, eq. 19).
def solution_for(op: str, p: int, width: int, seed: int = 0) -> tuple[Tensor, Tensor] | None:
    """The analytic weights for ``op`` mod p, or None where no construction is known."""
    if op == "x+y":
        return analytic_solution(p, width, seed)
    if op == "x-y":
        return analytic_solution(p, width, seed, inner=(lambda a: a, lambda b: -b))
    if op == "x^2+y^2":
        return analytic_solution(p, width, seed, inner=(lambda a: a * a, lambda b: b * b))
    if op == "x*y":
        return analytic_multiplication(p, width, seed)
    return None

"""Fourier progress measures of Nanda et al. 2023 (arXiv 2301.05217, section 5, Figure 7).

A network that has grokked modular addition computes ``(a + b) mod p`` through a few "key"
frequencies w_k = 2 pi k / p: its embedding is sparse in the Fourier basis of Z_p, each MLP
neuron responds to one frequency, and the logits are built from cos(w_k (a + b - c)). The
measures here are functions of one network (a checkpoint) and the task:

* the Fourier norms of the embedding W_E and of the neuron-logit map W_L = W_U W_out, and the
  Gini coefficient of each (sparsity: 0 spread evenly, near 1 on a few frequencies);
* the key frequencies, found from the neurons: a neuron's frequency is the one whose
  {1, cos, sin} x {1, cos, sin} block of its 2-D Fourier transform explains most of its
  variance over all (a, b); key frequencies are those of neurons explained >= 85% by one;
* restricted loss: the loss when the logits keep only their cos/sin(w_k (a + b)) components for
  key frequencies (plus each class's mean), on all pairs: low once the circuit exists;
* excluded loss: the training loss when exactly those components are removed: it rises as the
  network comes to rely on the circuit rather than memorisation.

Token conventions are grokcore's: operands ``0..p-1`` are token ids, the answer is read at
the last position, and the first ``p`` logits are the residues.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from grokcore.measures.curves import one_member
from grokcore.models.transformer import Transformer


def fourier_basis(p: int) -> tuple[Tensor, list[str]]:
    """The orthonormal Fourier basis of functions on Z_p, as the rows of a (p, p) matrix.

    Row 0 is the constant; rows 2k-1 and 2k are cos and sin of 2 pi k x / p, k = 1..(p-1)/2.
    """
    if p < 3 or p % 2 == 0:
        raise ValueError(f"p = {p} is not allowed: the basis of cos and sin pairs needs an odd p >= 3")
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows)
    return (basis / basis.norm(dim=1, keepdim=True)).float(), names


def frequency_norms(matrix: Tensor, p: int) -> Tensor:
    """Norm of each frequency's component of ``matrix`` (p, d) along its first axis.

    Returns ``(p + 1) / 2`` values: the constant, then frequencies 1..(p-1)/2 (cos and sin
    together).
    """
    basis, _ = fourier_basis(p)
    coeff = basis.to(matrix) @ matrix  # (p, d): each basis function's coefficients
    sq = coeff.pow(2).sum(1)
    return torch.cat([sq[:1], sq[1::2] + sq[2::2]]).sqrt()


def gini(values: Tensor) -> float:
    """Gini coefficient of non-negative values (Hurley & Rickard 2009); NaN where every value
    is 0, whose spread is undefined."""
    if len(values) == 0:
        raise ValueError("values is empty: the Gini coefficient needs at least one value")
    x = values.double().abs().sort().values
    if x.sum() == 0:
        return float("nan")
    n = len(x)
    k = torch.arange(1, n + 1, dtype=torch.float64)
    return float(1 - 2 * ((x / x.sum()) * ((n - k + 0.5) / n)).sum())


def embedding(model: nn.Module, p: int) -> Tensor:
    """W_E restricted to the p operand tokens: (p, d_model)."""
    return model.embed.weight[:p].detach()


def neuron_logit_map(model: nn.Module, p: int) -> Tensor:
    """W_L = W_U W_out: how each MLP neuron of the last block moves each residue's logit, (p, d_mlp)."""
    return (model.unembed.weight[:p] @ model.blocks[-1].mlp.out.weight).detach()


def wave_phases(vectors: Tensor, p: int) -> tuple[Tensor, Tensor, Tensor]:
    """Each column's dominant frequency k, its share of the column's energy, and its phase.

    ``vectors`` (p, n): column j is read as A cos(2 pi k x / p + phase) + the rest. A constant
    column (float32 rounding aside) has no wave: frequency 0, share 0, phase NaN. The analytic
    solutions have such neurons, one for each multiple of p among their frequencies.
    """
    x = torch.arange(p, dtype=torch.float64)
    K = (p - 1) // 2
    k = torch.arange(1, K + 1, dtype=torch.float64)
    angle = 2 * math.pi * k[:, None] * x[None, :] / p  # (K, p)
    v = vectors.double()
    a, b = torch.cos(angle) @ v, torch.sin(angle) @ v  # (K, n)
    energy = a.pow(2) + b.pow(2)
    best = energy.argmax(0)
    centred = v - v.mean(0, keepdim=True)
    spread = centred.pow(2).sum(0)
    share = energy.max(0).values * (2 / p) / spread
    cols = torch.arange(v.shape[1])
    phase = torch.atan2(-b[best, cols], a[best, cols])
    # Constant but for float32 rounding: a spread of a few ulps of the column's largest value.
    flat = spread <= p * (4 * torch.finfo(torch.float32).eps * v.abs().amax(0)) ** 2
    return (
        torch.where(flat, 0, best + 1),
        torch.where(flat, 0.0, share).float(),
        torch.where(flat, math.nan, phase).float(),
    )


def neuron_phases(inp: Tensor, out: Tensor, p: int) -> pd.DataFrame:
    """Per neuron of a two-operand MLP: the frequency and phase of its two input weight
    vectors and of its output weights, and phi_1 + phi_2 - phi_out wrapped to (-pi, pi].

    ``inp`` (2, p, N) and ``out`` (N, p) as :class:`grokcore.models.ModularMLPModel` holds them.
    Gromov 2023 (eq. 12): a network that has learned addition has phi_1 + phi_2 = phi_out.
    """
    rows = {}
    for name, vectors in (("in1", inp[0]), ("in2", inp[1]), ("out", out.T)):
        freq, share, phase = wave_phases(vectors.detach(), p)
        rows[f"freq_{name}"], rows[f"share_{name}"], rows[f"phase_{name}"] = freq, share, phase
    frame = pd.DataFrame({k: v.numpy() for k, v in rows.items()})
    diff = frame["phase_in1"] + frame["phase_in2"] - frame["phase_out"]
    frame["phase_sum_error"] = np.angle(np.exp(1j * diff))
    return frame


def all_pairs(p: int, op_token: bool = False) -> Tensor:
    """Inputs ``a b =`` (or ``a op b =``) for every (a, b), a-major: (p^2, 3 or 4)."""
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
    cols = [a, torch.full_like(a, p), b, torch.full_like(a, p + 1)] if op_token else [a, b, torch.full_like(a, p)]
    return torch.stack(cols, 1)


@torch.no_grad()
def neuron_activations(model: nn.Module, inputs: Tensor) -> Tensor:
    """Activations of the last block's MLP neurons at the readout position: (N, d_mlp)."""
    seen = []
    hook = model.blocks[-1].mlp.act.register_forward_hook(lambda m, i, out: seen.append(out[:, -1]))
    try:
        model(inputs)
    finally:
        hook.remove()
    return seen[0]


def neuron_frequencies(activations: Tensor, p: int) -> tuple[Tensor, Tensor]:
    """Each neuron's dominant frequency (1..(p-1)/2) and the fraction of its variance it explains.

    ``activations`` is (p*p, n) over all pairs, a-major.
    """
    basis, _ = fourier_basis(p)
    acts = activations.reshape(p, p, -1).float()
    acts = acts - acts.mean((0, 1), keepdim=True)
    coeff = torch.einsum("fa,gb,abn->fgn", basis, basis, acts).pow(2)  # 2-D transform, squared
    total = coeff.sum((0, 1)).clamp_min(1e-30)
    K = (p - 1) // 2
    explained = torch.stack(
        [coeff[[0, 2 * k - 1, 2 * k]][:, [0, 2 * k - 1, 2 * k]].sum((0, 1)) for k in range(1, K + 1)]
    )  # (K, n)
    frac, best = (explained / total).max(0)
    return best + 1, frac


def key_frequencies(model: nn.Module, p: int, threshold: float = 0.85, op_token: bool = False) -> list[int]:
    """Frequencies that explain at least ``threshold`` of some neuron's variance, sorted.

    The progress-measures code takes every neuron's best frequency, however little of the
    neuron it explains (its 0.85 serves only its clustering of neurons). The threshold keeps
    dead and mixed neurons from adding frequencies: on the Nanda chapter's cpu run, seed 1
    has [10, 12] here and [1, 3, 10, 12] by that rule, 1 coming from nine dead neurons."""
    freq, frac = neuron_frequencies(neuron_activations(model, all_pairs(p, op_token)), p)
    return sorted(set(freq[frac >= threshold].tolist()))


def _check_frequencies(p: int, freqs: list[int]) -> None:
    """Key frequencies must be distinct and in 1..(p-1)/2: k and p - k (or k + p) name the same
    wave, which would be projected out twice, and 0 is the constant, which has no sine."""
    top = (p - 1) // 2
    wrong = [k for k in freqs if not isinstance(k, numbers.Integral) or not 1 <= k <= top]
    if wrong or len(set(freqs)) != len(freqs):
        raise ValueError(f"key_freqs = {list(freqs)!r} is not allowed: must be distinct whole numbers from 1 to {top} (p = {p})")


def _sum_directions(p: int, freqs: list[int]) -> Tensor:
    """Orthonormal directions cos(w_k (a + b)), sin(w_k (a + b)) over all pairs: (2 |freqs|, p*p)."""
    _check_frequencies(p, freqs)
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).double().unbind(1)
    rows = []
    for k in freqs:
        angle = 2 * math.pi * k * (a + b) / p
        rows += [torch.cos(angle), torch.sin(angle)]
    if not rows:
        return torch.zeros(0, p * p)
    d = torch.stack(rows)
    return (d / d.norm(dim=1, keepdim=True)).float()


@torch.no_grad()
def pair_logits(model: nn.Module, p: int, op_token: bool = False) -> Tensor:
    """Logits of the p residues for every pair: (p*p, p)."""
    return model(all_pairs(p, op_token))[:, :p].float()


def restricted_and_excluded_loss(
    logits: Tensor, p: int, freqs: list[int], train_mask: Tensor
) -> tuple[float, float]:
    """Nanda et al.'s restricted loss (all pairs) and excluded loss (training pairs).

    ``logits`` (p*p, p) over all pairs a-major; targets are (a + b) mod p. These are the p
    residues' logits alone (:func:`pair_logits` drops the "=" token's, as the authors'
    analysis does), so with no key frequencies the excluded loss is the training loss over p
    classes, a little below the trainer's ``train_loss``, which counts every output.
    """
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).unbind(1)
    target = (a + b) % p
    d = _sum_directions(p, freqs).to(logits)
    along = d.T @ (d @ logits)  # the key-frequency part of every class's logit surface
    restricted = along + logits.mean(0, keepdim=True)
    excluded = logits - along
    return (
        float(F.cross_entropy(restricted.double(), target)),
        float(F.cross_entropy(excluded[train_mask].double(), target[train_mask])),
    )


def progress_measures(run, member: int = 0, key_freqs: list[int] | None = None, threshold: float = 0.85) -> tuple[pd.DataFrame, list[int]]:
    """Every Fourier progress measure at every checkpoint of ``run`` (modular addition).

    Key frequencies are found on the last checkpoint (the grokked network) unless given, and
    held fixed for all checkpoints, as in the paper. Returns (measures, key frequencies).
    """
    task = run.config.task
    if getattr(task, "op", None) != "x+y":
        raise ValueError(
            f"task.op = {getattr(task, 'op', None)!r} is not allowed: the progress measures are Nanda et al.'s for 'x+y'"
        )
    if not getattr(task, "eq_token", True):
        raise ValueError("task.eq_token = False is not allowed: the progress measures read inputs 'a b =' (Nanda et al.'s)")
    if not isinstance(run.config.model, Transformer):
        raise ValueError(
            f"model = {type(run.config.model).__name__} is not allowed: the progress measures read a Transformer's"
            " embedding, MLP neurons and unembedding"
        )
    if run.config.model.readout != "last":
        raise ValueError(
            f"model.readout = {run.config.model.readout!r} is not allowed: the progress measures read the last position"
        )
    if not 0 <= member < len(run.members):
        raise ValueError(f"member = {member} is not allowed: this run has members 0 to {len(run.members) - 1}")
    p = task.p
    m = run.members[member]
    train_idx, _ = task.member_split(m)
    # The task's equations are a-major over all pairs, as all_pairs: map indices to pairs.
    x, y, _ = task.table()
    pair_index = x * p + y
    train_mask = torch.zeros(p * p, dtype=torch.bool)
    train_mask[pair_index[train_idx]] = True

    if key_freqs is None:
        key_freqs = key_frequencies(run.model(member=member), p, threshold, task.op_token)
    _check_frequencies(p, key_freqs)  # before the checkpoints are read
    rows = []
    for step in run.checkpoint_steps:
        model = run.model(step, member)
        logits = pair_logits(model, p, task.op_token)
        restricted, excluded = restricted_and_excluded_loss(logits, p, key_freqs, train_mask)
        rows.append(
            {
                "step": step,
                "restricted_loss": restricted,
                "excluded_loss": excluded,
                "gini_embedding": gini(frequency_norms(embedding(model, p), p)[1:]),
                "gini_neuron_logit": gini(frequency_norms(neuron_logit_map(model, p), p)[1:]),
                "sum_sq_weights": float(sum(w.detach().pow(2).sum() for w in model.parameters())),
            }
        )
    return pd.DataFrame(rows), key_freqs


def phases(history: pd.DataFrame, measures: pd.DataFrame, drop: float = 0.5, fraction: float = 0.9) -> dict[str, float]:
    """Locate Nanda et al.'s three phases from the measures (no step is hard-coded).

    * memorisation ends where the excluded loss is lowest: before, the network fits the
      training set by memorising; after, the excluded loss rises as it comes to rely on the
      Fourier circuit;
    * circuit formation ends, and clean-up begins, at the first evaluation after that where the
      validation loss has fallen below ``drop`` times its value at the end of memorisation;
    * clean-up ends once the embedding's Gini coefficient has made ``fraction`` of its rise
      from the start of clean-up to its value at the last checkpoint. That value stands for
      the plateau clean-up ends on, so the end must be seen before the last checkpoint: where
      the Gini first gets there only at the last one, nothing shows that it had stopped
      rising, and clean-up is not seen to end within the run.

    Steps that cannot be located (a run that did not grok, or clean-up not seen to end within
    the run) are NaN. ``history`` and ``measures`` are one member's; rows missing a value they
    need (a NaN loss, say) are left out of that value's curve.
    """
    one_member(history)
    curves = {}  # each curve's rows, sorted by step and numbered afresh (a concat's labels may repeat)
    for name, frame, column in (("history", history, "val_loss"), ("measures", measures, "excluded_loss"),
                                ("measures", measures, "gini_embedding")):
        curves[column] = frame.dropna(subset=[column]).sort_values("step", ignore_index=True)
        if curves[column].empty:
            raise ValueError(f"{name} has no row with {column}: the phases need at least one")
    h, m, g = curves["val_loss"], curves["excluded_loss"], curves["gini_embedding"]
    memorised = float(m.loc[m["excluded_loss"].idxmin(), "step"])
    plateau = np.interp(memorised, h["step"], h["val_loss"])
    after = h[(h["step"] > memorised) & (h["val_loss"] < drop * plateau)]
    cleanup = float(after["step"].iloc[0]) if len(after) else float("nan")
    done = float("nan")
    if np.isfinite(cleanup):
        g0 = np.interp(cleanup, g["step"], g["gini_embedding"])
        g1 = g["gini_embedding"].iloc[-1]
        later = g[(g["step"] >= cleanup) & (g["gini_embedding"] >= g0 + fraction * (g1 - g0))]
        # The last checkpoint always meets the level it sets: an end there is no end seen. A
        # Gini that did not rise had no clean-up to end (any step would meet the level).
        if g1 > g0 and len(later) and later["step"].iloc[0] < g["step"].iloc[-1]:
            done = float(later["step"].iloc[0])
    return {"memorisation_end": memorised, "circuit_formation_end": cleanup, "cleanup_end": done}

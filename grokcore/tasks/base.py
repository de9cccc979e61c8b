"""What every task gives the training loop: examples, splits, a loss and a metric.

A task is a typed config (a :class:`~grokcore.config.Spec`) that can build its examples.
The loop never asks which paper a task comes from: it gets a :class:`TaskData` of
tensors already on the device, and a loss kind it knows how to compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from grokcore.config import Spec

#: cross_entropy_fp64 is cross-entropy with its softmax in float64, as Nanda et al.'s code takes it:
#: in float32 a probability within 6e-8 of 1 rounds to 1, so an example fitted that well adds
#: nothing for its own class to the gradient and reports a loss of 0 (Prieto et al. 2025,
#: arXiv:2501.04697, call this softmax collapse).
LOSSES = ("cross_entropy", "cross_entropy_fp64", "mse")


@dataclass
class TaskData:
    """A task's examples and every member's splits, on one device.

    ``train_idx`` and each ``evals`` index tensor point into ``inputs``/``targets``.
    Rows are padded to one length (members may have different training fractions);
    ``*_weight`` is 1 for a real entry and 0 for padding.
    """

    inputs: Tensor  # (N, ...) every example
    targets: Tensor  # (N,) class ids
    train_idx: Tensor  # (K, n_train_max)
    train_weight: Tensor  # (K, n_train_max)
    evals: dict[str, tuple[Tensor, Tensor]]  # split name -> (idx (K, n) or (n,) shared, weight (K, n))
    loss: str
    n_outputs: int

    @property
    def train_count(self) -> Tensor:
        return self.train_weight.sum(1)


class Task(Spec):
    """Base of task configs. Subclasses define :meth:`examples` and :meth:`split`."""

    input_kind: ClassVar[str] = "tokens"  # tokens | image | vector | graph | text
    loss: ClassVar[str] = "cross_entropy"

    def examples(self) -> tuple[Tensor, Tensor]:
        """All examples as CPU tensors: inputs (N, ...), targets (N,)."""
        raise NotImplementedError

    def split(self, seed: int, train_fraction: float | None) -> tuple[Tensor, Tensor]:
        """One member's (train indices, validation indices) into :meth:`examples`."""
        raise NotImplementedError

    def member_split(self, member: dict) -> tuple[Tensor, Tensor]:
        """The split of a member of ``RunConfig.members()``: by its ``split_seed`` where the
        sweep gives one, else by its seed (so split seed k is the split of the member of seed k)."""
        return self.split(member.get("split_seed", member["seed"]), member.get("train_fraction"))

    def model_dims(self) -> dict:
        """What a model needs to know about its inputs and outputs."""
        raise NotImplementedError

    @property
    def n_classes(self) -> int:
        """How many answers there are (targets are 0..n_classes - 1): a model needs an output for each."""
        return self.model_dims()["n_outputs"]

    def build(self, members: list[dict], device: torch.device | str) -> TaskData:
        inputs, targets = self.examples()
        train, val = zip(*(self.member_split(m) for m in members))
        train_idx, train_weight = _pad(train)
        val_idx, val_weight = _pad(val)
        if all(torch.equal(v, val[0]) for v in val):
            val_idx = val_idx[0]  # one shared validation set: evaluate it once for all members
        dev = torch.device(device)
        return TaskData(
            inputs=inputs.to(dev),
            targets=targets.to(dev),
            train_idx=train_idx.to(dev),
            train_weight=train_weight.to(dev),
            evals={
                "train": (train_idx.to(dev), train_weight.to(dev)),
                "val": (val_idx.to(dev), val_weight.to(dev)),
            },
            loss=self.loss,
            n_outputs=self.model_dims()["n_outputs"],
        )


def _pad(rows: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """Stack index rows of different lengths; pad by repeating the first index, weight 0."""
    n = max(len(r) for r in rows)
    idx = torch.stack([torch.cat([r, r[:1].expand(n - len(r))]) for r in rows])
    weight = torch.stack([(torch.arange(n) < len(r)).float() for r in rows])
    return idx, weight


def seeded_permutation(n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)


def _softmax_input(loss: str, outputs: Tensor) -> Tensor:
    """The logits a cross-entropy's softmax takes: in float64 for ``cross_entropy_fp64``."""
    return outputs.double() if loss == "cross_entropy_fp64" else outputs


def example_loss(loss: str, outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example loss. ``outputs`` is (..., C) and ``targets`` (...) class ids. ``mse``
    compares the outputs with one-hot targets, averaged over the C outputs (as
    ``nn.MSELoss`` in Omnigrok). ``cross_entropy_fp64``'s loss is float64."""
    if loss in ("cross_entropy", "cross_entropy_fp64"):
        logits = _softmax_input(loss, outputs)
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)
    if loss == "mse":
        onehot = F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
        return (outputs - onehot).pow(2).mean(-1)
    raise ValueError(f"loss = {loss!r} is not allowed: must be one of {', '.join(LOSSES)}")


def loss_gradient(loss: str, outputs: Tensor, targets: Tensor) -> Tensor:
    """Each example's gradient of :func:`example_loss` with respect to its ``outputs``
    (..., C): softmax(outputs) minus the one-hot target for cross-entropy (worked out in float64
    for ``cross_entropy_fp64``, and returned in the outputs' dtype), and 2 (outputs - one-hot) / C
    for ``mse``. A training step needs only this, not the loss."""
    onehot = F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype)
    if loss in ("cross_entropy", "cross_entropy_fp64"):
        logits = _softmax_input(loss, outputs)
        return (logits.softmax(-1) - onehot.to(logits.dtype)).to(outputs.dtype)
    if loss == "mse":
        return (outputs - onehot) * (2 / outputs.shape[-1])
    raise ValueError(f"loss = {loss!r} is not allowed: must be one of {', '.join(LOSSES)}")


def per_example(loss: str, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example loss and accuracy (1.0 where the arg-max output is the target)."""
    correct = (outputs.argmax(-1) == targets).to(outputs.dtype)
    return example_loss(loss, outputs, targets), correct

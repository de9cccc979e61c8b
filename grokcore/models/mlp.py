"""Learned embeddings, summed, then an MLP decoder: Liu et al. 2022's toy model.

    f(a, b) = Dec(E_a + E_b)

(arXiv 2205.10343, section 2; the official code, ejmichaud/grokking-squared, uses a 1-d
embedding and a 200-200 tanh decoder). The representation is the embedding table; the
decoder maps a sum of two embeddings to the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn as nn
from torch import Tensor

from grokcore.config import POSITIVE, Check, Spec, spec_field


@dataclass(frozen=True)
class SumEmbeddingMLP(Spec):
    """Config of :class:`SumEmbeddingMLPModel`."""

    embed_dim: int = spec_field(1, check=POSITIVE, doc="embedding dimension d_in")
    hidden: tuple[int, ...] = spec_field(
        (200, 200),
        check=Check(lambda widths: all(w > 0 for w in widths), "positive widths, e.g. (200, 200)"),
        doc="decoder hidden widths",
    )
    activation: Literal["tanh", "relu"] = spec_field("tanh", doc="decoder non-linearity")
    embed_init: float = spec_field(1.0, check=POSITIVE, doc="embeddings start U[-s/2, s/2] with this s")
    init_scale: float = spec_field(1.0, check=POSITIVE, doc="multiply every initial weight by this")

    def n_outputs(self, dims: dict) -> int:
        """How many outputs the built model has (RunConfig checks that every answer has one)."""
        return dims["n_outputs"]

    def build(self, dims: dict) -> "SumEmbeddingMLPModel":
        return SumEmbeddingMLPModel(self, n_values=dims["n_values"], n_outputs=dims["n_outputs"], positions=dims["operand_positions"])


class SumEmbeddingMLPModel(nn.Module):
    def __init__(self, cfg: SumEmbeddingMLP, n_values: int, n_outputs: int, positions: tuple[int, ...]):
        super().__init__()
        self.positions = tuple(positions)
        self.embed = nn.Embedding(n_values, cfg.embed_dim)
        nn.init.uniform_(self.embed.weight, -cfg.embed_init / 2, cfg.embed_init / 2)
        widths = (cfg.embed_dim, *cfg.hidden, n_outputs)
        act = nn.Tanh if cfg.activation == "tanh" else nn.ReLU
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(act())
        self.decoder = nn.Sequential(*layers)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> outputs (B, n_outputs)."""
        return self.decoder(sum(self.embed(tokens[:, pos]) for pos in self.positions))

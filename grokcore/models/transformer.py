"""A small transformer that reads its answer out at the last token, or at every token.

One class covers the grokking papers' transformers through its config:

* Power et al. 2022 (arXiv 2201.02177): 2 layers, d_model 128, 4 heads, d_mlp 512, ReLU,
  post-LayerNorm, no biases, untied unembedding (openai/grok ``transformer.py``; it adds a
  fixed sinusoidal position code, we default to learned positions as danielmamay/grokking).
* Nanda et al. 2023 (arXiv 2301.05217): 1 layer, no LayerNorm, biases in the MLP only,
  weights drawn N(0, 1/d_model) (unembedding N(0, 1/vocab)).
* Liu et al. 2022 (arXiv 2205.10343), section 4.2, as its authors' code built it: PyTorch's
  pre-norm encoder layers (full attention, biases everywhere, their initialisation) over the
  two operands without a position code, every position read out side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
from torch import Tensor

from grokcore.config import POSITIVE, ConfigError, Spec, spec_field


@dataclass(frozen=True)
class Transformer(Spec):
    """Config of :class:`TransformerModel`."""

    n_layers: int = spec_field(2, check=POSITIVE, doc="transformer blocks")
    d_model: int = spec_field(128, check=POSITIVE, doc="residual width")
    n_heads: int = spec_field(4, check=POSITIVE, doc="attention heads (d_model / n_heads each)")
    d_mlp: int = spec_field(512, check=POSITIVE, doc="MLP hidden width")
    norm: Literal["post", "pre", "none"] = spec_field("post", doc="LayerNorm placement")
    positions: Literal["learned", "sinusoidal", "none"] = spec_field(
        "learned", doc="position code (none: the tokens alone; with full attention only a concat readout then sees their order)"
    )
    attention: Literal["causal", "full"] = spec_field(
        "causal", doc="causal: a position attends to itself and those before it; full: to every position (an encoder)"
    )
    readout: Literal["last", "concat"] = spec_field(
        "last", doc="logits from the last position, or from every position's output side by side"
    )
    activation: Literal["relu", "gelu"] = spec_field("relu", doc="MLP non-linearity")
    bias: Literal["none", "mlp", "all"] = spec_field(
        "none", doc="biases: none (Power), the MLP's (Nanda), or every linear map's (Liu's code)"
    )
    init: Literal["pytorch", "nanda", "encoder"] = spec_field(
        "pytorch",
        doc="initialisation rule: nn.Linear's defaults; Nanda's; or as nn.TransformerEncoderLayer "
        "(Xavier-uniform q, k, v, zero attention biases)",
    )
    init_scale: float = spec_field(1.0, check=POSITIVE, doc="multiply every initial weight by this")

    @classmethod
    def upgrade(cls, fields: dict) -> dict:
        if "mlp_bias" in fields:  # before bias="none" | "mlp" | "all" (2026-12-06)
            fields = dict(fields)
            fields["bias"] = "mlp" if fields.pop("mlp_bias") else "none"
        return fields

    def validate(self):
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"n_heads = {self.n_heads} is not allowed: must divide d_model = {self.d_model}"
            )
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"d_model = {self.d_model} is not allowed with sinusoidal positions: must be even")

    def n_outputs(self, dims: dict) -> int:
        """How many outputs the built model has (RunConfig checks that every answer has one)."""
        return dims["n_outputs"]

    def build(self, dims: dict) -> "TransformerModel":
        return TransformerModel(self, vocab_size=dims["vocab_size"], seq_len=dims["seq_len"], n_outputs=dims["n_outputs"])


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, causal: bool = True, bias: bool = False):
        super().__init__()
        self.n_heads, self.causal = n_heads, causal
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor, last_only: bool = False, qkv: Tensor | None = None) -> Tensor:
        """Self-attention, causal or full; with ``last_only`` only the last position queries.
        ``qkv``: the projections, where the caller has them already (``x`` then gives only
        the shape and device)."""
        B, T, D = x.shape
        H = self.n_heads
        qkv = self.qkv(x) if qkv is None else qkv
        q, k, v = qkv.view(B, T, 3, H, D // H).unbind(2)  # (B, T, H, d_head) each
        if last_only:
            q = q[:, -1:]
        # Sequences here are a handful of tokens: broadcast products beat batches of tiny matmuls.
        scores = (q[:, :, None] * k[:, None]).sum(-1) / math.sqrt(D // H)  # (B, Tq, Tk, H)
        if self.causal:
            allowed = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()[-q.shape[1]:]
            scores = scores.masked_fill(~allowed[None, :, :, None], float("-inf"))
        mixed = (scores.softmax(2)[..., None] * v[:, None]).sum(2)  # (B, Tq, H, d_head)
        return self.out(mixed.reshape(B, q.shape[1], D))


class MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, activation: str, bias: bool):
        super().__init__()
        self.inp = nn.Linear(d_model, d_mlp, bias=bias)
        self.out = nn.Linear(d_mlp, d_model, bias=bias)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()  # a module, so hooks can read neurons

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.act(self.inp(x)))


class Block(nn.Module):
    def __init__(self, cfg: Transformer):
        super().__init__()
        self.norm = cfg.norm
        self.attn = Attention(cfg.d_model, cfg.n_heads, causal=cfg.attention == "causal", bias=cfg.bias == "all")
        self.mlp = MLP(cfg.d_model, cfg.d_mlp, cfg.activation, bias=cfg.bias != "none")
        if cfg.norm != "none":
            self.ln1 = nn.LayerNorm(cfg.d_model)
            self.ln2 = nn.LayerNorm(cfg.d_model)

    def attention_input(self, x: Tensor) -> Tensor:
        return self.ln1(x) if self.norm == "pre" else x

    def forward(self, x: Tensor, last_only: bool = False, qkv: Tensor | None = None) -> Tensor:
        """``last_only``: return the last position only (all the readout needs). ``qkv``: the
        attention's projections of ``attention_input(x)``, where the caller has them already."""
        skip = x[:, -1:] if last_only else x
        x = skip + self.attn(self.attention_input(x) if qkv is None else x, last_only, qkv)
        if self.norm == "post":
            x = self.ln1(x)
            return self.ln2(x + self.mlp(x))
        return x + self.mlp(self.ln2(x) if self.norm == "pre" else x)


#: The most table rows for which an uncompiled GPU lookup's gradient is a one-hot product
#: (:meth:`TransformerModel.lookup`): its cost and memory grow with the rows.
ONE_HOT_ROWS = 256


class LookupGradientByProduct(torch.autograd.Function):
    """``table[index]`` whose backward is a product with the index's one-hot rows,
    ``onehot(index)^T @ grad``: a handful of kernels that add in a fixed order, like every
    other weight's gradient (in TF32 where that is on). Eager on a GPU, the embedding's own
    backward sorts the index first, in dozens of small kernels, and in Nanda et al.'s
    setting its sums differed from run to run. The one-hot matrix has a row per looked-up
    token and a column per table row."""

    generate_vmap_rule = True  # the members of an ensemble through vmap

    @staticmethod
    def forward(table: Tensor, index: Tensor) -> Tensor:
        return nn.functional.embedding(index, table)

    @staticmethod
    def setup_context(ctx, inputs, output):
        table, index = inputs
        ctx.save_for_backward(index)
        ctx.save_for_forward(index)
        ctx.rows = table.shape[0]

    @staticmethod
    def jvp(ctx, table_tangent: Tensor, _index_tangent) -> Tensor:
        (index,) = ctx.saved_tensors
        return nn.functional.embedding(index, table_tangent)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (index,) = ctx.saved_tensors
        index = index.reshape(-1)
        onehot = (index[:, None] == torch.arange(ctx.rows, device=index.device)).to(grad.dtype)
        return onehot.T @ grad.reshape(index.shape[0], -1), None


def lookup_in_lanes(table: Tensor, index: Tensor, lanes: int) -> Tensor:
    """``table[index]`` for an index (B, T), with example i reading lane i % lanes of the table
    expanded to a stack of lanes (see :meth:`TransformerModel.lookup`)."""
    if lanes <= 1:
        return nn.functional.embedding(index, table)
    lane = torch.arange(index.shape[0], device=index.device)[:, None] % lanes
    return table.expand(lanes, *table.shape)[lane, index]


def sinusoidal_positions(seq_len: int, d_model: int, device) -> Tensor:
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, device=device) / d_model)
    code = torch.zeros(seq_len, d_model, device=device)
    code[:, 0::2] = torch.sin(pos * freq)
    code[:, 1::2] = torch.cos(pos * freq)
    return code


class TransformerModel(nn.Module):
    def __init__(self, cfg: Transformer, vocab_size: int, seq_len: int, n_outputs: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.pos = nn.Embedding(seq_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        read = cfg.d_model * (seq_len if cfg.readout == "concat" else 1)
        self.unembed = nn.Linear(read, n_outputs, bias=cfg.bias == "all")
        if cfg.init == "nanda":
            self._init_nanda(vocab_size)
        elif cfg.init == "encoder":
            self._init_encoder()

    def _init_nanda(self, vocab_size: int):
        std = 1 / math.sqrt(self.cfg.d_model)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                nn.init.normal_(p, std=std)
        nn.init.normal_(self.unembed.weight, std=1 / math.sqrt(vocab_size))

    def _init_encoder(self):
        """As ``nn.MultiheadAttention`` initialises itself (the rest as nn.Linear's defaults)."""
        for block in self.blocks:
            nn.init.xavier_uniform_(block.attn.qkv.weight)
            for bias in (block.attn.qkv.bias, block.attn.out.bias):
                if bias is not None:
                    nn.init.zeros_(bias)

    def lookup(self, table: Tensor, index: Tensor) -> Tensor:
        """``table[index]`` for an index (B, T); on a GPU, with a backward pass that is fast.

        Compiled for a GPU, the lookup's backward adds each example's gradient into its row
        with atomic adds, and a row that every example reads (the "=" sign's) queues thousands
        of them: the embedding's backward took 21 of a step's 270 µs in Nanda et al.'s setting
        on an H100. So there, example i reads lane i % lanes of the table expanded to a stack
        of lanes (a lane per 256 examples, at most 16), and the backward adds each example's
        gradient into its own lane and then sums the lanes: the same gradient in 6 µs. The
        expanded table is a view, so the forward copies nothing. Uncompiled on a GPU, where
        the table is small enough, the gradient is a product with one-hot rows
        (:class:`LookupGradientByProduct`): on an H100 the lookup and its backward took 34 µs
        instead of 109 in Nanda et al.'s setting and 17 instead of 59 in Power et al.'s, and
        the same run gave the same weights twice. (As a compiled step's, it took Nanda et
        al.'s step from 227 to 241 µs.)"""
        if not (index.is_cuda and torch.is_grad_enabled()):
            return nn.functional.embedding(index, table)
        if torch.compiler.is_compiling():
            return lookup_in_lanes(table, index, min(16, index.shape[0] // 256))
        if table.shape[0] <= ONE_HOT_ROWS:
            return LookupGradientByProduct.apply(table, index)
        return nn.functional.embedding(index, table)

    def position_code(self, T: int) -> Tensor | None:
        """(T, d_model), added to the token embeddings; None without a position code."""
        if self.cfg.positions == "learned":
            return self.pos.weight[:T]
        if self.cfg.positions == "sinusoidal":
            return sinusoidal_positions(T, self.cfg.d_model, self.embed.weight.device)
        return None

    def first_qkv(self, tokens: Tensor, positions: Tensor | None) -> Tensor | None:
        """The first block's attention projections, looked up rather than multiplied out.

        The first block sees nothing but a token's embedding plus its position's code, so its
        projections take one of vocab x T values. On the CPU, where a step's time is its
        arithmetic, they are computed once per (token, position) and gathered, and so are
        their gradients, when that saves at least 2^23 multiply-adds in the forward. On 2
        cores, Nanda et al.'s full-batch step took 40 ms instead of 60, and Power et al.'s
        29.8 instead of 32.3; around 5e6 saved the two ways were within 2% of each other, and
        a 1x32 model with batch 64 (5e5) would have lost 5%. On an H100, where small products
        cost their launches, it saved nothing compiled and cost 10% uncompiled. Tried again
        compiled, it took 28 µs off the products of Nanda et al.'s step and added 28-34 µs of
        other kernels, most of it adding the gathered rows' gradients into the table's lanes
        (13-15 µs) and summing the lanes. None where the projections are multiplied out.
        Without a position code, a token's projections are the same at every position: one
        row per token."""
        V, (B, T), D = self.embed.num_embeddings, tokens.shape, self.cfg.d_model
        rows = V if positions is None else V * T
        if tokens.device.type != "cpu" or (B * T - rows) * 3 * D * D < 2**23:
            return None
        block = self.blocks[0]
        if positions is None:
            return self.lookup(block.attn.qkv(block.attention_input(self.embed.weight)), tokens)
        inputs = block.attention_input(self.embed.weight[:, None] + positions)  # (V, T, d_model)
        table = block.attn.qkv(inputs).flatten(0, 1)  # row v * T + t
        return self.lookup(table, tokens * T + torch.arange(T, device=tokens.device))

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> logits (B, n_outputs), read out at the last position or at all."""
        positions = self.position_code(tokens.shape[-1])
        x = self.lookup(self.embed.weight, tokens)
        if positions is not None:
            x = x + positions
        qkv = self.first_qkv(tokens, positions)
        last_only = self.cfg.readout == "last"  # then the last block needs no other position
        for i, block in enumerate(self.blocks):
            x = block(x, last_only=last_only and i == len(self.blocks) - 1, qkv=qkv if i == 0 else None)
        return self.unembed(x[:, -1] if last_only else x.flatten(1))

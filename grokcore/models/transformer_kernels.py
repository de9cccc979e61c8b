"""A one-layer transformer's training gradient as two hand-written Triton kernels (GPU).

Nanda et al.'s setting (arXiv 2301.05217: one block, no LayerNorm, ReLU MLP, learned
positions, three tokens "a b =", read out at the last) is a small network on a full batch of
3,830 examples, and a compiled step of it is ~50 kernels whose time is mostly their own
latency (book/appendix/benchmarks.md). Here one step's gradient is two kernels:

- ``_rows_kernel``: for a block of examples, the forward pass, the loss's gradient with
  respect to the outputs (softmax minus the one-hot target, times the example's share of the
  mean), and every input gradient back to the embeddings. Each example's chain needs only
  the weights and its own activations, so nothing leaves the block but the per-example
  tensors that the weight gradients are made of.
- ``_weights_kernel``: every weight gradient, a product over the batch (A^T B), in tiles
  and in ``splits`` parts along the batch. Each part is written whole, so nothing is zeroed
  and nothing is added atomically: the same step gives the same bits every time, and the
  optimiser's update sums the parts (fused into it when compiled).

:func:`unsupported` says why a model or task cannot use them; the trainer then computes the
gradient with autograd, as it does for every other model. tests/test_transformer_kernels.py
checks both kernels against autograd in Triton's interpreter on the CPU.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

SEQ_LEN = 3  # "a b =": the kernels unroll the three positions
MLP_CHUNK = 64  # hidden units at a time in _rows_kernel


@triton.jit
def _wT(ptr, ld, in0, IN: tl.constexpr, out0, OUT: tl.constexpr, out_max):
    """[IN, OUT] tile of W^T, W (out, in) row-major with row stride ld."""
    i = in0 + tl.arange(0, IN)
    o = out0 + tl.arange(0, OUT)
    return tl.load(ptr + o[None, :] * ld + i[:, None], mask=o[None, :] < out_max, other=0.0)


@triton.jit
def _w(ptr, ld, out0, OUT: tl.constexpr, in0, IN: tl.constexpr, out_max):
    """[OUT, IN] tile of W (out, in) row-major."""
    o = out0 + tl.arange(0, OUT)
    i = in0 + tl.arange(0, IN)
    return tl.load(ptr + o[:, None] * ld + i[None, :], mask=o[:, None] < out_max, other=0.0)


@triton.jit
def _rows_kernel(
    inputs, targets, idx, share, B,
    E, P, Wqkv, Wo, Win, b_in, Wout, b_out, Wu,
    x_buf, dqkv_buf, dx_buf, z_buf, r_buf, dr_buf, h_buf, dh_buf, r2_buf, dr2_buf, g_buf,
    C, scale,
    D: tl.constexpr, H: tl.constexpr, M: tl.constexpr, MC: tl.constexpr, CP: tl.constexpr,
    KC: tl.constexpr, BB: tl.constexpr, HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
):
    """Examples [BB * program, BB * (program + 1)) of the batch: forward, loss gradient and
    input gradients; writes the *_buf tensors (rows: examples, or example * 3 + position).

    Registers hold a few (BB, D) rows at a time; weights come in tiles of at most D x 64
    (a head's columns, a chunk of hidden units, KC rows of the unembedding), and a product
    whose weight would not fit (the unembedding's) reads its input back from the buffer just
    written, KC columns at a time: whole D x D tiles would not fit in shared memory."""
    DH: tl.constexpr = D // H
    rows = tl.program_id(0) * BB + tl.arange(0, BB)
    live = rows < B
    m2 = live[:, None]
    d = tl.arange(0, D)
    dh_ = tl.arange(0, DH)
    ex = tl.load(idx + rows, mask=live, other=0)
    row_d = rows[:, None] * D + d[None, :]
    at0 = (rows * 3 + 0)[:, None] * D + d[None, :]  # position 0 of each example's rows
    at1 = at0 + D
    at2 = at0 + 2 * D

    # forward: embeddings
    tok = tl.load(inputs + ex * 3 + 0, mask=live, other=0)
    x0 = tl.load(E + tok[:, None] * D + d[None, :]) + tl.load(P + 0 * D + d)[None, :]
    tok = tl.load(inputs + ex * 3 + 1, mask=live, other=0)
    x1 = tl.load(E + tok[:, None] * D + d[None, :]) + tl.load(P + 1 * D + d)[None, :]
    tok = tl.load(inputs + ex * 3 + 2, mask=live, other=0)
    x2 = tl.load(E + tok[:, None] * D + d[None, :]) + tl.load(P + 2 * D + d)[None, :]
    tl.store(x_buf + at0, x0, mask=m2)
    tl.store(x_buf + at1, x1, mask=m2)
    tl.store(x_buf + at2, x2, mask=m2)

    # attention, a head at a time: the last position's query against all three positions
    r = x2
    for head in range(H):
        c0 = head * DH
        q = tl.dot(x2, _wT(Wqkv, D, 0, D, c0, DH, D), input_precision=PREC)
        wk = _wT(Wqkv, D, 0, D, D + c0, DH, 2 * D)
        wv = _wT(Wqkv, D, 0, D, 2 * D + c0, DH, 3 * D)
        s0 = tl.sum(q * tl.dot(x0, wk, input_precision=PREC), axis=1) * scale
        s1 = tl.sum(q * tl.dot(x1, wk, input_precision=PREC), axis=1) * scale
        s2 = tl.sum(q * tl.dot(x2, wk, input_precision=PREC), axis=1) * scale
        top = tl.maximum(tl.maximum(s0, s1), s2)
        e0 = tl.exp(s0 - top)
        e1 = tl.exp(s1 - top)
        e2 = tl.exp(s2 - top)
        tot = e0 + e1 + e2
        z = ((e0 / tot)[:, None] * tl.dot(x0, wv, input_precision=PREC)
             + (e1 / tot)[:, None] * tl.dot(x1, wv, input_precision=PREC)
             + (e2 / tot)[:, None] * tl.dot(x2, wv, input_precision=PREC))
        tl.store(z_buf + rows[:, None] * D + c0 + dh_[None, :], z, mask=m2)
        r += tl.dot(z, _wT(Wo, D, c0, DH, 0, D, D), input_precision=PREC)
    tl.store(r_buf + row_d, r, mask=m2)

    # MLP, MC hidden units at a time; the hidden activations are kept for the backward
    r2 = r
    for j0 in range(0, M, MC):
        j = j0 + tl.arange(0, MC)
        h = tl.dot(r, _wT(Win, D, 0, D, j0, MC, M), input_precision=PREC)
        if HAS_BIAS:
            h += tl.load(b_in + j)[None, :]
        h = tl.maximum(h, 0.0)
        tl.store(h_buf + rows[:, None] * M + j[None, :], h, mask=m2)
        r2 += tl.dot(h, _wT(Wout, M, j0, MC, 0, D, D), input_precision=PREC)
    if HAS_BIAS:
        r2 += tl.load(b_out + d)[None, :]
    tl.store(r2_buf + row_d, r2, mask=m2)
    tl.debug_barrier()  # r2 and h as this block stored them, read back below

    # readout and the loss's gradient: (softmax - onehot) * the example's share of the mean
    c = tl.arange(0, CP)
    logits = tl.zeros([BB, CP], dtype=tl.float32)
    for u0 in range(0, D, KC):
        u = u0 + tl.arange(0, KC)
        part = tl.load(r2_buf + rows[:, None] * D + u[None, :], mask=m2, other=0.0)
        logits += tl.dot(part, _wT(Wu, D, u0, KC, 0, CP, C), input_precision=PREC)
    logits = tl.where(c[None, :] < C, logits, float("-inf"))
    top = tl.max(logits, axis=1)
    e = tl.exp(logits - top[:, None])
    y = tl.load(targets + ex, mask=live, other=0)
    g = e / tl.sum(e, axis=1)[:, None] - (c[None, :] == y[:, None]).to(tl.float32)
    g = g * tl.load(share + rows, mask=live, other=0.0)[:, None]
    g = tl.where(c[None, :] < C, g, 0.0)
    tl.store(g_buf + rows[:, None] * CP + c[None, :], g, mask=m2)
    tl.debug_barrier()  # g as this block stored it

    # backward: unembedding, KC outputs at a time, then the MLP
    dr2 = tl.zeros([BB, D], dtype=tl.float32)
    for u0 in range(0, CP, KC):
        u = u0 + tl.arange(0, KC)
        part = tl.load(g_buf + rows[:, None] * CP + u[None, :], mask=m2, other=0.0)
        dr2 += tl.dot(part, _w(Wu, D, u0, KC, 0, D, C), input_precision=PREC)
    tl.store(dr2_buf + row_d, dr2, mask=m2)
    dr = dr2
    for j0 in range(0, M, MC):
        j = j0 + tl.arange(0, MC)
        h = tl.load(h_buf + rows[:, None] * M + j[None, :], mask=m2, other=0.0)
        dh = tl.dot(dr2, _w(Wout, M, 0, D, j0, MC, D), input_precision=PREC)
        dh = tl.where(h > 0, dh, 0.0)
        tl.store(dh_buf + rows[:, None] * M + j[None, :], dh, mask=m2)
        dr += tl.dot(dh, _w(Win, D, j0, MC, 0, D, M), input_precision=PREC)
    tl.store(dr_buf + row_d, dr, mask=m2)

    # attention backward, a head at a time; the forward's per-head values are recomputed
    x0 = tl.load(x_buf + at0, mask=m2, other=0.0)
    x1 = tl.load(x_buf + at1, mask=m2, other=0.0)
    x2 = tl.load(x_buf + at2, mask=m2, other=0.0)
    dx0 = tl.zeros([BB, D], dtype=tl.float32)
    dx1 = tl.zeros([BB, D], dtype=tl.float32)
    dx2 = dr
    for head in range(H):
        c0 = head * DH
        q = tl.dot(x2, _wT(Wqkv, D, 0, D, c0, DH, D), input_precision=PREC)
        wk = _wT(Wqkv, D, 0, D, D + c0, DH, 2 * D)
        wv = _wT(Wqkv, D, 0, D, 2 * D + c0, DH, 3 * D)
        k0 = tl.dot(x0, wk, input_precision=PREC)
        k1 = tl.dot(x1, wk, input_precision=PREC)
        k2 = tl.dot(x2, wk, input_precision=PREC)
        s0 = tl.sum(q * k0, axis=1) * scale
        s1 = tl.sum(q * k1, axis=1) * scale
        s2 = tl.sum(q * k2, axis=1) * scale
        top = tl.maximum(tl.maximum(s0, s1), s2)
        e0 = tl.exp(s0 - top)
        e1 = tl.exp(s1 - top)
        e2 = tl.exp(s2 - top)
        tot = e0 + e1 + e2
        a0 = e0 / tot
        a1 = e1 / tot
        a2 = e2 / tot
        dz = tl.dot(dr, _w(Wo, D, 0, D, c0, DH, D), input_precision=PREC)
        v0 = tl.dot(x0, wv, input_precision=PREC)
        v1 = tl.dot(x1, wv, input_precision=PREC)
        v2 = tl.dot(x2, wv, input_precision=PREC)
        dp0 = tl.sum(dz * v0, axis=1)
        dp1 = tl.sum(dz * v1, axis=1)
        dp2 = tl.sum(dz * v2, axis=1)
        mean = a0 * dp0 + a1 * dp1 + a2 * dp2
        ds0 = (a0 * (dp0 - mean) * scale)[:, None]
        ds1 = (a1 * (dp1 - mean) * scale)[:, None]
        ds2 = (a2 * (dp2 - mean) * scale)[:, None]
        dq = ds0 * k0 + ds1 * k1 + ds2 * k2
        dk0 = ds0 * q
        dk1 = ds1 * q
        dk2 = ds2 * q
        dv0 = a0[:, None] * dz
        dv1 = a1[:, None] * dz
        dv2 = a2[:, None] * dz
        cols = c0 + dh_[None, :]
        tl.store(dqkv_buf + (rows * 3 + 2)[:, None] * (3 * D) + cols, dq, mask=m2)
        tl.store(dqkv_buf + (rows * 3 + 0)[:, None] * (3 * D) + D + cols, dk0, mask=m2)
        tl.store(dqkv_buf + (rows * 3 + 1)[:, None] * (3 * D) + D + cols, dk1, mask=m2)
        tl.store(dqkv_buf + (rows * 3 + 2)[:, None] * (3 * D) + D + cols, dk2, mask=m2)
        tl.store(dqkv_buf + (rows * 3 + 0)[:, None] * (3 * D) + 2 * D + cols, dv0, mask=m2)
        tl.store(dqkv_buf + (rows * 3 + 1)[:, None] * (3 * D) + 2 * D + cols, dv1, mask=m2)
        tl.store(dqkv_buf + (rows * 3 + 2)[:, None] * (3 * D) + 2 * D + cols, dv2, mask=m2)
        wk = _w(Wqkv, D, D + c0, DH, 0, D, 2 * D)
        wv = _w(Wqkv, D, 2 * D + c0, DH, 0, D, 3 * D)
        dx0 += tl.dot(dk0, wk, input_precision=PREC) + tl.dot(dv0, wv, input_precision=PREC)
        dx1 += tl.dot(dk1, wk, input_precision=PREC) + tl.dot(dv1, wv, input_precision=PREC)
        dx2 += (tl.dot(dk2, wk, input_precision=PREC) + tl.dot(dv2, wv, input_precision=PREC)
                + tl.dot(dq, _w(Wqkv, D, c0, DH, 0, D, D), input_precision=PREC))
    tl.store(dx_buf + at0, dx0, mask=m2)
    tl.store(dx_buf + at1, dx1, mask=m2)
    tl.store(dx_buf + at2, dx2, mask=m2)


@triton.jit
def _product_tile(
    A, lda, Bm, ldb, out, bias_out, R, N, K, tile, split, chunk, inputs, idx, V,
    RT: tl.constexpr, NT: tl.constexpr, KT: tl.constexpr,
    HOT: tl.constexpr, HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
):
    """Tile ``tile`` of part ``split`` of A^T @ Bm (A: K x R, Bm: K x N, both row-major),
    the sum over rows [split * chunk, (split + 1) * chunk). With HOT, A is the rows' two-hot
    codes instead, a 1 at the row's token and at V + its position (row k is example k // 3's
    token k % 3): the gradient of a token and position lookup. With HAS_BIAS the tiles of
    the first column block also write A's column sums (a bias's gradient)."""
    n_tiles = tl.cdiv(N, NT)
    r = (tile // n_tiles) * RT + tl.arange(0, RT)
    n = (tile % n_tiles) * NT + tl.arange(0, NT)
    acc = tl.zeros([RT, NT], dtype=tl.float32)
    col_sum = tl.zeros([RT], dtype=tl.float32)
    k_end = tl.minimum(K, (split + 1) * chunk)
    for k0 in range(split * chunk, k_end, KT):
        k = k0 + tl.arange(0, KT)
        kin = k < k_end
        if HOT:
            ex = tl.load(idx + k // 3, mask=kin, other=0)
            tok = tl.load(inputs + ex * 3 + k % 3, mask=kin, other=-1)
            tok = tl.where(kin, tok, -1)
            pos = tl.where(kin, V + k % 3, -1)
            a = ((tok[:, None] == r[None, :]) | (pos[:, None] == r[None, :])).to(tl.float32)
        else:
            a = tl.load(A + k[:, None] * lda + r[None, :], mask=kin[:, None] & (r[None, :] < R), other=0.0)
        b = tl.load(Bm + k[:, None] * ldb + n[None, :], mask=kin[:, None] & (n[None, :] < N), other=0.0)
        acc += tl.dot(tl.trans(a), b, input_precision=PREC)
        if HAS_BIAS:
            col_sum += tl.sum(a, axis=0)
    tl.store(out + r[:, None] * N + n[None, :], acc, mask=(r[:, None] < R) & (n[None, :] < N))
    if HAS_BIAS:
        if tile % n_tiles == 0:
            tl.store(bias_out + r, col_sum, mask=r < R)


@triton.jit
def _weights_kernel(
    inputs, idx, B, V, C, partials, P_total,
    x_buf, dqkv_buf, dx_buf, z_buf, r_buf, dr_buf, h_buf, dh_buf, r2_buf, dr2_buf, g_buf,
    o_emb, o_qkv, o_wo, o_win, o_bin, o_wout, o_bout, o_wu,
    t_emb, t_qkv, t_wo, t_win, t_wout, chunk,
    D: tl.constexpr, M: tl.constexpr, CP: tl.constexpr,
    RT: tl.constexpr, NT: tl.constexpr, KT: tl.constexpr, HAS_BIAS: tl.constexpr, PREC: tl.constexpr,
):
    """Every weight gradient, part ``program_id(1)`` of the batch: a grid of the products'
    tiles, t_* of each, the unembedding's taking the rest (o_*: where each gradient starts in
    the flat row)."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    out = partials + split * P_total
    # rows of the 3B-row products take 3 times the chunk of the B-row ones
    if pid < t_emb:
        _product_tile(dx_buf, D, dx_buf, D, out + o_emb, out, V + 3, D, 3 * B, pid, split, 3 * chunk,
                      inputs, idx, V, RT, NT, KT, True, False, PREC)
    elif pid < t_emb + t_qkv:
        _product_tile(dqkv_buf, 3 * D, x_buf, D, out + o_qkv, out, 3 * D, D, 3 * B, pid - t_emb, split,
                      3 * chunk, inputs, idx, V, RT, NT, KT, False, False, PREC)
    elif pid < t_emb + t_qkv + t_wo:
        _product_tile(dr_buf, D, z_buf, D, out + o_wo, out, D, D, B, pid - t_emb - t_qkv, split, chunk,
                      inputs, idx, V, RT, NT, KT, False, False, PREC)
    elif pid < t_emb + t_qkv + t_wo + t_win:
        _product_tile(dh_buf, M, r_buf, D, out + o_win, out + o_bin, M, D, B, pid - t_emb - t_qkv - t_wo,
                      split, chunk, inputs, idx, V, RT, NT, KT, False, HAS_BIAS, PREC)
    elif pid < t_emb + t_qkv + t_wo + t_win + t_wout:
        _product_tile(dr2_buf, D, h_buf, M, out + o_wout, out + o_bout, D, M, B,
                      pid - t_emb - t_qkv - t_wo - t_win, split, chunk,
                      inputs, idx, V, RT, NT, KT, False, HAS_BIAS, PREC)
    else:
        _product_tile(g_buf, CP, r2_buf, D, out + o_wu, out, C, D, B,
                      pid - t_emb - t_qkv - t_wo - t_win - t_wout, split, chunk,
                      inputs, idx, V, RT, NT, KT, False, False, PREC)


def unsupported(model: torch.nn.Module, inputs: Tensor, loss: str, members: int) -> str | None:
    """Why these kernels cannot compute this run's gradient (None: they can)."""
    from grokcore.models.transformer import TransformerModel

    if members != 1:
        return f"{members} members (the kernels train one network)"
    if not isinstance(model, TransformerModel):
        return f"model {type(model).__name__} (the kernels are a Transformer's)"
    cfg = model.cfg
    wanted = dict(n_layers=1, norm="none", activation="relu", positions="learned")
    for key, value in wanted.items():
        if getattr(cfg, key) != value:
            return f"{key} = {getattr(cfg, key)!r} (the kernels need {value!r})"
    if loss != "cross_entropy":
        return f"loss {loss!r} (the kernels need cross_entropy)"
    if inputs.dim() != 2 or inputs.shape[1] != SEQ_LEN or not inputs.is_contiguous():
        return f"inputs of shape {tuple(inputs.shape)} (the kernels need {SEQ_LEN} tokens an example, contiguous)"
    d_head = cfg.d_model // cfg.n_heads
    if d_head < 16 or cfg.d_model & (cfg.d_model - 1) or d_head & (d_head - 1):
        return f"d_model = {cfg.d_model}, n_heads = {cfg.n_heads} (the kernels need powers of 2, d_model / n_heads >= 16)"
    if cfg.d_mlp % MLP_CHUNK:
        return f"d_mlp = {cfg.d_mlp} (the kernels need a multiple of {MLP_CHUNK})"
    if model.unembed.out_features > 256:
        return f"{model.unembed.out_features} outputs (the kernels hold at most 256 an example)"
    return None



class TransformerGradient:
    """The gradient of a one-layer transformer's weighted loss on a batch of ``batch``
    examples, from flat weights (1, P) in ``model.named_parameters()`` order; built once
    per run (it holds the per-example buffers, ~15 KB an example at Nanda et al.'s sizes).

    ``splits`` parts along the batch, ``block_rows`` examples a block of ``_rows_kernel``,
    ``tile`` x ``tile`` weight-gradient tiles over ``k_tile`` rows at a time, and the kernels'
    warps: the defaults are first choices for Nanda et al.'s sizes, not yet tuned on a GPU
    (at them the kernels fit an H100's shared memory: tests/test_transformer_kernels.py)."""

    def __init__(self, model: torch.nn.Module, batch: int, device: torch.device, tf32: bool,
                 splits: int = 8, block_rows: int = 16, tile: int = 64, k_tile: int = 32,
                 rows_warps: int = 4, weights_warps: int = 4):
        cfg = model.cfg
        self.D, self.H, self.M = cfg.d_model, cfg.n_heads, cfg.d_mlp
        self.V = model.embed.num_embeddings
        self.C = model.unembed.out_features
        self.CP = max(16, triton.next_power_of_2(self.C))
        self.has_bias = cfg.mlp_bias
        self.B = batch
        self.splits, self.block_rows = splits, block_rows
        names = [name for name, _ in model.named_parameters()]
        sizes = [p.numel() for _, p in model.named_parameters()]
        self.offsets = dict(zip(names, [sum(sizes[:i]) for i in range(len(sizes))]))
        self.n_params = sum(sizes)
        # The token and position tables' gradient is one product (two-hot rows): pos
        # follows embed in the flat row.
        assert self.offsets["pos.weight"] == self.offsets["embed.weight"] + self.V * self.D
        B, D, M = batch, self.D, self.M
        empty = lambda *shape: torch.empty(*shape, device=device, dtype=torch.float32)  # noqa: E731
        # Only the last position has a query: the other rows' query columns stay zero.
        self.x, self.dx = empty(3 * B, D), empty(3 * B, D)
        self.dqkv = torch.zeros(3 * B, 3 * D, device=device)
        self.z, self.r, self.dr, self.r2, self.dr2 = (empty(B, D) for _ in range(5))
        self.h, self.dh, self.g = empty(B, M), empty(B, M), empty(B, self.CP)
        self.parts = empty(splits, 1, self.n_params)
        tiles = lambda rows, cols: triton.cdiv(rows, tile) * triton.cdiv(cols, tile)  # noqa: E731
        self.tiles = (tiles(self.V + SEQ_LEN, D), tiles(3 * D, D), tiles(D, D), tiles(M, D), tiles(D, M), tiles(self.C, D))
        self.chunk = triton.cdiv(triton.cdiv(B, splits), k_tile) * k_tile  # batch rows a part
        # The kernels' compile-time settings (and Triton's launch options), one place for the
        # launches and for tests that compile them for a GPU the machine lacks.
        precision = "tf32" if tf32 else "ieee"
        self.rows_meta = dict(
            D=D, H=self.H, M=M, MC=MLP_CHUNK, CP=self.CP, KC=min(32, D, self.CP), BB=block_rows,
            HAS_BIAS=self.has_bias, PREC=precision, num_warps=rows_warps,
            num_stages=1,  # pipelining its loops' weight tiles would overflow shared memory
        )
        self.weights_meta = dict(
            D=D, M=M, CP=self.CP, RT=tile, NT=tile, KT=k_tile, HAS_BIAS=self.has_bias, PREC=precision,
            num_warps=weights_warps,
        )

    def _weights(self, flat: Tensor) -> list[Tensor]:
        row, o = flat[0], self.offsets

        def at(name: str, n: int) -> Tensor:
            return row[o[name] : o[name] + n] if name in o else row  # row: a bias the model lacks
        D, M = self.D, self.M
        return [
            at("embed.weight", self.V * D), at("pos.weight", SEQ_LEN * D), at("blocks.0.attn.qkv.weight", 3 * D * D),
            at("blocks.0.attn.out.weight", D * D), at("blocks.0.mlp.inp.weight", M * D), at("blocks.0.mlp.inp.bias", M),
            at("blocks.0.mlp.out.weight", D * M), at("blocks.0.mlp.out.bias", D), at("unembed.weight", self.C * D),
        ]

    def __call__(self, flat: Tensor, inputs: Tensor, targets: Tensor, idx: Tensor, share: Tensor) -> Tensor:
        """(splits, 1, P) parts whose sum is the gradient of sum_i share[i] * loss(example idx[i]):
        ``flat`` (1, P) weights, ``idx`` and ``share`` (batch,)."""
        buffers = (self.x, self.dqkv, self.dx, self.z, self.r, self.dr, self.h, self.dh, self.r2, self.dr2, self.g)
        _rows_kernel[(triton.cdiv(self.B, self.block_rows),)](
            inputs, targets, idx, share, self.B, *self._weights(flat.detach()), *buffers,
            self.C, 1 / math.sqrt(self.D // self.H), **self.rows_meta,
        )
        o = self.offsets
        _weights_kernel[(sum(self.tiles), self.splits)](
            inputs, idx, self.B, self.V, self.C, self.parts, self.n_params, *buffers,
            o["embed.weight"], o["blocks.0.attn.qkv.weight"], o["blocks.0.attn.out.weight"],
            o["blocks.0.mlp.inp.weight"], o.get("blocks.0.mlp.inp.bias", 0), o["blocks.0.mlp.out.weight"],
            o.get("blocks.0.mlp.out.bias", 0), o["unembed.weight"], *self.tiles[:-1], self.chunk,
            **self.weights_meta,
        )
        return self.parts

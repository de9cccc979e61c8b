"""The transformer: parameter count by hand, and the last-position shortcut is exact."""

import math

import pytest
import torch

from grokcore import AlgorithmicTask, ConfigError, SumEmbeddingMLP, Transformer


def power_parameter_count(vocab, seq_len, d, layers, d_mlp):
    embed = vocab * d + seq_len * d
    attention = 3 * d * d + d * d  # q, k, v and output projections, no biases
    mlp = 2 * d * d_mlp  # no biases
    layer_norms = 2 * 2 * d  # two LayerNorms (weight and bias) per block
    unembed = d * vocab
    return embed + layers * (attention + mlp + layer_norms) + unembed


def test_power_model_has_about_4e5_parameters():
    task = AlgorithmicTask(op="x/y", p=97)
    model = Transformer().build(task.model_dims())
    n = sum(p.numel() for p in model.parameters())
    assert n == power_parameter_count(vocab=99, seq_len=4, d=128, layers=2, d_mlp=512)
    assert n == 420_096  # danielmamay/grokking's model at p = 97, by its authors' arithmetic
    non_embedding = n - 2 * 99 * 128 - 4 * 128
    assert 3.5e5 < non_embedding < 4.5e5


def full_forward(model, tokens):
    """The network run on every position, written out without the last-only shortcut."""
    x = model.embed(tokens) + model.pos.weight[: tokens.shape[1]]
    for block in model.blocks:
        T = x.shape[1]
        q, k, v = block.attn.qkv(block.ln1(x) if block.norm == "pre" else x).split(x.shape[-1], dim=-1)
        heads = lambda t: t.view(t.shape[0], T, block.attn.n_heads, -1).transpose(1, 2)  # noqa: E731
        q, k, v = heads(q), heads(k), heads(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf"))
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
        if block.norm == "post":
            x = block.ln1(x + block.attn.out(attended))
            x = block.ln2(x + block.mlp(x))
        elif block.norm == "pre":
            x = x + block.attn.out(attended)
            x = x + block.mlp(block.ln2(x))
        else:
            x = x + block.attn.out(attended)
            x = x + block.mlp(x)
    return model.unembed(x)


@pytest.mark.parametrize("norm", ["post", "pre", "none"])
@pytest.mark.parametrize("p, d_model, table", [(13, 16, False), (31, 64, True)])
def test_readout_equals_full_forward_at_last_position(norm, p, d_model, table):
    """The model's shortcuts (the last position only; the first block's projections looked up
    per (token, position) for the larger model) give the outputs and gradients of the network
    run on every position."""
    torch.manual_seed(0)
    task = AlgorithmicTask(op="x+y", p=p)
    model = Transformer(n_layers=2, d_model=d_model, n_heads=2, d_mlp=32, norm=norm).build(task.model_dims())
    tokens, _ = task.examples()
    positions = model.pos.weight[: tokens.shape[1]]
    assert (model.first_qkv(tokens, positions) is not None) == table
    out, expected = model(tokens), full_forward(model, tokens)[:, -1]
    assert torch.allclose(out, expected, atol=1e-5)
    params = list(model.parameters())
    grads = torch.autograd.grad(out.square().sum(), params)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


def test_causal_mask_earlier_positions_ignore_later_tokens():
    torch.manual_seed(0)
    task = AlgorithmicTask(op="x+y", p=13)
    model = Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32).build(task.model_dims())
    tokens, _ = task.examples()
    changed = tokens.clone()
    changed[:, -1] = 0  # change the last token only
    assert torch.allclose(full_forward(model, tokens)[:, :-1], full_forward(model, changed)[:, :-1])


def test_nanda_init_scales():
    torch.manual_seed(0)
    task = AlgorithmicTask(op="x+y", p=113, op_token=False)
    cfg = Transformer(n_layers=1, d_model=128, n_heads=4, d_mlp=512, norm="none", mlp_bias=True, init="nanda")
    model = cfg.build(task.model_dims())
    assert abs(model.embed.weight.std().item() - 1 / math.sqrt(128)) < 0.005
    assert abs(model.unembed.weight.std().item() - 1 / math.sqrt(114)) < 0.005
    assert model.blocks[0].mlp.inp.bias.abs().sum() == 0


def test_heads_must_divide_width():
    with pytest.raises(ConfigError, match="^n_heads = 3"):
        Transformer(d_model=128, n_heads=3)


def test_sinusoidal_positions_need_an_even_width():
    Transformer(d_model=6, n_heads=3, positions="sinusoidal")
    Transformer(d_model=5, n_heads=1)  # learned positions: any width
    with pytest.raises(ConfigError, match="^d_model = 5"):
        Transformer(d_model=5, n_heads=1, positions="sinusoidal")


def test_mlp_widths_must_be_positive():
    with pytest.raises(ConfigError, match="^hidden = "):
        SumEmbeddingMLP(hidden=(200, 0))

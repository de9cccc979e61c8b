"""The models: parameter counts and forwards by hand, initial weights against the papers'
rules, and the transformer's shortcuts (last position only, the first block's projections
looked up per token and position) are exact."""

import functools
import math

import pytest
import torch
from torch.func import functional_call, stack_module_state, vmap

from grokcore import AlgorithmicTask, ConfigError, ModularMLP, SumEmbeddingMLP, ToyAddition, Transformer
from grokcore.models.transformer import LookupGradientByProduct, lookup_in_lanes, sinusoidal_positions


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


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt((x - mean).pow(2).mean(-1, keepdim=True) + eps) * weight + bias


def full_forward(model, tokens):
    """The network run on every position from its weights alone, and read out: attention,
    LayerNorm, the MLP and its activation written out here, not taken from the model's
    modules or shortcuts."""
    cfg, w = model.cfg, dict(model.named_parameters())
    T, D, H = tokens.shape[1], cfg.d_model, cfg.n_heads
    codes = {"learned": lambda: w["pos.weight"][:T], "sinusoidal": lambda: sinusoidal_positions(T, D, "cpu"), "none": lambda: 0}
    x = w["embed.weight"][tokens] + codes[cfg.positions]()
    # Causal: a position attends to itself and those before it.
    later = torch.ones(T, T).triu(1).bool() if cfg.attention == "causal" else torch.zeros(T, T).bool()

    def linear(z, name, has_bias):
        return z @ w[name + ".weight"].T + (w[name + ".bias"] if has_bias else 0)

    def mlp(z, block):
        h = linear(z, block + "mlp.inp", cfg.bias != "none")
        h = h.clamp(min=0) if cfg.activation == "relu" else 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        return linear(h, block + "mlp.out", cfg.bias != "none")

    def norm(z, block, which):
        return layer_norm(z, w[f"{block}{which}.weight"], w[f"{block}{which}.bias"])

    for layer in range(cfg.n_layers):
        block = f"blocks.{layer}."
        z = norm(x, block, "ln1") if cfg.norm == "pre" else x
        q, k, v = linear(z, block + "attn.qkv", cfg.bias == "all").split(D, dim=-1)
        heads = []
        for h in range(H):
            part = slice(h * D // H, (h + 1) * D // H)
            scores = q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(D // H)
            heads.append(scores.masked_fill(later, float("-inf")).softmax(-1) @ v[..., part])
        attended = linear(torch.cat(heads, -1), block + "attn.out", cfg.bias == "all")
        if cfg.norm == "post":
            x = norm(x + attended, block, "ln1")
            x = norm(x + mlp(x, block), block, "ln2")
        elif cfg.norm == "pre":
            x = x + attended
            x = x + mlp(norm(x, block, "ln2"), block)
        else:
            x = x + attended
            x = x + mlp(x, block)
    return linear(x[:, -1] if cfg.readout == "last" else x.flatten(1), "unembed", cfg.bias == "all")


#: (activation, bias, init, attention, readout): Power's, Nanda's and Liu's code's, and the
#: two other pairings of attention and readout.
VARIANTS = [
    ("relu", "none", "pytorch", "causal", "last"),
    ("gelu", "mlp", "nanda", "causal", "last"),
    ("relu", "all", "encoder", "full", "concat"),
    ("gelu", "all", "pytorch", "full", "last"),
    ("relu", "mlp", "encoder", "causal", "concat"),
]


@pytest.mark.parametrize("norm", ["post", "pre", "none"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "none"])
@pytest.mark.parametrize("p, d_model, table", [(13, 16, False), (31, 64, True)])
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("activation, bias, init, attention, readout", VARIANTS)
def test_readout_equals_full_forward(n_layers, norm, positions, p, d_model, table, activation, bias, init, attention, readout):
    """The model gives the outputs and gradients of the network written out from its weights,
    run on every position, through its shortcuts (the last position only, where it reads out
    there; the first block's projections looked up per (token, position), or per token
    without a position code, for the larger model). With one layer (Nanda et al.'s), one
    block takes both. LayerNorm gains and biases are moved off their starting values, which a
    mistake in either could otherwise hide behind."""
    torch.manual_seed(0)
    task = AlgorithmicTask(op="x+y", p=p)
    cfg = Transformer(
        n_layers=n_layers, d_model=d_model, n_heads=2, d_mlp=32, norm=norm, positions=positions,
        activation=activation, bias=bias, init=init, attention=attention, readout=readout,
    )
    model = cfg.build(task.model_dims())
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if ".ln" in name or name.endswith("bias"):
                weight.add_(0.3 * torch.randn_like(weight))
    tokens, _ = task.examples()
    assert (model.first_qkv(tokens, model.position_code(tokens.shape[1])) is not None) == table
    out, expected = model(tokens), full_forward(model, tokens)
    assert torch.allclose(out, expected, atol=1e-5)
    params = list(model.parameters())
    grads = torch.autograd.grad(out.square().sum(), params)
    expected_grads = torch.autograd.grad(expected.square().sum(), params)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


def test_looked_up_projections_under_vmap_equal_each_member_alone():
    """Members stacked and run through vmap, as the trainer runs them, on the table path."""
    torch.manual_seed(0)
    task = AlgorithmicTask(op="x+y", p=31)
    cfg = Transformer(n_layers=1, d_model=64, n_heads=2, d_mlp=32, norm="pre")
    members = [cfg.build(task.model_dims()) for _ in range(2)]
    tokens, _ = task.examples()
    assert members[0].first_qkv(tokens, members[0].position_code(tokens.shape[1])) is not None
    params, _ = stack_module_state(members)
    base = cfg.build(task.model_dims()).to("meta")
    out = vmap(lambda w: functional_call(base, w, (tokens,)))(params)
    grads = torch.autograd.grad(out.square().sum(), list(params.values()))
    for k, member in enumerate(members):
        alone = member(tokens)
        assert torch.allclose(out[k], alone, atol=1e-5)
        expected = torch.autograd.grad(alone.square().sum(), list(member.parameters()))
        for g, e in zip(grads, expected):
            assert torch.allclose(g[k], e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


@pytest.mark.parametrize(
    "lookup",
    [functools.partial(lookup_in_lanes, lanes=2), functools.partial(lookup_in_lanes, lanes=3), LookupGradientByProduct.apply],
    ids=["2 lanes", "3 lanes", "one-hot product"],
)
def test_gpu_lookups_equal_the_plain_lookup(lookup):
    """The GPU steps' lookups (compiled: the backward's adds spread over lanes; uncompiled: the
    gradient as a product with one-hot rows) against indexing by hand: the same rows, and each
    row's gradient the sum of its examples'; also through vmap over stacked members, as the
    trainer runs them."""
    torch.manual_seed(0)
    table = torch.randn(2, 6, 4, requires_grad=True)  # two members' tables
    index = torch.randint(0, 6, (50, 3))
    index[:, -1] = 5  # a row that every example reads, as the "=" token's
    upstream = torch.randn(2, 50, 3, 4)
    for k in range(2):
        out = lookup(table[k], index)
        assert torch.equal(out, table[k][index])
        (grad,) = torch.autograd.grad(out, table, upstream[k])
        expected = torch.zeros(6, 4)
        for b in range(50):
            for t in range(3):
                expected[index[b, t]] += upstream[k, b, t]
        assert torch.allclose(grad[k], expected, atol=1e-5) and not grad[1 - k].any()
    out = vmap(lambda w: lookup(w, index))(table)
    assert torch.equal(out, table[:, index])
    (grad,) = torch.autograd.grad(out, table, upstream)
    (expected,) = torch.autograd.grad(table[:, index], table, upstream)
    assert torch.allclose(grad, expected, atol=1e-5)
    # Each member its own batch, as the trainer's mini-batch step has it.
    own = torch.stack([index, index.flip(0)])
    out = vmap(lookup)(table, own)
    assert torch.equal(out, torch.stack([table[k][own[k]] for k in range(2)]))
    (grad,) = torch.autograd.grad(out, table, upstream)
    for k in range(2):
        (expected,) = torch.autograd.grad(table[k][own[k]], table, upstream[k])
        assert torch.allclose(grad[k], expected[k], atol=1e-5)


def test_the_one_hot_lookup_has_a_forward_derivative():
    """Forward-mode differentiation (torch.func.jvp) through the GPU step's lookup: the
    tangent of table[index] is tangent[index]."""
    torch.manual_seed(0)
    table, tangent = torch.randn(6, 4), torch.randn(6, 4)
    index = torch.randint(0, 6, (5, 3))
    out, derivative = torch.func.jvp(lambda t: LookupGradientByProduct.apply(t, index), (table,), (tangent,))
    assert torch.equal(out, table[index]) and torch.equal(derivative, tangent[index])


def test_causal_mask_earlier_positions_ignore_later_tokens():
    """The library's block, at every position: position t reads only positions 0..t."""
    torch.manual_seed(0)
    block = Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32).build({"vocab_size": 5, "seq_len": 4, "n_outputs": 5}).blocks[0]
    x = torch.randn(8, 4, 16)
    changed = x.clone()
    changed[:, -1] = torch.randn(8, 16)  # change the last position only
    before, after = block(x), block(changed)
    assert torch.equal(before[:, :-1], after[:, :-1])
    assert not torch.allclose(before[:, -1], after[:, -1])  # the change does reach its own position
    # Position 0 attends to itself alone, with weight 1: its output is the projection of its value.
    v0 = block.attn.qkv(x[:, 0]).split(16, dim=-1)[2]
    assert torch.allclose(block.attn(x)[:, 0], block.attn.out(v0), atol=1e-6)


def liu_code_network(model, n_layers, n_heads):
    """Liu et al.'s removed code's transformer (ejmichaud/grokking-squared before 63ccf1c,
    phasegrok/models.py): an embedding, PyTorch's pre-norm encoder layers (ReLU, no dropout),
    and one linear map of both positions side by side; given ``model``'s weights."""
    D, d_mlp = model.cfg.d_model, model.cfg.d_mlp
    layers = [
        torch.nn.TransformerEncoderLayer(D, n_heads, d_mlp, dropout=0.0, activation="relu", batch_first=True, norm_first=True)
        for _ in range(n_layers)
    ]
    readout = torch.nn.Linear(2 * D, model.unembed.out_features)
    w = dict(model.named_parameters())
    with torch.no_grad():
        for i, layer in enumerate(layers):
            b = f"blocks.{i}."
            pairs = [
                (layer.self_attn.in_proj_weight, "attn.qkv.weight"), (layer.self_attn.in_proj_bias, "attn.qkv.bias"),
                (layer.self_attn.out_proj.weight, "attn.out.weight"), (layer.self_attn.out_proj.bias, "attn.out.bias"),
                (layer.linear1.weight, "mlp.inp.weight"), (layer.linear1.bias, "mlp.inp.bias"),
                (layer.linear2.weight, "mlp.out.weight"), (layer.linear2.bias, "mlp.out.bias"),
                (layer.norm1.weight, "ln1.weight"), (layer.norm1.bias, "ln1.bias"),
                (layer.norm2.weight, "ln2.weight"), (layer.norm2.bias, "ln2.bias"),
            ]
            for theirs, ours in pairs:
                theirs.copy_(w[b + ours])
        readout.weight.copy_(w["unembed.weight"])
        readout.bias.copy_(w["unembed.bias"])
    embed = torch.nn.Embedding.from_pretrained(w["embed.weight"].detach().clone())
    return lambda tokens: readout(torch.nn.Sequential(*layers)(embed(tokens)).reshape(len(tokens), -1))


@pytest.mark.parametrize("n_heads", [1, 2])
def test_liu_code_transformer_equals_pytorch_encoder_layers(n_heads):
    """The options for Liu et al.'s code's transformer (no position code, full attention, every
    bias, both positions read out, pre-norm) build the network their code built from PyTorch's
    own encoder layer, on inputs "a b" without "=" (the larger task takes the per-token
    projection table)."""
    for p, d_model in [(11, 16), (53, 64)]:
        torch.manual_seed(0)
        task = AlgorithmicTask(op="x+y", p=p, op_token=False, eq_token=False)
        cfg = Transformer(n_layers=2, d_model=d_model, n_heads=n_heads, d_mlp=d_model, norm="pre", positions="none",
                          attention="full", readout="concat", bias="all", init="encoder")
        model = cfg.build(task.model_dims())
        assert model.unembed.out_features == p  # the answers only: no op or "=" token
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if ".ln" in name or name.endswith("bias"):
                    weight.add_(0.3 * torch.randn_like(weight))
        tokens, _ = task.examples()
        assert (model.first_qkv(tokens, None) is not None) == (p == 53)
        reference = liu_code_network(model, 2, n_heads)
        assert torch.allclose(model(tokens), reference(tokens), atol=1e-5)


def test_full_attention_lets_every_position_read_every_token():
    """Full attention: changing the last token changes every position's output."""
    torch.manual_seed(0)
    dims = {"vocab_size": 5, "seq_len": 3, "n_outputs": 5}
    block = Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32, attention="full").build(dims).blocks[0]
    x = torch.randn(8, 3, 16)
    changed = x.clone()
    changed[:, -1] = torch.randn(8, 16)
    before, after = block(x), block(changed)
    for t in range(3):
        assert not torch.allclose(before[:, t], after[:, t]), t


def test_encoder_init_follows_pytorch_multihead_attention():
    """init="encoder": q, k and v Xavier-uniform over the stacked (3 d, d) matrix (bound
    sqrt(6 / (d + 3 d))), attention biases zero, the MLP's nn.Linear default (uniform with
    bound 1 / sqrt(fan_in), biases too), as nn.TransformerEncoderLayer starts."""
    torch.manual_seed(0)
    d = 256
    model = Transformer(n_layers=1, d_model=d, n_heads=1, d_mlp=d, bias="all", init="encoder").build(
        {"vocab_size": 53, "seq_len": 2, "n_outputs": 53}
    )
    block = model.blocks[0]
    for w, bound in [(block.attn.qkv.weight, math.sqrt(6 / (4 * d))), (block.mlp.inp.weight, 1 / math.sqrt(d)),
                     (block.mlp.inp.bias, 1 / math.sqrt(d)), (block.attn.out.weight, 1 / math.sqrt(d))]:
        w = w.detach()
        # The largest of n uniform draws falls short of the bound by about bound / n.
        assert bound * (1 - 10 / w.numel()) < w.abs().max() <= bound
        assert_drawn_from(w, bound / math.sqrt(3), "uniform")  # a uniform's deviation: bound / sqrt(3)
    assert block.attn.qkv.bias.abs().sum() == 0 and block.attn.out.bias.abs().sum() == 0


def assert_drawn_from(w, std, name):
    """``w``'s entries look like draws of N(0, std^2): five standard errors of a sample
    deviation (std / sqrt(2 n)) and of a sample mean."""
    assert w.std().item() == pytest.approx(std, rel=5 / math.sqrt(2 * w.numel())), name
    assert abs(w.mean().item()) < 5 * std / math.sqrt(w.numel()), name


def test_nanda_init_scales():
    """Nanda et al.'s rule: every weight matrix N(0, 1/d_model), the unembedding N(0, 1/d_vocab),
    biases 0."""
    torch.manual_seed(0)
    task = AlgorithmicTask(op="x+y", p=113, op_token=False)
    cfg = Transformer(n_layers=1, d_model=128, n_heads=4, d_mlp=512, norm="none", bias="mlp", init="nanda")
    model = cfg.build(task.model_dims())
    matrices = {name: w for name, w in model.named_parameters() if w.dim() >= 2}
    assert set(matrices) == {"embed.weight", "pos.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.out.weight",
                             "blocks.0.mlp.inp.weight", "blocks.0.mlp.out.weight", "unembed.weight"}
    for name, w in matrices.items():
        std = 1 / math.sqrt(114 if name == "unembed.weight" else 128)  # 113 residues and "="
        assert_drawn_from(w.detach(), std, name)
    biases = [b for name, b in model.named_parameters() if name.endswith("bias")]
    assert len(biases) == 2 and all(b.abs().sum() == 0 for b in biases)  # the MLP's two


def test_quadratic_mlp_init_scale():
    """The quadratic MLP at N = 500 starts, as in Doshi et al.'s code (d-doshi/Grokking,
    utils/models.py: std 0.25^0.5 / (2 N)^(1/3)), with U_1, U_2 and W drawn N(0, 0.05^2)."""
    torch.manual_seed(0)
    model = ModularMLP(width=500).build(AlgorithmicTask(op="x+y", p=97, op_token=False).model_dims())
    assert_drawn_from(model.inp.detach(), 0.05, "U")
    assert_drawn_from(model.out.detach(), 0.05, "W")
    given = ModularMLP(width=500, init_std=0.2).build(AlgorithmicTask(op="x+y", p=97).model_dims())
    assert_drawn_from(given.out.detach(), 0.2, "W")


def test_toy_embeddings_start_uniform_on_an_interval_of_width_embed_init():
    """Liu et al.'s toy model: embeddings U[-s/2, s/2], whose deviation is s / sqrt(12)."""
    torch.manual_seed(0)
    weight = SumEmbeddingMLP(embed_dim=1000, embed_init=2.0).build(ToyAddition(p=10).model_dims()).embed.weight.detach()
    assert -1.0 <= weight.min() < -0.99 and 0.99 < weight.max() <= 1.0
    # five standard errors of a uniform sample's deviation, std * sqrt(0.2 / n) (kurtosis 1.8)
    assert weight.std().item() == pytest.approx(2.0 / math.sqrt(12), rel=5 * math.sqrt(0.2 / weight.numel()))


def test_sinusoidal_positions_written_out():
    """Vaswani et al.'s code: sin(t / 10000^(2i/d)) in column 2i, cos in column 2i + 1."""
    code = sinusoidal_positions(5, 8, "cpu")
    for t in range(5):
        for i in range(4):
            angle = t / 10000 ** (2 * i / 8)
            assert code[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert code[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


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


def test_toy_model_decodes_the_sum_of_two_embeddings_by_hand():
    """Liu et al.'s toy model: tanh(W1 (E_a + E_b) + b1) W2 + b2, with one output per sum 0..2p-2."""
    model = SumEmbeddingMLP(embed_dim=2, hidden=(3,), activation="tanh").build(ToyAddition(p=4).model_dims())
    E = model.embed.weight.tolist()
    W1, b1 = model.decoder[0].weight.tolist(), model.decoder[0].bias.tolist()
    W2, b2 = model.decoder[2].weight.tolist(), model.decoder[2].bias.tolist()
    assert len(b2) == 7
    for a in range(4):
        for b in range(a, 4):
            x = [E[a][i] + E[b][i] for i in range(2)]
            h = [math.tanh(sum(W1[j][i] * x[i] for i in range(2)) + b1[j]) for j in range(3)]
            expected = [sum(W2[o][j] * h[j] for j in range(3)) + b2[o] for o in range(7)]
            assert model(torch.tensor([[a, b]]))[0].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)

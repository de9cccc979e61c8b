"""The hand-written training gradient of grokcore.models.transformer_kernels: run in Triton's
interpreter on the CPU (NumPy), its gradient equals autograd's of the weighted cross-entropy;
and the trainer uses it only where it applies, with a clear error where it is asked for and
cannot be."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import grokcore as gc
from grokcore.config import ConfigError
from grokcore.train import Trainer

pytest.importorskip("triton")

# Run in a fresh process: Triton reads TRITON_INTERPRET when the kernels are defined.
INTERPRETED = textwrap.dedent(
    """
    import torch, torch.nn.functional as F
    from torch.func import functional_call
    from grokcore import Transformer
    from grokcore.models.transformer_kernels import TransformerGradient

    def check(p, batch, bias, block_rows, splits):
        torch.manual_seed(p + batch)
        model = Transformer(n_layers=1, norm="none", mlp_bias=bias, init="nanda").build(
            dict(vocab_size=p + 1, seq_len=3, n_outputs=p))
        with torch.no_grad():  # biases away from their zero init, so that their gradients count
            for name, w in model.named_parameters():
                if name.endswith("bias"):
                    w.normal_(0, 0.3)
        pairs = torch.cartesian_prod(torch.arange(p), torch.arange(p))
        inputs = torch.cat([pairs, torch.full((p * p, 1), p)], 1)
        targets = (pairs[:, 0] * 3 + pairs[:, 1]) % p
        idx = torch.randperm(p * p)[:batch]
        share = torch.rand(batch)
        share[-3:] = 0  # padding takes no part
        share /= share.sum()
        weights = {n: w.detach().clone().requires_grad_() for n, w in model.named_parameters()}
        flat = torch.cat([w.detach().reshape(-1) for w in weights.values()])[None]
        logits = functional_call(model, weights, (inputs[idx],))
        loss = (share * F.cross_entropy(logits, targets[idx], reduction="none")).sum()
        loss.backward()
        expected = torch.cat([w.grad.reshape(-1) for w in weights.values()])

        gradient = TransformerGradient(model, batch, torch.device("cpu"), tf32=False, splits=splits,
                                       block_rows=block_rows)
        got = gradient(flat, inputs, targets, idx, share.contiguous()).sum(0)[0]
        start = 0
        for name, w in weights.items():  # each tensor's error relative to its own largest entry
            part = slice(start, start + w.numel())
            start += w.numel()
            error = ((got[part] - expected[part]).abs().max() / expected[part].abs().max()).item()
            print(p, batch, bias, name, error)
            assert error < 1e-5, (p, batch, bias, name, error)

    check(p=13, batch=50, bias=True, block_rows=16, splits=3)   # batch not a multiple of the block
    check(p=7, batch=40, bias=False, block_rows=32, splits=2)   # 7 outputs in a row of 16
    print("ok")
    """
)


def test_interpreted_kernels_give_autograds_gradient():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def nanda(**changes):
    base = dict(
        name="kernels",
        task=gc.AlgorithmicTask(op="x+y", p=11, train_fraction=0.5, op_token=False),
        model=gc.Transformer(n_layers=1, norm="none", mlp_bias=True, init="nanda"),
        steps=10,
        checkpoints=0,
    )
    return gc.RunConfig(**{**base, **changes})


@pytest.mark.parametrize(
    "changes, reason",
    [
        (dict(model=gc.Transformer(n_layers=2, norm="none")), "n_layers = 2"),
        (dict(model=gc.Transformer(n_layers=1, norm="post")), "norm = 'post'"),
        (dict(task=gc.AlgorithmicTask(op="x+y", p=11, loss="mse", op_token=False)), "loss 'mse'"),
        (dict(task=gc.AlgorithmicTask(op="x+y", p=11)), "inputs of shape (121, 4)"),
        (dict(seeds=2), "2 members"),
        (dict(model=gc.ModularMLP()), "model ModularMLP"),
        (dict(model=gc.Transformer(n_layers=1, norm="none", n_heads=16)), "d_model / n_heads >= 16"),
    ],
)
def test_kernels_say_why_a_run_cannot_use_them(changes, reason):
    from grokcore.models.transformer_kernels import unsupported

    config = nanda(**changes)
    members = config.members()
    data = config.task.build(members, torch.device("cpu"))
    model = config.model.build(config.task.model_dims())
    assert reason in unsupported(model, data.inputs, data.loss, len(members))


def test_kernels_take_nandas_setting_and_no_inputs_they_would_misread():
    from grokcore.models.transformer_kernels import unsupported

    config = nanda()
    data = config.task.build(config.members(), torch.device("cpu"))
    model = config.model.build(config.task.model_dims())
    assert unsupported(model, data.inputs, data.loss, 1) is None
    strided = torch.cat([data.inputs, data.inputs], 1)[:, ::2]  # the right shape, rows 6 apart
    assert "contiguous" in unsupported(model, strided, data.loss, 1)


def test_asking_for_the_kernels_where_they_cannot_run_is_an_error_naming_the_option():
    with pytest.raises(ConfigError, match=r"fused_kernels = True is not allowed for this run: device cpu"):
        Trainer(nanda(), torch.device("cpu"), fused_kernels=True)
    with pytest.raises(ConfigError, match=r"fused_kernels = 'yes' is not allowed: must be True or False"):
        Trainer(nanda(), torch.device("cpu"), fused_kernels="yes")
    assert Trainer(nanda(), torch.device("cpu")).fused is None  # off unless asked for


def test_update_sums_gradient_parts_before_the_step():
    one, parts = Trainer(nanda(), torch.device("cpu")), Trainer(nanda(), torch.device("cpu"))
    grad = torch.randn(3, *one.flat.shape)
    one._update(grad.sum(0), one.active)
    parts._update(grad, parts.active)
    assert torch.equal(one.flat, parts.flat)


H100_SHARED_MEMORY = 232_448  # bytes a block may use on sm_90 (227 KB)


def test_kernels_compile_for_an_h100_within_its_shared_memory():
    """Compiled for sm_90 here, without a GPU (Triton's own ptxas): a kernel that needs more
    shared memory than the SM has fails only at its first launch on the GPU."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from grokcore.models import transformer_kernels as kernels

    config = gc.RunConfig(name="nanda", task=gc.AlgorithmicTask(op="x+y", p=113, train_fraction=0.3, op_token=False),
                          model=gc.Transformer(n_layers=1, norm="none", mlp_bias=False, init="nanda"))
    model = config.model.build(config.task.model_dims())
    gradient = kernels.TransformerGradient(model, 3830, torch.device("cpu"), tf32=True)

    scalars = {"B", "C", "V", "P_total", "chunk"}
    def argument_type(name, meta):
        if name in meta:
            return "constexpr"
        if name in scalars or name.startswith(("o_", "t_")):
            return "i32"
        if name == "scale":
            return "fp32"
        return "*i64" if name in ("inputs", "targets", "idx") else "*fp32"

    for kernel, meta in [(kernels._rows_kernel, gradient.rows_meta), (kernels._weights_kernel, gradient.weights_meta)]:
        options = {k: meta[k] for k in ("num_warps", "num_stages") if k in meta}
        constants = {k: v for k, v in meta.items() if k not in options}
        signature = {name: argument_type(name, constants) for name in kernel.arg_names}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants),
                                  target=GPUTarget("cuda", 90, 32), options=options)
        assert 0 < compiled.metadata.shared <= H100_SHARED_MEMORY, (kernel.__name__, compiled.metadata.shared)

"""grokcore's training loop against a plain re-implementation of the reference codes' loops.

Run on a GPU (not in CI)::

    python benchmarks/speed.py                 # all three cases, prints a table
    python benchmarks/speed.py --out book/appendix   # also the book's speed.csv, its history and figure

Cases, each measured on one GPU (one run of (a) in a second process, to time a fresh start):

(a) Nanda et al. 2023's setting (p = 113, 30% of pairs, full batch, 1-layer transformer,
    AdamW lr 1e-3, weight decay 1): wall-clock seconds and steps until validation accuracy
    reaches 99%. The plain loop does what the progress-measures trainer does every epoch: a
    training step, a test-set forward pass, and ``.item()`` on both losses (on grokcore's
    network, and on the paper code's: :class:`ProgressMeasuresTransformer`). Identical runs
    reach 99% at different steps, so the warm, graphs-only, bf16 and plain rows are each the
    median of ``--repeats`` runs, and their notes give the spread.
(b) Power et al.'s x/y mod 97, batch 512 (2-layer transformer): steps per second. The plain
    loop is danielmamay/grokking's classic one: shuffled index batches each epoch, and a
    ``.item()`` per step for logging.
(c) A 64-member sweep (8 learning rates x 8 weight decays) of case (b): aggregate member-steps
    per second of one vectorised grokcore run, against one member in the plain loop.
(d) The Gromov/Doshi quadratic MLP at the paper preset of its chapter (p = 97, N = 500, full
    batch, 8 training fractions x 3 seeds = 24 members): steps per second with the model
    running its members itself (``forward_members``, the default) against vmap, and the
    largest difference between the two runs' weights after the timed steps.

(a) and (c) also run grokcore with its matrix products' factors in bfloat16 (``gc.train``'s
``precision="bf16"``), which is faster still but not the default, since no chapter uses it.

The plain loops use grokcore's transformer, so that comparison is of the loops alone: the
plain loop gets grokcore's model for free. Case (a) also runs the plain loop on Nanda et al.'s
network with the progress-measures code's operations (:class:`ProgressMeasuresTransformer`,
from the same initial weights), the network that the reference trainer trains.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import speed_history  # noqa: E402  (beside this file)
from speed_history import CASE_A, PAPER  # noqa: E402

import grokcore as gc  # noqa: E402
from grokcore.train import Trainer, build_member  # noqa: E402


def host_cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The host's CPU model, from /proc/cpuinfo where it can be read. A plain loop launches every
    kernel from Python, so its speed is the host's: the table names the host beside the GPU."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or "unknown"


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def nanda_config(**changes) -> gc.RunConfig:
    base = dict(
        name="bench-nanda",
        task=gc.AlgorithmicTask(op="x+y", p=113, train_fraction=0.3, op_token=False),
        model=gc.Transformer(n_layers=1, d_model=128, n_heads=4, d_mlp=512, norm="none", bias="mlp", init="nanda"),
        optim=gc.AdamW(lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98), warmup_steps=10),
        steps=40_000,
        batch_size=None,
        stop_at=0.99,
        eval_every=100,
        checkpoints=0,
    )
    base.update(changes)
    return gc.RunConfig(**base)


def power_config(**changes) -> gc.RunConfig:
    base = dict(
        name="bench-power",
        task=gc.AlgorithmicTask(op="x/y", p=97, train_fraction=0.5),
        model=gc.Transformer(),
        optim=gc.AdamW(lr=1e-3, weight_decay=1.0),
        steps=100_000,
        batch_size=512,
        max_batch_fraction=0.5,
        checkpoints=0,
    )
    base.update(changes)
    return gc.RunConfig(**base)


def gromov_config(**changes) -> gc.RunConfig:
    base = dict(
        name="bench-gromov",
        task=gc.AlgorithmicTask(op="x+y", p=97, op_token=False, loss="mse"),
        model=gc.ModularMLP(width=500),
        optim=gc.AdamW(lr=5e-3, weight_decay=5.0, betas=(0.9, 0.98), warmup_steps=0),
        steps=3000,
        batch_size=None,
        seeds=3,
        sweep={"train_fraction": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]},
        checkpoints=0,
    )
    base.update(changes)
    return gc.RunConfig(**base)


class VmapTrainer(Trainer):
    """The trainer as it was before a model could run its own members: vmap for every model."""

    def _members_forward(self, K, chunk):
        return self._vmapped_forward(chunk)


class ProgressMeasuresTransformer(nn.Module):
    """Nanda et al.'s one-layer network with the progress-measures code's operations (facts
    from its transformers.py; one flat module, where that code nests six modules): weights
    per head multiplied out with einsum at all three positions, the MLP and the unembedding
    at every position too, the causal mask subtracted as -1e10, an identity module at each
    of the 13 places where that code hooks activations, and the logits of every position
    (the loss reads the last). Built from a grokcore transformer, so both compute the same
    function from the same weights."""

    HOOKS = ("resid_pre", "k", "q", "v", "attn_pre", "attn", "z", "attn_out", "resid_mid")
    HOOKS += ("pre", "post", "mlp_out", "resid_post")

    def __init__(self, model: nn.Module):
        super().__init__()
        (block,) = model.blocks
        D, H = model.cfg.d_model, model.cfg.n_heads

        def weight(w):
            return nn.Parameter(w.detach().clone(memory_format=torch.contiguous_format))

        self.W_E, self.W_pos = weight(model.embed.weight.T), weight(model.pos.weight)
        self.W_U = weight(model.unembed.weight.T)
        # (head, d_head, d_model) each
        self.W_Q, self.W_K, self.W_V = map(weight, block.attn.qkv.weight.view(3, H, D // H, D))
        self.W_O = weight(block.attn.out.weight)
        self.W_in, self.b_in = weight(block.mlp.inp.weight), weight(block.mlp.inp.bias)
        self.W_out, self.b_out = weight(block.mlp.out.weight), weight(block.mlp.out.bias)
        self.hook = nn.ModuleDict({name: nn.Identity() for name in self.HOOKS})
        self.register_buffer("mask", torch.ones(3, 3).tril())

    def forward(self, tokens):
        h, T = self.hook, tokens.shape[1]
        x = h["resid_pre"](torch.einsum("dbp->bpd", self.W_E[:, tokens]) + self.W_pos[:T])
        k = h["k"](torch.einsum("ihd,bpd->biph", self.W_K, x))
        q = h["q"](torch.einsum("ihd,bpd->biph", self.W_Q, x))
        v = h["v"](torch.einsum("ihd,bpd->biph", self.W_V, x))
        mask = self.mask[:T, :T]
        masked = torch.einsum("biph,biqh->biqp", k, q).tril() - 1e10 * (1 - mask)
        scores = h["attn_pre"](masked / math.sqrt(q.shape[-1]))
        z = h["z"](torch.einsum("biph,biqp->biqh", v, h["attn"](scores.softmax(-1))))
        attn_out = torch.einsum("df,bqf->bqd", self.W_O, z.transpose(1, 2).flatten(2))
        x = h["resid_mid"](x + h["attn_out"](attn_out))
        hidden = h["post"](F.relu(h["pre"](torch.einsum("md,bpd->bpm", self.W_in, x) + self.b_in)))
        x = h["resid_post"](x + h["mlp_out"](torch.einsum("dm,bpm->bpd", self.W_out, hidden) + self.b_out))
        return x @ self.W_U


def float64_cross_entropy(logits, targets):
    """The progress-measures code's loss: log-softmax in float64 (against slingshots)."""
    return -F.log_softmax(logits.double(), dim=-1).gather(-1, targets[:, None]).mean()


def plain_setup(config: gc.RunConfig, device, paper_module: bool = False):
    member = config.members()[0]
    model = build_member(config, member)
    model = (ProgressMeasuresTransformer(model) if paper_module else model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=member["lr"], betas=config.optim.betas, weight_decay=member["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: min(1.0, t / config.optim.warmup_steps))
    inputs, targets = config.task.examples()
    train_idx, val_idx = config.task.member_split(member)
    data = [t.to(device) for t in (inputs[train_idx], targets[train_idx], inputs[val_idx], targets[val_idx])]
    return model, opt, sched, data


def plain_nanda(config: gc.RunConfig, device, max_steps: int, paper_module: bool = False) -> tuple[float, int]:
    """The progress-measures trainer's loop: full batch, test loss every epoch, .item() on both
    losses. Seconds to 99% validation accuracy and the steps it took, as :func:`nanda_seconds`.
    With ``paper_module``, on the paper code's network with its float64 loss. Either way the
    loop is leaner than the reference trainer's, which in each of its two passes turns Python
    lists of tuples into tensors and works the labels out in Python, keeps the test pass's
    autograd graph, reads the test loss a third time after the step (a second wait for the
    GPU), leaves hooks that store every activation live from its first metrics on, and logs
    to wandb every 100 epochs. Here the data stay on the GPU, and none of that is done."""
    model, opt, sched, (xt, yt, xv, yv) = plain_setup(config, device, paper_module)
    if paper_module:

        def logits_and_loss(x, y):
            logits = model(x)[:, -1]
            return logits, float64_cross_entropy(logits, y)
    else:

        def logits_and_loss(x, y):
            logits = model(x)
            return logits, F.cross_entropy(logits, y)

    sync()
    t0 = time.perf_counter()
    for step in range(1, max_steps + 1):
        _, loss = logits_and_loss(xt, yt)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        with torch.no_grad():
            val_logits, val_loss = logits_and_loss(xv, yv)
        _ = loss.item(), val_loss.item()
        if step % 100 == 0 and (val_logits.argmax(-1) == yv).float().mean().item() >= 0.99:
            break
    sync()
    return time.perf_counter() - t0, step


def plain_power(config: gc.RunConfig, device, steps: int) -> float:
    """danielmamay/grokking's classic loop: shuffled batches per epoch, .item() every step."""
    model, opt, sched, (xt, yt, _, _) = plain_setup(config, device)
    batch = min(config.batch_size, math.ceil(len(xt) / 2))

    def run(n):
        done = 0
        while done < n:
            for idx in torch.randperm(len(xt), device=device).split(batch):
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                loss.item()
                done += 1
                if done == n:
                    return

    run(20)  # warm-up
    sync()
    t0 = time.perf_counter()
    run(steps)
    sync()
    return steps / (time.perf_counter() - t0)


def grokcore_steps_per_s(config: gc.RunConfig, device, steps: int, **options) -> float:
    return timed_trainer(config, device, steps, **options)[0]


def timed_trainer(config: gc.RunConfig, device, steps: int, trainer_class=Trainer, **options) -> tuple[float, Trainer]:
    """Steps per second after a warm-up, and the trainer (for its weights)."""
    trainer = trainer_class(config, device, **options)
    for _ in range(10):  # warm-up and CUDA-graph capture
        trainer.train_step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    sync()
    return steps / (time.perf_counter() - t0), trainer


def nanda_seconds(root: Path, options: dict) -> tuple[float, int]:
    """Seconds from the start of training to 99% validation accuracy, and the steps it took."""
    t0 = time.perf_counter()
    run = gc.train(nanda_config(), root=root, progress=False, **options)
    seconds = time.perf_counter() - t0
    return seconds, int(gc.measures.first_step(run.history, "val_acc", 0.99).iloc[0])


def median_run(runs: list[tuple[float, int]]) -> tuple[float, int]:
    """The run of median seconds (for an even count, the faster of the middle two)."""
    return sorted(runs)[(len(runs) - 1) // 2]


def spread(runs: list[tuple[float, int]]) -> str:
    """A row's note on the runs it is the median of ('' for one run)."""
    if len(runs) == 1:
        return ""
    seconds, steps = zip(*runs)
    return f"; median of {len(runs)} runs: {min(seconds):.2f}-{max(seconds):.2f} s, {min(steps)}-{max(steps)} steps"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="folder for speed.csv, speed_history.csv and speed_by_host.svg (the book's: book/appendix)")
    parser.add_argument("--steps", type=int, default=2000, help="timed steps for the steps/s cases")
    parser.add_argument("--repeats", type=int, default=3, help="runs of (a)'s warm, graphs-only and plain rows (the median is shown)")
    parser.add_argument("--nanda-run", type=Path, help=argparse.SUPPRESS)  # case (a) in a new process
    args = parser.parse_args()
    if args.nanda_run:
        torch.backends.cuda.matmul.allow_tf32 = True
        print(*nanda_seconds(args.nanda_run, {"torch_compile": True}))
        return
    if sys.flags.dont_write_bytecode:
        print(
            "warning: PYTHONDONTWRITEBYTECODE is set, so each new process compiles torch's compiler"
            " modules from source (4-15 s on our H100 machine) and the compile rows of (a) include"
            " it; unset it, and run `python -m compileall` on site-packages if it has no .pyc files",
            file=sys.stderr,
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    host = host_cpu()
    rows = []

    def add(case, impl, metric, value, note=""):
        rows.append({"case": case, "implementation": impl, "metric": metric, "value": value, "note": note})
        print(f"{case:34s} {impl:10s} {metric:28s} {value:12.2f} {note}", flush=True)

    # (a) Nanda: time to 99% validation accuracy, end to end (set-up, compiling, evaluations).
    # The first run compiles into empty caches; the second, in this process, reuses the compiled code.
    root = Path(os.environ.get("GROKCORE_RUNS", "/tmp/grokcore-bench-runs")) / str(time.time_ns())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor-cache")
    case = CASE_A
    # Identical runs reach 99% at different steps (TF32 and atomic adds round differently each
    # time), so the rows that cost little are the median of --repeats runs, with their spread.
    variants = [
        ("grokcore", "compile cache cold", {"torch_compile": True}, 1),
        ("grokcore", "compile cache warm", {"torch_compile": True}, args.repeats),
        ("grokcore, no compile", "CUDA graphs only", {"torch_compile": False}, args.repeats),
        ("grokcore, eager", "no compile, no graphs", {"torch_compile": False, "cuda_graphs": False}, 1),
        # Not the default: bf16 factors change the numbers a chapter measures (gc.train's precision).
        ("grokcore, bf16", "compile cache warm, bf16 products", {"torch_compile": True, "precision": "bf16"}, args.repeats),
    ]
    seconds = []
    for i, (impl, note, options, repeats) in enumerate(variants):
        if options.get("precision") == "bf16":  # its step compiles anew: a first run, not timed, does that
            nanda_seconds(root / f"run{i}-warm-up", options)
        runs = [nanda_seconds(root / f"run{i}-{r}", options) for r in range(repeats)]
        seconds.append(median_run(runs))
        add(case, impl, "seconds to 99% val acc", seconds[-1][0], f"{seconds[-1][1]} steps; {note}{spread(runs)}")
        if i == 0:
            # A new process (a later job on the same machine) finds only inductor's disk cache.
            out = subprocess.run(
                [sys.executable, __file__, "--nanda-run", str(root / "run-new-process")],
                check=True, capture_output=True, text=True,
            ).stdout.split()
            new_process = float(out[-2])
            add(case, impl, "seconds to 99% val acc", new_process, f"{out[-1]} steps; new process, disk cache warm")
    seconds = [s for s, _ in seconds]
    plains = [plain_nanda(nanda_config(), device, max_steps=40_000) for _ in range(args.repeats)]
    plain_s, plain_steps = median_run(plains)
    add(case, "plain", "seconds to 99% val acc", plain_s, f"{plain_steps} steps{spread(plains)}")
    papers = [plain_nanda(nanda_config(), device, max_steps=40_000, paper_module=True) for _ in range(args.repeats)]
    paper_s, paper_steps = median_run(papers)
    add(case, PAPER, "seconds to 99% val acc", paper_s, f"{paper_steps} steps{spread(papers)}")
    add(case, "ratio", "speed-up (plain s / ours s)", plain_s / seconds[0], "compile cache cold")
    add(case, "ratio", "speed-up (plain s / ours s)", plain_s / new_process, "new process, disk cache warm")
    add(case, "ratio", "speed-up (plain s / ours s)", plain_s / seconds[1], "compile cache warm")
    add(case, "ratio", "speed-up (plain s / ours s)", plain_s / seconds[2], "CUDA graphs only")
    add(case, "ratio", f"speed-up ({PAPER} s / ours s)", paper_s / seconds[1], "compile cache warm")
    add(case, "ratio", f"speed-up ({PAPER} s / ours s)", paper_s / seconds[2], "CUDA graphs only")
    add(case, "ratio", "speed-up (plain s / ours s)", plain_s / seconds[4], "compile cache warm, bf16 products")
    add(case, "ratio", f"speed-up ({PAPER} s / ours s)", paper_s / seconds[4], "compile cache warm, bf16 products")
    # The floor under the warm row: the compiled step alone (benchmarks/step_profile.py breaks it down).
    step_sps = grokcore_steps_per_s(nanda_config(stop_at=None), device, args.steps, torch_compile=True)
    add(case, "grokcore", "µs per step", 1e6 / step_sps, "compiled step alone, CUDA graph replays")
    bf16_sps = grokcore_steps_per_s(nanda_config(stop_at=None), device, args.steps, torch_compile=True, precision="bf16")
    add(case, "grokcore, bf16", "µs per step", 1e6 / bf16_sps, "the same, bf16 products")
    add(case, "plain", "µs per step", 1e6 * plain_s / plain_steps, "training step, test forward, 2 .item()")
    add(case, PAPER, "µs per step", 1e6 * paper_s / paper_steps, "the same, on the paper code's network")

    # (b) Power x/y mod 97, batch 512: steps per second. grokcore's default for a single
    # 1e5-step run replays CUDA graphs without compiling (compile_pays_off); a longer run,
    # such as Figure 1's 1e6 steps, compiles.
    case = "(b) Power x/y mod 97, batch 512"
    ours = grokcore_steps_per_s(power_config(), device, args.steps)
    compiled = grokcore_steps_per_s(power_config(), device, args.steps, torch_compile=True)
    plain_sps = plain_power(power_config(), device, args.steps)
    add(case, "grokcore", "steps/s", ours, "default: CUDA graphs, no compile")
    add(case, "grokcore", "steps/s", compiled, "compiled (the default from 1.15e5 steps)")
    add(case, "plain", "steps/s", plain_sps)
    add(case, "ratio", "speed-up", ours / plain_sps, "default")
    add(case, "ratio", "speed-up", compiled / plain_sps, "compiled")

    # (c) 64 members: 8 learning rates x 8 weight decays.
    sweep = {"lr": [1e-4 * 2**i for i in range(8)], "weight_decay": [0.0, 0.03, 0.1, 0.3, 1.0, 2.0, 3.0, 5.0]}
    ensemble = grokcore_steps_per_s(power_config(sweep=sweep), device, max(args.steps // 4, 200))
    add("(c) 64-member sweep of (b)", "grokcore", "member-steps/s (aggregate)", 64 * ensemble, f"{ensemble:.0f} ensemble steps/s")
    add("(c) 64-member sweep of (b)", "plain", "member-steps/s (one member)", plain_sps)
    add("(c) 64-member sweep of (b)", "ratio", "aggregate / plain member", 64 * ensemble / plain_sps)
    ensemble_bf16 = grokcore_steps_per_s(power_config(sweep=sweep), device, max(args.steps // 4, 200), precision="bf16")
    add("(c) 64-member sweep of (b)", "grokcore, bf16", "member-steps/s (aggregate)", 64 * ensemble_bf16, "bf16 products")

    # (d) A model that runs its own members (forward_members) against vmap, both with the
    # trainer's defaults for this run (CUDA graphs; compiled where compile_pays_off).
    case = "(d) Gromov MLP p=97 N=500, 24 members"
    own, own_trainer = timed_trainer(gromov_config(), device, args.steps)
    vmapped, vmap_trainer = timed_trainer(gromov_config(), device, args.steps, VmapTrainer)
    gap = (own_trainer.flat - vmap_trainer.flat).abs().max().item()
    add(case, "grokcore", "steps/s", own, "forward_members (default)")
    add(case, "grokcore, vmap", "steps/s", vmapped, f"largest weight difference {gap:.1e} after {args.steps + 10} steps")
    add(case, "ratio", "speed-up", own / vmapped, "forward_members / vmap")

    table = pd.DataFrame(rows)
    table["value"] = table["value"].map(lambda v: float(f"{v:.4g}"))
    table["device"] = gpu
    table["torch"] = torch.__version__
    table["host cpu"] = host
    if args.out:
        speed_history.record(table, args.out)
        print(f"wrote {args.out / speed_history.TABLE}, added it to {speed_history.HISTORY} and redrew {speed_history.FIGURE}")


if __name__ == "__main__":
    main()

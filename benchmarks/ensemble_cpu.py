"""Cost of one step of an 8-member ensemble against one member, on the CPU.

    OMP_NUM_THREADS=2 python benchmarks/ensemble_cpu.py [--runs 3]

The target (issue 5): at most 3x one member's step for small models, where a step is
dominated by per-operation overhead that the ensemble shares. A shared machine's load moves
the ratios by 10-40% between runs, so ``--runs`` repeats the measurement and gives the range.

What makes a model small here is printed beside each ratio: one member's matrix-product
work per second of its whole step (``GFLOP/s``: the products' operations over the step's
time), and the least ratio that 8 members' products allow, were they to run at the speed of
a large square product on this machine (``floor``). Where one member already keeps
the cores busy with arithmetic, as Power et al.'s 2x128 transformer with batch 512 does, the
floor itself is near 3 and no sharing of overhead can bring 8 members under it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grokcore as gc  # noqa: E402
from grokcore.train import Trainer  # noqa: E402

CASES = {
    "Liu toy (1-200-200-19 tanh, full batch 45)": dict(
        task=gc.ToyAddition(), model=gc.SumEmbeddingMLP(), optim=gc.AdamW(weight_decay=1.0), batch_size=None
    ),
    "Gromov MLP (N=128, p=31, full batch)": dict(
        task=gc.AlgorithmicTask(op="x+y", p=31, op_token=False, loss="mse"),
        model=gc.ModularMLP(width=128),
        optim=gc.AdamW(lr=5e-3, weight_decay=5.0),
        batch_size=None,
    ),
    "transformer 1x32 (p=23, batch 64)": dict(
        task=gc.AlgorithmicTask(op="x+y", p=23), model=gc.Transformer(n_layers=1, d_model=32, d_mlp=128), batch_size=64
    ),
    "Power transformer 2x128 (p=97, batch 512)": dict(
        task=gc.AlgorithmicTask(op="x/y", p=97), model=gc.Transformer(), batch_size=512, max_batch_fraction=0.5
    ),
}


def case_trainer(case: dict, members: int) -> Trainer:
    return Trainer(gc.RunConfig(name="bench", steps=10, seeds=members, **case), torch.device("cpu"))


def step_seconds(case: dict, members: tuple[int, ...] = (1, 8), blocks: int = 8, block: int = 10) -> list[float]:
    """Median seconds per step for each ensemble size. The sizes take turns in blocks of
    steps, so that a slow spell of a shared machine weighs on each alike; the first two steps
    of a block, which find the caches full of the other ensemble, are not counted."""
    trainers = [case_trainer(case, k) for k in members]
    times = [[] for _ in trainers]
    for _ in range(blocks):
        for trainer, series in zip(trainers, times):
            for i in range(block):
                t0 = time.perf_counter()
                trainer.train_step()
                if i >= 2:
                    series.append(time.perf_counter() - t0)
    return [statistics.median(series) for series in times]


def matmul_flops(case: dict) -> float:
    """Floating-point operations of one member's step in matrix products (forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    trainer = case_trainer(case, 1)
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    return counter.get_total_flops()


def peak_flops_per_s(n: int = 2048, repeats: int = 10) -> float:
    """This machine's speed on a large square float32 product: the most a step's products could reach."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="repeat every case this many times (default 1)")
    runs = parser.parse_args().runs
    if runs < 1:
        parser.error(f"--runs must be at least 1, got {runs}")
    peak = peak_flops_per_s()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, a 2048^3 product at {peak / 1e9:.0f} GFLOP/s")
    flops = {name: matmul_flops(case) for name, case in CASES.items()}
    print(f"{'case':45s} {'1 member':>10s} {'8 members':>10s} {'ratio':>6s} {'GFLOP/s':>8s} {'floor':>6s}")
    ratios = {name: [] for name in CASES}
    for _ in range(runs):
        for name, case in CASES.items():
            one, eight = step_seconds(case)
            ratios[name].append(eight / one)
            floor = 8 * flops[name] / peak / one
            rate = flops[name] / one / 1e9
            print(f"{name:45s} {one * 1e3:8.2f}ms {eight * 1e3:8.2f}ms {eight / one:6.2f} {rate:8.1f} {floor:6.2f}")
    if runs > 1:
        print(f"\nratio over {runs} runs")
        for name, values in ratios.items():
            print(f"{name:45s} {min(values):.2f}-{max(values):.2f}")


if __name__ == "__main__":
    main()

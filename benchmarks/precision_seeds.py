"""Does a GPU precision change when a network groks? Nanda et al.'s setting, many seeds, two precisions.

Run on a GPU (not in CI)::

    python benchmarks/precision_seeds.py                          # 64 seeds, tf32 against bf16
    python benchmarks/precision_seeds.py --precisions fp32,tf32   # exact float32 against TF32

Each precision trains the same seeds (each its own initialisation and split) as one ensemble,
with ``speed.py``'s configuration of case (a) and up to ``--steps`` steps, and records the first
evaluated step at which each seed's validation accuracy reaches 99%. One seed's runs cannot
answer the question: identical runs of one seed already differ by hundreds of steps (some
kernels add in an order that changes from run to run), so the comparison is per seed, over many.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed import nanda_config  # noqa: E402  (beside this file)

import grokcore as gc  # noqa: E402
from grokcore.runs import atomic_write_text  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")


def sign_test(later: int, earlier: int) -> float:
    """Two-sided exact sign test: how often a fair coin per seed would split the seeds that
    differ at least as unevenly as ``later`` against ``earlier`` (ties left out)."""
    n = later + earlier
    if n == 0:
        return float("nan")
    tail = sum(math.comb(n, k) for k in range(min(later, earlier) + 1)) / 2**n
    return min(1.0, 2 * tail)


def compare(steps: pd.DataFrame, first: str, second: str) -> dict:
    """Per seed, ``second``'s steps to 99% against ``first``'s, over the seeds that reached it in both."""
    both = steps[[first, second]].dropna()
    difference = both[second] - both[first]
    nan = float("nan")
    later, earlier = int((difference > 0).sum()), int((difference < 0).sum())
    return {
        "seeds": len(both),
        "later": later,
        "earlier": earlier,
        "same": int((difference == 0).sum()),
        "sign_test_p": sign_test(later, earlier),
        "mean_difference": difference.mean() if len(both) else nan,
        "standard_error": difference.std() / len(both) ** 0.5 if len(both) > 1 else nan,
        "median_ratio": (both[second] / both[first]).median() if len(both) else nan,
        "missed": {p: int(steps[p].isna().sum()) for p in (first, second)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=64, help="seeds trained in each precision (default 64)")
    parser.add_argument("--precisions", default="tf32,bf16", help="two of fp32, tf32, bf16, comma-separated")
    parser.add_argument("--steps", type=int, default=20_000, help="the most steps a seed gets (default 20000)")
    parser.add_argument("--out", type=Path, help="folder for the per-seed table (precision_seeds_<first>_<second>.csv)")
    args = parser.parse_args()
    precisions = args.precisions.split(",")
    if len(precisions) != 2 or not set(precisions) <= set(PRECISIONS) or precisions[0] == precisions[1]:
        parser.error(f"precisions = {args.precisions!r} is not allowed: two different ones of {', '.join(PRECISIONS)}")
    if args.seeds < 2:
        parser.error(f"seeds = {args.seeds} is not allowed: at least 2 (the comparison is over seeds)")
    if not torch.cuda.is_available():
        print("warning: no GPU here, and the CPU multiplies in float32 whatever the precision: both runs "
              "will compute the same thing", file=sys.stderr)
    config = nanda_config(seeds=args.seeds, steps=args.steps, name="precision-seeds")
    root = Path(os.environ.get("GROKCORE_RUNS", "/tmp/grokcore-bench-runs")) / f"precision-seeds-{time.time_ns()}"
    columns = []
    for precision in precisions:
        t0 = time.perf_counter()
        run = gc.train(config, root=root / precision, progress=False, precision=precision)
        first = gc.measures.first_step(run.history, "val_acc", 0.99).rename(precision)
        print(f"{precision}: {time.perf_counter() - t0:.0f} s; {first.notna().sum()} of {args.seeds} seeds reached 99%, "
              f"median step {first.median():.0f}, mean {first.mean():.0f}", flush=True)
        columns.append(first)
    steps = pd.concat(columns, axis=1)
    if args.out:
        atomic_write_text(args.out / f"precision_seeds_{precisions[0]}_{precisions[1]}.csv", steps.to_csv())
    c = compare(steps, *precisions)
    print(f"{precisions[1]} against {precisions[0]}, over the {c['seeds']} seeds that reached 99% in both: "
          f"later for {c['later']}, earlier for {c['earlier']}, at the same evaluation for {c['same']}; "
          f"{c['mean_difference']:+.0f} steps on average (standard error {c['standard_error']:.0f}), "
          f"a median ratio of {c['median_ratio']:.3f}; sign test p = {c['sign_test_p']:.2g}; "
          f"seeds that missed 99%: {c['missed']}")


if __name__ == "__main__":
    main()

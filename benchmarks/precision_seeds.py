"""Does a GPU precision change when a network groks? Nanda et al.'s setting, many seeds, two precisions.

Run on a GPU (not in CI)::

    python benchmarks/precision_seeds.py                          # 64 seeds, tf32 against bf16
    python benchmarks/precision_seeds.py --precisions fp32,tf32   # exact float32 against TF32
    python benchmarks/precision_seeds.py --redraw book/appendix   # only the figure, from the tables

With ``--out DIR`` the per-seed table goes to ``DIR/precision_seeds_<first>_<second>.csv`` and
``DIR/precision_seeds.svg`` is redrawn from every such table in DIR, one panel a comparison.

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
from speed_history import UNDATED, save_undated  # noqa: E402

import grokcore as gc  # noqa: E402
from grokcore.runs import atomic_write_text  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")
FIGURE = "precision_seeds.svg"
NAMES = {"fp32": "exact float32", "tf32": "TF32", "bf16": "bf16"}


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


def tables(folder: Path) -> list[tuple[str, str, pd.DataFrame]]:
    """Every per-seed table in ``folder``: (first precision, second, steps), in name order."""
    found = []
    for path in sorted(folder.glob("precision_seeds_*_*.csv")):
        first, second = path.stem.removeprefix("precision_seeds_").split("_")
        found.append((first, second, pd.read_csv(path, index_col="member")))
    return found


def plot(folder: Path, path: Path | None = None) -> Path:
    """One panel per table in ``folder``: each seed's steps to 99% in one precision against the
    other, the diagonal (no change) and the comparison's counts. Seeds that missed 99% in one
    precision are drawn at that axis's edge. Written to ``path`` (default ``folder/FIGURE``)."""
    path = path or folder / FIGURE
    if path.suffix not in UNDATED:
        raise ValueError(f"path = {path} is not allowed: the figure's file must end in {', '.join(UNDATED)}")
    found = tables(folder)
    if not found:
        raise ValueError(f"folder = {folder} has no precision_seeds_<first>_<second>.csv: run this script with --out {folder}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.rc_context({"svg.hashsalt": "grokbook", "font.size": 9}):
        fig, axes = plt.subplots(1, len(found), figsize=(3.6 * len(found), 3.8), squeeze=False)
        for ax, (first, second, steps) in zip(axes[0], found):
            c = compare(steps, first, second)
            top = 1.06 * steps.max().max()
            both = steps.dropna()
            ax.plot([0, top], [0, top], color="grey", linewidth=1, linestyle="--", label="the same step")
            ax.scatter(both[first], both[second], s=14, alpha=0.75, label=f"a seed ({len(both)})")
            for missed, edge, marker in ((second, "y", "^"), (first, "x", ">")):
                lost = steps[steps[missed].isna() & steps.drop(columns=missed).notna().all(axis=1)]
                if len(lost):
                    other = first if missed == second else second
                    xy = (lost[other], [top] * len(lost)) if edge == "y" else ([top] * len(lost), lost[other])
                    ax.scatter(*xy, marker=marker, s=30, facecolors="none", edgecolors="C3", clip_on=False,
                               label=f"missed 99% in {NAMES[missed]} ({len(lost)}; at the edge)")
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            ax.set_aspect("equal")
            ax.set_xlabel(f"steps to 99%, {NAMES[first]}")
            ax.set_ylabel(f"steps to 99%, {NAMES[second]}")
            ax.set_title(f"{NAMES[second]} against {NAMES[first]}: later for {c['later']},\n"
                         f"earlier for {c['earlier']} (sign test p = {c['sign_test_p']:.2g})", fontsize=9)
            ax.legend(fontsize=7, loc="upper left", frameon=False)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        save_undated(fig, path)
        plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=64, help="seeds trained in each precision (default 64)")
    parser.add_argument("--precisions", default="tf32,bf16", help="two of fp32, tf32, bf16, comma-separated")
    parser.add_argument("--steps", type=int, default=20_000, help="the most steps a seed gets (default 20000)")
    parser.add_argument("--out", type=Path, help="folder for the per-seed table and the figure (the book's: book/appendix)")
    parser.add_argument("--redraw", type=Path, metavar="FOLDER", help="train nothing: redraw FOLDER's figure from its tables")
    args = parser.parse_args()
    if args.redraw:
        try:
            print(f"wrote {plot(args.redraw)}")
        except ValueError as e:
            parser.error(str(e))
        return
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
        print(f"wrote the table and redrew {plot(args.out)}")
    c = compare(steps, *precisions)
    print(f"{precisions[1]} against {precisions[0]}, over the {c['seeds']} seeds that reached 99% in both: "
          f"later for {c['later']}, earlier for {c['earlier']}, at the same evaluation for {c['same']}; "
          f"{c['mean_difference']:+.0f} steps on average (standard error {c['standard_error']:.0f}), "
          f"a median ratio of {c['median_ratio']:.3f}; sign test p = {c['sign_test_p']:.2g}; "
          f"seeds that missed 99%: {c['missed']}")


if __name__ == "__main__":
    main()

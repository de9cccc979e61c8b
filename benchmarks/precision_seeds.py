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
import re
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed import nanda_config  # noqa: E402  (beside this file)
from speed_history import check_figure_path, figure_style, save_undated  # noqa: E402

import grokcore as gc  # noqa: E402
from grokcore.runs import atomic_write_text  # noqa: E402

NAMES = {"fp32": "exact float32", "tf32": "TF32", "bf16": "bf16"}  # grokcore.train's precisions, as the figure names them
PRECISIONS = tuple(NAMES)
FIGURE = "precision_seeds.svg"
TABLE = re.compile(rf"precision_seeds_({'|'.join(PRECISIONS)})_({'|'.join(PRECISIONS)})\.csv")


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


def table_name(first: str, second: str) -> str:
    return f"precision_seeds_{first}_{second}.csv"


def tables(folder: Path) -> list[tuple[str, str, pd.DataFrame]]:
    """Every per-seed table in ``folder``: (first precision, second, steps), in name order.
    A file that looks like one but is not (another name, other columns) is refused, naming it."""
    found = []
    for path in sorted(folder.glob("precision_seeds_*.csv")):
        name = TABLE.fullmatch(path.name)
        if name is None or name[1] == name[2]:
            raise ValueError(f"folder = {folder} holds {path.name}, which is not a table of this script: "
                             f"precision_seeds_<first>_<second>.csv with two of {', '.join(PRECISIONS)}")
        first, second = name.groups()
        steps = pd.read_csv(path)
        if sorted(steps.columns) != sorted(["member", first, second]):
            raise ValueError(f"{path} has columns {list(steps.columns)}, not member, {first}, {second}")
        found.append((first, second, steps.set_index("member")))
    return found


def plot(folder: Path, path: Path | None = None) -> Path:
    """One panel per table in ``folder``, in name order: each seed's steps to 99% in the second
    precision against the first, the diagonal (no change) and the comparison's counts. A seed
    that never reached 99% in one precision is drawn on that axis's edge (at no step), one that
    reached it in neither in the top right corner. Written to ``path`` (default ``folder/FIGURE``)."""
    path = path or folder / FIGURE
    check_figure_path(path)
    found = tables(folder)
    if not found:
        raise ValueError(f"folder = {folder} has no precision_seeds_<first>_<second>.csv: run this script with --out {folder}")
    import matplotlib.pyplot as plt

    with figure_style():
        fig, axes = plt.subplots(1, len(found), figsize=(3.6 * len(found), 3.8), squeeze=False)
        for ax, (first, second, steps) in zip(axes[0], found):
            c = compare(steps, first, second)
            x, y = steps[first], steps[second]
            reached = pd.concat([x, y]).dropna()
            top = 1.06 * reached.max() if len(reached) else 1.0  # no seed reached 99%: only the corner is drawn
            ax.plot([0, top], [0, top], color="grey", linewidth=1, linestyle="--", label="the same step")
            both = x.notna() & y.notna()
            ax.scatter(x[both], y[both], s=14, alpha=0.75, label=f"a seed ({both.sum()})")
            edge_x, edge_y = x.fillna(top), y.fillna(top)  # a step never reached is drawn on the edge
            for seeds, marker, label in (
                (x.notna() & y.isna(), "^", f"never 99% in {NAMES[second]}"),
                (x.isna() & y.notna(), ">", f"never 99% in {NAMES[first]}"),
                (x.isna() & y.isna(), "s", "never 99% in either"),
            ):
                if seeds.any():
                    ax.scatter(edge_x[seeds], edge_y[seeds], marker=marker, s=30, facecolors="none", edgecolors="C3",
                               clip_on=False, label=f"{label} ({int(seeds.sum())}): on the edge, at no step")
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            ax.set_aspect("equal")
            ax.set_xlabel(f"steps to 99%, {NAMES[first]}")
            ax.set_ylabel(f"steps to 99%, {NAMES[second]}")
            ax.set_title(f"{NAMES[second]} against {NAMES[first]}: later for {c['later']},\n"
                         f"earlier for {c['earlier']}, tied {c['same']} (sign test p = {c['sign_test_p']:.2g})", fontsize=9)
            ax.legend(fontsize=7, loc="upper left", frameon=False)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        save_undated(fig, path)
        plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=64, help="seeds trained in each precision (default 64)")
    parser.add_argument("--precisions", default="tf32,bf16",
                        help="two of fp32, tf32, bf16, comma-separated; trained and compared in that order (fp32 first)")
    parser.add_argument("--steps", type=int, default=20_000, help="the most steps a seed gets (default 20000)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="folder for the per-seed table and the figure (the book's: book/appendix)")
    where.add_argument("--redraw", type=Path, metavar="FOLDER",
                       help="train nothing (the options above do not apply): redraw FOLDER's figure from its tables")
    args = parser.parse_args()
    try:
        if args.redraw:
            print(f"wrote {plot(args.redraw)}")
            return
        if args.out and args.out.exists():
            tables(args.out)  # a folder whose figure could not be drawn is refused before training
    except ValueError as e:
        parser.error(str(e))
    precisions = args.precisions.split(",")
    if len(precisions) != 2 or not set(precisions) <= set(PRECISIONS) or precisions[0] == precisions[1]:
        parser.error(f"precisions = {args.precisions!r} is not allowed: two different ones of {', '.join(PRECISIONS)}")
    precisions.sort(key=PRECISIONS.index)  # one table per pair, whichever order it was asked in
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
    c = compare(steps, *precisions)
    print(f"{precisions[1]} against {precisions[0]}, over the {c['seeds']} seeds that reached 99% in both: "
          f"later for {c['later']}, earlier for {c['earlier']}, at the same evaluation for {c['same']}; "
          f"{c['mean_difference']:+.0f} steps on average (standard error {c['standard_error']:.0f}), "
          f"a median ratio of {c['median_ratio']:.3f}; sign test p = {c['sign_test_p']:.2g}; "
          f"seeds that missed 99%: {c['missed']}", flush=True)
    if args.out:
        atomic_write_text(args.out / table_name(*precisions), steps.to_csv())
        print(f"wrote {args.out / table_name(*precisions)} and redrew {plot(args.out)}")


if __name__ == "__main__":
    main()

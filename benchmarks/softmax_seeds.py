"""Are the training-loss spikes float32's? Many seeds, the softmax in float32 and in float64.

Not in CI; 64 seeds of both settings took 46 s on an H200, 8 take about 13 minutes on two CPU cores::

    python benchmarks/softmax_seeds.py --out DIR   # 64 seeds of each setting (a GPU)
    OMP_NUM_THREADS=2 python benchmarks/softmax_seeds.py --seeds 8 --out book/thilak2022   # the chapters' tables
    OMP_NUM_THREADS=2 python benchmarks/softmax_seeds.py --settings thilak --seeds 8 --trace --out book/thilak2022   # the Thilak table with Adam's steps
    OMP_NUM_THREADS=2 python benchmarks/softmax_seeds.py --settings thilak --seeds 2 --steps 40000   # a long run (4-5 minutes a softmax)
    OMP_NUM_THREADS=2 python benchmarks/softmax_seeds.py --seeds 2 --steps 300   # a short CPU check

Two of the book's `cpu` settings: Thilak et al.'s (Adam without weight decay, eps 1e-8, x/y mod
31) and Nanda et al.'s (AdamW, weight decay 1, x+y mod 31, full batch). Each trains the same
seeds (each its own initialisation and split) as one ensemble, once with the loss's softmax in
float32 (grokcore's ``cross_entropy``) and once in float64 (``cross_entropy_fp64``, as Nanda et
al.'s code takes it), with exact float32 products on a GPU as on the CPU, and evaluated every 20
steps. Per seed it records the training-loss spikes (``grokcore.measures.loss_spikes``), the
lowest training loss, the first step at 99% validation accuracy, the best validation accuracy
and the last layer's norm at the end, with its part common to every output (``--trace``: and, from
``gc.trace_output_layer``, while the training loss is below 1e-6, the median ratio of the last
layer's gradient's common part to the rest and the median and largest common part of Adam's
step, as a fraction of a full step); with ``--out`` the table goes to
``DIR/softmax_seeds_<setting>.csv`` (``softmax_seeds_<setting>_<steps>steps.csv`` with ``--steps``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precision_seeds import sign_test  # noqa: E402  (beside this file)

import grokcore as gc  # noqa: E402
from grokcore.runs import atomic_write_text  # noqa: E402

LOSSES = {"fp32": "cross_entropy", "fp64": "cross_entropy_fp64"}


def settings(seeds: int, steps: int | None) -> dict[str, gc.RunConfig]:
    """The Thilak and Nanda chapters' `cpu` settings (one epsilon), for ``seeds`` seeds."""
    thilak = gc.RunConfig(
        name="softmax-seeds-thilak",
        task=gc.AlgorithmicTask(op="x/y", p=31, train_fraction=0.5),
        model=gc.Transformer(n_layers=2, d_model=32, n_heads=4, d_mlp=128),
        optim=gc.AdamW(lr=1e-3, weight_decay=0.0, betas=(0.9, 0.98), warmup_steps=10, eps=1e-8),
        steps=steps or 5200, batch_size=512, max_batch_fraction=0.5,
        seeds=seeds, eval_every=20, checkpoints=2, track_norms=("unembed",),
    )
    nanda = gc.RunConfig(
        name="softmax-seeds-nanda",
        task=gc.AlgorithmicTask(op="x+y", p=31, train_fraction=0.5, op_token=False),
        model=gc.Transformer(n_layers=1, d_model=64, n_heads=4, d_mlp=256, norm="none", bias="mlp", init="nanda"),
        optim=gc.AdamW(lr=3e-3, weight_decay=1.0, betas=(0.9, 0.98), warmup_steps=10),
        steps=steps or 6000, batch_size=None, seeds=seeds, eval_every=20, checkpoints=2, track_norms=("unembed",),
    )
    return {"thilak": thilak, "nanda": nanda}


def per_seed(run: gc.Run) -> pd.DataFrame:
    """One row per seed: its spikes, the first of them, its lowest training loss, its step to 99%,
    its best validation accuracy, its last layer's norm at the end and that layer's two parts
    then (``grokcore.measures.common_output_split``: common to every output, and the rest)."""
    history = run.history
    spikes = gc.measures.loss_spikes(history)
    out = gc.measures.grokking_delays(history)[["member", "seed", "val_step"]].set_index("member")
    out["spikes"] = spikes.groupby("member").size().reindex(out.index, fill_value=0)
    out["first_spike"] = spikes.groupby("member").step.min().reindex(out.index).astype("Int64")
    by_member = history.groupby("member")
    out["min_train_loss"] = by_member.train_loss.min()
    out["best_val_acc"] = by_member.val_acc.max()
    out["final_norm"] = by_member.norm_unembed.last()
    parts = [gc.measures.common_output_split(run.model(member=m).unembed.weight) for m in out.index]
    out["final_common"], out["final_rest"] = zip(*parts)
    return out.rename(columns={"val_step": "val_99"}).reset_index(drop=True)


def traced(config: gc.RunConfig) -> pd.DataFrame:
    """Per seed, from ``gc.trace_output_layer`` at the traced steps (every evaluation's) where
    the training loss was below 1e-6: the median ratio of the common part of the last layer's
    gradient to the rest, and the median and largest common part of Adam's step, a fraction of
    a full step."""
    trace = gc.trace_output_layer(config, every=config.eval_every, precision="fp32", progress=False)
    trace["ratio"] = trace.gradient_common / trace.gradient_rest
    tiny = trace[trace.train_loss < 1e-6].groupby("seed")
    out = pd.DataFrame({
        "tiny_loss_gradient_ratio": tiny.ratio.median(),
        "tiny_loss_step_common_median": tiny.step_common.median(),
        "tiny_loss_step_common_max": tiny.step_common.max(),
    })
    return out.reindex(sorted(trace.seed.unique())).rename_axis("seed").reset_index()


def summary(table: pd.DataFrame) -> str:
    """Seeds with spikes, spikes in all, the lowest losses and steps to 99%, both softmaxes side by side."""
    lines = []
    for name in LOSSES:
        t = table[table.softmax == name]
        lines.append(
            f"  {name}: {int((t.spikes > 0).sum())} of {len(t)} seeds spiked, {int(t.spikes.sum())} spikes; lowest "
            f"training loss a median {t.min_train_loss.median():.1e}; 99% validation accuracy for "
            f"{int(t.val_99.notna().sum())}, at a median step of {t.val_99.median():,.0f}"
            + (f"; last-layer norm at the end a median {t.final_norm.median():.1f}" if "final_norm" in t else "")
        )
    wide = table.pivot(index="seed", columns="softmax", values="spikes")
    fewer, more = int((wide.fp64 < wide.fp32).sum()), int((wide.fp64 > wide.fp32).sum())
    lines.append(f"  per seed, fp64 had fewer spikes for {fewer}, more for {more} (two-sided sign test p = {sign_test(fewer, more):.2g})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--steps", type=int, help="steps instead of the settings' 5,200 (Thilak) and 6,000 (Nanda)")
    parser.add_argument("--out", type=Path, help="write softmax_seeds_<setting>[_<steps>steps].csv here")
    parser.add_argument("--settings", nargs="+", choices=["thilak", "nanda"], default=["thilak", "nanda"])
    parser.add_argument("--trace", action="store_true", help="also trace Adam's steps on the last layer (trains each softmax again)")
    args = parser.parse_args()
    if args.seeds < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--seeds and --steps must be at least 1")
    root = Path("/tmp/grokcore-softmax-seeds") / str(time.time_ns())
    for setting, config in settings(args.seeds, args.steps).items():
        if setting not in args.settings:
            continue
        tables = []
        for name, loss in LOSSES.items():
            t0 = time.perf_counter()
            run = gc.train(config.replace(task=config.task.replace(loss=loss)), root=root, progress=False, precision="fp32")
            table = per_seed(run)
            if args.trace:
                table = table.merge(traced(run.config), on="seed", how="left")
            tables.append(table.assign(softmax=name))
            print(f"{setting}, softmax in {name}: {time.perf_counter() - t0:.0f} s", flush=True)
        table = pd.concat(tables, ignore_index=True)
        print(f"{setting}:\n{summary(table)}", flush=True)
        if args.out:  # the write makes the folder if missing
            name = f"softmax_seeds_{setting}" + (f"_{args.steps}steps" if args.steps else "")
            atomic_write_text(args.out / f"{name}.csv", table.to_csv(index=False))


if __name__ == "__main__":
    main()

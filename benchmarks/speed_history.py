"""Every recorded run of ``speed.py``, and the figure that sets case (a)'s speed-up beside the host.

``speed.py --out DIR`` writes ``DIR/speed.csv`` (its run) and adds the same rows, with the time
they were recorded, to ``DIR/speed_history.csv``; then it redraws ``DIR/speed_by_host.svg``
from the history (:func:`record`). To redraw the figure alone::

    python benchmarks/speed_history.py book/appendix

The plain loop launches every kernel from Python, so its speed is the host CPU's, which
differs from one loan of a GPU machine to the next; grokcore's compiled step hardly does. The
figure plots case (a)'s speed-up against the plain loop's time per step, one point per run and
comparison (network and precision).
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grokcore.runs import atomic_write_bytes, atomic_write_text  # noqa: E402

TABLE = "speed.csv"
HISTORY = "speed_history.csv"
FIGURE = "speed_by_host.svg"
CASE_A = "(a) Nanda p=113, to 99% val"  # the case column of speed.py's case (a)
PAPER = "plain, paper's module"  # the implementation column of its plain loop on the paper code's network
TARGET = 20.0  # the issue's target for case (a): at least 20x the plain loop
UNDATED = {".svg": {"Date": None}, ".pdf": {"CreationDate": None}, ".png": {}}  # the figure's formats


def record(table: pd.DataFrame, folder: Path, recorded: str | None = None) -> pd.DataFrame:
    """What ``speed.py --out folder`` does with its run's table: write it as speed.csv, add it
    to the history (stamped now, unless ``recorded``) and redraw the figure; returns the history."""
    recorded = recorded or time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    atomic_write_text(folder / TABLE, table.to_csv(index=False))  # makes the folder if missing
    history = append(table, folder / HISTORY, recorded)
    plot(history, folder / FIGURE)
    return history


def append(table: pd.DataFrame, path: Path, recorded: str) -> pd.DataFrame:
    """Add one run's rows to the history at ``path`` (made if missing), stamped ``recorded``
    (UTC, to the minute: 2026-12-06T16:19Z); returns the history as the file now holds it."""
    if not isinstance(recorded, str) or not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ", recorded):
        raise ValueError(f"recorded = {recorded!r} is not allowed: must be a UTC time to the minute, such as 2026-12-06T16:19Z")
    history = pd.read_csv(path) if path.exists() else None
    if history is not None and (history["recorded"] == recorded).any():
        raise ValueError(f"recorded = {recorded} is already in {path}: each run needs its own time")
    rows = table.assign(recorded=recorded)[["recorded", *table.columns]]
    text = (rows if history is None else pd.concat([history, rows], ignore_index=True)).to_csv(index=False)
    atomic_write_text(path, text)
    return pd.read_csv(io.StringIO(text))


def _steps(row: pd.Series) -> int:
    """The step count a row of (a) starts its note with ("4800 steps; ...")."""
    first = str(row["note"]).split(";")[0].split()
    if len(first) != 2 or first[1] != "steps" or not first[0].isdigit():
        raise ValueError(
            f"history: the {row['implementation']!r} row of case (a) recorded {row['recorded']} should start its note "
            f"with its steps ('4800 steps; ...'), not {row['note']!r}"
        )
    return int(first[0])


def _row(run: pd.DataFrame, implementation: str, note: str | None = None, required: bool = False) -> pd.Series | None:
    """The row of ``implementation`` (whose note contains ``note``); None if the run has none
    and may lack it. Two such rows, or none where one is required, would make a point wrong."""
    rows = run[run["implementation"] == implementation]
    if note is not None:
        rows = rows[rows["note"].str.contains(note, regex=False, na=False)]
    if len(rows) > 1 or (required and not len(rows)):
        which = f"{implementation!r}" + (f" noting {note!r}" if note else "")
        raise ValueError(f"history: the run recorded {run['recorded'].iloc[0]} has {len(rows)} rows {which} in case (a), not one")
    return rows.iloc[0] if len(rows) else None


def points(history: pd.DataFrame) -> pd.DataFrame:
    """Case (a), one row per run and comparison: the plain loop's milliseconds per step (its
    seconds to 99% over its steps, evaluations included), the speed-up over grokcore's warm
    row, in TF32 and, where the run has it, with bf16 factors, and that row's milliseconds per
    step (set-up and evaluations included)."""
    seconds = history[(history["case"] == CASE_A) & (history["metric"] == "seconds to 99% val acc")]
    out = []
    for recorded, run in seconds.groupby("recorded", sort=True):
        ours = {"TF32": _row(run, "grokcore", "compile cache warm", required=True), "bf16": _row(run, "grokcore, bf16")}
        for network, implementation in (("grokcore's", "plain"), ("the paper code's", PAPER)):
            plain = _row(run, implementation, required=implementation == "plain")
            if plain is None:  # the paper code's network joined the benchmark on 2026-12-05
                continue
            for precision, warm in ours.items():
                if warm is None:  # bf16 joined it on 2026-12-06
                    continue
                out.append({
                    "recorded": recorded,
                    "device": run["device"].iloc[0],
                    "network": network,
                    "precision": precision,
                    "plain_ms_per_step": 1e3 * plain["value"] / _steps(plain),
                    "speedup": plain["value"] / warm["value"],
                    "ours_ms_per_step": 1e3 * warm["value"] / _steps(warm),
                })
    return pd.DataFrame(out)


def plot(history: pd.DataFrame, path: Path) -> None:
    """Case (a)'s speed-up against the plain loop's step, every run; the format is the
    suffix of ``path`` (.svg, .png, .pdf). A dotted line per precision through the origin: the
    speed-up of a run that takes the latest warm row's time per step for as many steps as the
    plain loop (a ratio of times per step, so proportional to the host's plain step)."""
    check_figure_path(path)
    import matplotlib.pyplot as plt

    data = points(history)
    gpus = {device: device.removeprefix("NVIDIA ").split()[0] for device in sorted(data["device"].unique())}
    latest = data[data["recorded"] == data["recorded"].max()]
    series = [  # network, precision, colour, label
        ("the paper code's", "TF32", "C0", "the paper code's network, TF32"),
        ("grokcore's", "TF32", "C1", "grokcore's network on both sides, TF32"),
        ("the paper code's", "bf16", "C2", "the paper code's network, bf16 factors"),
        ("grokcore's", "bf16", "C3", "grokcore's network on both sides, bf16 factors"),
    ]
    with figure_style():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for network, precision, color, label in series:
            for (device, gpu), marker in zip(gpus.items(), "os^Dv<>p*h"):
                part = data[(data["network"] == network) & (data["precision"] == precision) & (data["device"] == device)]
                if len(part):
                    ax.scatter(part["plain_ms_per_step"], part["speedup"], color=color, marker=marker, s=22,
                               label=f"{label} ({gpu})", alpha=0.85, zorder=3)
        ax.scatter(latest["plain_ms_per_step"], latest["speedup"], facecolors="none", edgecolors="black", s=70,
                   label="the latest run (the table)", zorder=4)
        xmax = 1.05 * data["plain_ms_per_step"].max()
        for precision, color in (("TF32", "C0"), ("bf16", "C2")):
            ours = latest.loc[latest["precision"] == precision, "ours_ms_per_step"]
            if len(ours):
                ms = ours.iloc[0]
                ax.plot([0, xmax], [0, xmax / ms], color=color, linestyle=":", linewidth=1,
                        label=f"{precision}: the latest warm row's {1e3 * ms:.0f} µs a step (set-up and evaluations in it), as many steps")
        ax.axhline(TARGET, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0.9 * data["plain_ms_per_step"].min(), xmax)
        ax.set_ylim(0.9 * data["speedup"].min(), 1.05 * data["speedup"].max())
        ax.annotate("target: 20x", (ax.get_xlim()[1], TARGET), xytext=(-4, 3), textcoords="offset points",
                    color="grey", ha="right")
        ax.set_xlabel("the plain loop's time per step on the run's host (ms, its evaluation included)")
        ax.set_ylabel("speed-up to 99% (plain s / grokcore's warm s)")
        ax.set_title(f"Case (a): the speed-up follows the host ({data['recorded'].nunique()} runs of speed.py)", fontsize=10)
        ax.legend(fontsize=6.5, loc="upper left", frameon=False)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_undated(fig, path)
        plt.close(fig)


def check_figure_path(path: Path) -> None:
    """Refuse a figure file in a format :func:`save_undated` cannot write without a date."""
    if path.suffix not in UNDATED:
        raise ValueError(f"path = {path} is not allowed: the figure's file must end in {', '.join(UNDATED)}")


def figure_style():
    """A context for drawing a benchmark figure: grokcore's style, set here rather than left to
    an import's side effect, fixed SVG ids (``svg.hashsalt``) and a smaller font."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grokcore.plots import style

    style()
    return plt.rc_context({"svg.hashsalt": "grokbook", "font.size": 9})


def save_undated(fig, path: Path) -> None:
    """Write ``fig`` atomically without a date, so that the file changes only with its data
    (draw it inside :func:`figure_style` for stable SVG ids)."""
    check_figure_path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip("."), metadata=UNDATED[path.suffix])
    atomic_write_bytes(path, buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description="redraw the speed-by-host figure from a folder's speed_history.csv")
    parser.add_argument("folder", type=Path, help="the folder with speed_history.csv (the book's: book/appendix)")
    args = parser.parse_args()
    history_file = args.folder / HISTORY
    if not history_file.exists():
        parser.error(f"folder = {args.folder} has no {HISTORY}: `python benchmarks/speed.py --out {args.folder}` starts one")
    plot(pd.read_csv(history_file), args.folder / FIGURE)
    print(f"wrote {args.folder / FIGURE}")


if __name__ == "__main__":
    main()

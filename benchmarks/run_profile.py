"""Where a whole run's time goes: speed.py's case (a), Nanda et al.'s run to 99%, piece by piece.

    python benchmarks/run_profile.py                # on a GPU: compiled, as speed.py's warm row
    python benchmarks/run_profile.py --no-compile   # CUDA graphs only (the default for this run)
    OMP_NUM_THREADS=2 python benchmarks/run_profile.py --steps 30   # a short check on the CPU

It trains case (a) once to compile and warm up, then ``--repeats`` times more, printing each
run's seconds, steps to 99% and evaluations: identical runs on a GPU differ in both, and the
spread says how much one row of speed.py's table can be trusted. Then one more run with its
pieces timed: the trainer's set-up, the evaluations, the warm-up and capture of the CUDA
graphs, the files written and the run opened at the end. Each piece waits for the GPU before
and after, so its time holds its own GPU work and none of the steps queued before it; a piece
called inside another counts once, in the inner one. What is left is the training steps and
the loop around them, printed beside the steps times the step alone (timed last, with
speed.py's ``grokcore_steps_per_s``). Run on a GPU machine; not part of CI.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grokcore as gc  # noqa: E402
from grokcore.optim import EnsembleAdamW  # noqa: E402
from grokcore.runs import Run  # noqa: E402
from grokcore.tasks.base import Task  # noqa: E402
from grokcore.train import Trainer  # noqa: E402
from speed import grokcore_steps_per_s, nanda_config, sync  # noqa: E402

train_module = sys.modules["grokcore.train"]  # the package's ``train`` names the function

# (owner, attribute, label): what the timed run is split into. The set-up's parts are pieces
# of their own: on an H100 the set-up took 45 ms of one warm run and the constructor alone
# 11-49 ms in other calls.
PIECES = [
    (Trainer, "__init__", "set-up: the rest of the trainer's constructor"),
    (Task, "build", "set-up: the data, on the device"),
    (train_module, "build_member", "set-up: building the members' networks"),
    (EnsembleAdamW, "__init__", "set-up: the optimiser's state"),
    (Trainer, "_set_compiled", "set-up: wrapping the step for torch.compile"),
    (Trainer, "evaluate", "evaluations"),
    (Trainer, "_on_side_stream", "warm-up before each graph capture"),
    (Trainer, "_capture", "CUDA graph captures"),
    (train_module, "write_history", "history.csv: building the table"),
    (train_module, "atomic_write_text", "atomic writes: config.json, history.csv, DONE"),
    (train_module, "code_version", "code version (git)"),
    (Run, "__init__", "opening the finished run"),
]


@contextlib.contextmanager
def timed_pieces():
    """Patch each piece to add its exclusive time to ``totals[label]`` and its calls to
    ``calls[label]``; restored on exit."""
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)
    inner = [0.0]  # time spent in pieces nested inside the one running now
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in PIECES]

    def wrap(f, label):
        @functools.wraps(f)
        def timed(*args, **kwargs):
            sync()
            outer, inner[0] = inner[0], 0.0
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                sync()
                took = time.perf_counter() - t0
                totals[label] += took - inner[0]
                calls[label] += 1
                inner[0] = outer + took

        return timed

    for (owner, name, label), (_, _, f) in zip(PIECES, originals):
        setattr(owner, name, wrap(f, label))
    try:
        yield totals, calls
    finally:
        for owner, name, f in originals:
            setattr(owner, name, f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-compile", action="store_true", help="CUDA graphs of the uncompiled step")
    parser.add_argument("--repeats", type=int, default=3, help="runs after the first (which compiles), before the one timed piece by piece")
    parser.add_argument("--steps", type=int, help="train this many steps instead of to 99%% (a short CPU check)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    compile_step = device.type == "cuda" and not args.no_compile
    changes = {} if args.steps is None else {"steps": args.steps, "stop_at": None}
    root = Path(os.environ.get("GROKCORE_RUNS", "/tmp/grokcore-bench-runs")) / f"run-profile-{time.time_ns()}"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor-cache"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"case (a), {'compiled + CUDA graphs' if compile_step else 'uncompiled'}, on {name}, torch {torch.__version__}")

    def run(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        result = gc.train(nanda_config(**changes), root=root / f"run{i}", progress=False, torch_compile=compile_step)
        seconds = time.perf_counter() - t0
        reached = gc.measures.first_step(result.history, "val_acc", 0.99).iloc[0]
        at = "not reached" if reached != reached else f"{int(reached)} steps"
        print(f"run {i}: {seconds:.3f} s, 99% val: {at}, {len(result.history)} evaluations", flush=True)
        return seconds, int(result.history.step.max())

    run(0)  # compiles, or warms up the uncompiled path
    for i in range(1, args.repeats + 1):
        run(i)

    with timed_pieces() as (totals, calls):
        t0 = time.perf_counter()
        _, steps = run(args.repeats + 1)
        total = time.perf_counter() - t0
    print(f"\npieces of run {args.repeats + 1} ({1e3 * total:.1f} ms in all):")
    for label in sorted(totals, key=totals.get, reverse=True):
        print(f"  {1e3 * totals[label]:9.2f} ms  x{calls[label]:<4d} {label}")
    rest = total - sum(totals.values())

    timed = 1000 if device.type == "cuda" else 5
    step = 1 / grokcore_steps_per_s(nanda_config(stop_at=None), device, timed, torch_compile=compile_step)
    print(f"  {1e3 * rest:9.2f} ms        the rest: {steps} training steps and the loop")
    print(f"  {1e3 * steps * step:9.2f} ms        {steps} x the step alone ({1e6 * step:.1f} µs, {timed} steps timed)")


if __name__ == "__main__":
    main()

"""Where one training step's time goes: its time, and its kernels (or CPU ops) one by one.

    python benchmarks/step_profile.py                  # Nanda et al.'s step, compiled on a GPU
    python benchmarks/step_profile.py --case power --no-compile
    OMP_NUM_THREADS=2 python benchmarks/step_profile.py --steps 50    # on the CPU: ops, not kernels

The step is the trainer's own (``Trainer.train_step``: on a GPU one CUDA-graph replay, so
launches cost nothing and the step's time is its kernels' time). It prints:

- the time per step, from ``--repeats`` timings of ``--steps`` steps each (all of them, so
  their spread shows how steady the machine is);
- a table of the kernels of ``--profile-steps`` profiled steps (on the CPU, the operators),
  with calls and microseconds per step, the matrix products first, then the rest by time.
  A GPU's kernels are timed on the device; the CPU's operators are timed with the profiler
  running beside them, which slowed Nanda's step by 1.5-1.6x in some of our runs and not at
  all in others; where it did, the table is a rough split and says so.

It measures a step as the appendix's per-step figures were measured (the compiled step's
microseconds, its kernel count, the matrix products' share), which came from earlier,
uncommitted scripts; the products' times one by one, each replayed on its own, are not part
of it. Run on a GPU machine; not part of CI.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grokcore.train import Trainer  # noqa: E402
from speed import nanda_config, power_config  # noqa: E402

CASES = {"nanda": nanda_config, "power": power_config}

# Kernel names of matrix products: cuBLAS/CUTLASS (sm90_xmma..., cutlass..., gemm...),
# inductor's Triton templates (triton_tem_fused_mm...), and the CPU's leaf aten ops.
PRODUCT = re.compile(r"gemm|xmma|cutlass|triton_tem|^aten::(mm|addmm|bmm|baddbmm)$", re.IGNORECASE)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(trainer: Trainer, steps: int, repeats: int) -> list[float]:
    """Seconds per step, ``repeats`` times over ``steps`` steps."""
    times = []
    for _ in range(repeats):
        sync(trainer.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync(trainer.device)
        times.append((time.perf_counter() - t0) / steps)
    return times


def kernel_table(trainer: Trainer, steps: int) -> list[tuple[str, float, float]]:
    """(name, calls per step, microseconds per step) of the device's kernels (the CPU's
    operators, by self time, on the CPU) over ``steps`` profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    on_gpu = trainer.device.type == "cuda"
    activities = [ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step()
        sync(trainer.device)
    calls, micros = defaultdict(int), defaultdict(float)
    if on_gpu:  # every kernel, also those replayed from a CUDA graph
        for event in prof.events():
            if event.device_type == torch.autograd.DeviceType.CUDA:
                calls[event.name] += 1
                micros[event.name] += event.time_range.elapsed_us()
    else:
        for event in prof.key_averages():
            if event.self_cpu_time_total > 0:
                calls[event.key] += event.count
                micros[event.key] += event.self_cpu_time_total
    return [(name, calls[name] / steps, micros[name] / steps) for name in calls]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), default="nanda", help="the configuration of speed.py's case (a) or (b)")
    parser.add_argument("--members", type=int, default=1, help="seeds trained as one ensemble")
    parser.add_argument("--no-compile", action="store_true", help="CUDA graphs of the uncompiled step (the default for short runs)")
    parser.add_argument("--steps", type=int, default=1000, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings")
    parser.add_argument("--profile-steps", type=int, default=20, help="steps under the profiler")
    parser.add_argument("--top", type=int, default=40, help="rows of the table")
    args = parser.parse_args()
    for name in ("members", "steps", "repeats", "profile_steps", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} = {getattr(args, name)} is not allowed: must be at least 1")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True  # as gc.train does by default
    config = CASES[args.case](seeds=args.members, stop_at=None)
    compiled = device.type == "cuda" and not args.no_compile
    trainer = Trainer(config, device, torch_compile=compiled)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    mode = "compiled + CUDA graph" if compiled else ("CUDA graph" if device.type == "cuda" else "eager")
    print(f"{args.case}, {args.members} member(s), {mode}, on {where}, torch {torch.__version__}")

    t0 = time.perf_counter()
    time_steps(trainer, 10, 1)  # warm-up: compiling and graph capture happen here
    print(f"first 10 steps (compiling, capturing): {time.perf_counter() - t0:.1f} s")
    times = time_steps(trainer, args.steps, args.repeats)
    print("time per step: " + ", ".join(f"{t * 1e6:.1f} µs" for t in times) + f" ({args.repeats} x {args.steps} steps)")

    table = kernel_table(trainer, args.profile_steps)
    products = sorted((row for row in table if PRODUCT.search(row[0])), key=lambda row: -row[2])
    others = sorted((row for row in table if not PRODUCT.search(row[0])), key=lambda row: -row[2])
    total = sum(row[2] for row in table)
    unit = "kernels" if device.type == "cuda" else "operators (self CPU time)"
    print(f"\n{unit} per step: {sum(row[1] for row in table):.0f} calls, {total:.1f} µs")
    if total > 1.2 * min(times) * 1e6:
        # Seen on the CPU in some runs: 62-113 ms of operators' self time a step against
        # 40-71 ms timed without the profiler, most of the excess in one aten::cat.
        print(f"note: {total / (min(times) * 1e6):.1f}x the time per step without the profiler,"
              " which changes what it measures here: read the table as a rough split")
    for title, rows in (("matrix products", products), ("the rest", others)):
        print(f"{title}: {sum(r[1] for r in rows):.0f} calls, {sum(r[2] for r in rows):.1f} µs")
    print(f"\n{'µs/step':>9} {'calls':>6}  name")
    for name, calls, micros in (products + others)[: args.top]:
        print(f"{micros:9.1f} {calls:6.1f}  {name[:110]}")


if __name__ == "__main__":
    main()

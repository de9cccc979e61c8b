"""One training loop for every task: K members of one architecture trained as one.

The members' weights are the rows of one (K, P) tensor. ``torch.func.vmap`` over
``functional_call`` runs the K networks as one batched network (a model with a
``forward_members`` method batches them itself), one backward pass gives every member's
gradient, and :class:`~grokcore.optim.EnsembleAdamW` updates all rows at once. K = 1 is an
ordinary run. The loop never branches on the paper: the task gives
tensors and a loss kind, the model config gives a module.

Batches are drawn without a random-number generator state: the sort keys of member k at
step t are a hash of (seed_k, t, example), so a member's batches do not depend on which
other members share its run, and a resumed run draws the batches an uninterrupted one
would. On the CPU it repeats the uninterrupted run exactly, and so did uncompiled GPU steps
wherever we checked (Nanda et al.'s and Power et al.'s settings, a small sweep), though the
embedding's own backward, which GPU lookups in tables of over 256 rows and the MLPs' first
layers use, did not add in a fixed order in Nanda et al.'s setting. A compiled GPU step does
not repeat even itself: some of its kernels (the lookup's gradient among them) add with
atomic adds, in an order that changes from run to run, and two runs of one config drift
apart from their last bits on.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import functools
import io
import itertools
import json
import math
import numbers
import os
import platform
import signal
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call, vmap

from grokcore.config import AdamW, ConfigError, RunConfig, in_module
from grokcore.measures.weights import common_output_split
from grokcore.optim import EnsembleAdamW
from grokcore.runs import (
    Run,
    atomic_torch_save,
    atomic_write_text,
    checkpoint_file,
    code_version,
    exclusive,
    run_path,
)
from grokcore.tasks.base import loss_gradient, per_example

METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "weight_norm")

# Two of torch's warnings that a grokcore user can do nothing about, and that would otherwise
# head a chapter's training cell on a GPU: the autograd thread's first cuBLAS call finds no
# CUDA context, and torch sets the primary one itself (pytorch/pytorch#120131); inductor
# splits a softmax's reduction and says it is therefore not computed online.
warnings.filterwarnings("ignore", "Attempting to run cuBLAS, but there was no current CUDA context", UserWarning)
warnings.filterwarnings("ignore", r"\s*Online softmax is disabled on the fly", UserWarning)


#: How a GPU multiplies matrices (``train``'s ``precision``); the CPU always does so in float32.
PRECISIONS = {
    "fp32": "exact float32",
    "tf32": "TF32 tensor cores: float32's range, 11 significant bits per factor (the default)",
    "bf16": "bfloat16 factors (8 significant bits) in the training step, forward and backward, through autocast; "
    "weights, optimiser and the loss's gradient at the logits stay float32, evaluations are as in tf32",
}


def device_precision(precision: str, device: torch.device) -> str:
    """The precision ``device`` multiplies in: the CPU's is always float32."""
    return precision if device.type == "cuda" else "fp32"


def check_precision(precision) -> None:
    if not isinstance(precision, str) or precision not in PRECISIONS:
        choices = "; ".join(f"{name!r}: {what}" for name, what in PRECISIONS.items())
        raise ConfigError(f"precision = {precision!r} is not allowed: must be one of {choices}")


def _check_same_precision(path: Path, precision: str, device: torch.device, finished: bool) -> None:
    """A run started in bf16 is not continued, or returned, as if another precision had been
    asked for, nor the other way round: bf16 changes what a run measures, and the precision is
    not part of the config's hash. TF32 against float32, or a GPU run resumed on the CPU, change
    only rounding and pass. ``precision``: the one asked for; ``device``: where it would train."""
    try:
        recorded = json.loads((path / "config.json").read_text()).get("precision")
    except (OSError, ValueError):
        return  # no record (a run from before precision was recorded, or none yet)
    if recorded is None:
        return
    # What this call stands for: a bf16 run is returned as asked for on any device; otherwise
    # as the device would train (the CPU's "fp32" records a CPU run asked for in bf16).
    asked = precision if finished and recorded == "bf16" else device_precision(precision, device)
    if (recorded == "bf16") == (asked == "bf16"):
        return
    if finished:
        warnings.warn(
            f"{path.name} was trained with precision = {recorded!r}, not {precision!r} (the precision is not part "
            "of the config's hash): returning it as it is; to compare, train it again in another root",
            stacklevel=3,
        )
        return
    if recorded == "bf16" and device.type != "cuda":  # only a GPU continues it, whatever was asked for
        raise ConfigError(
            f"{path.name} started with precision = 'bf16', which the CPU cannot continue (it multiplies in "
            "float32): resume it on a GPU, or train it in another root"
        )
    raise ConfigError(
        f"precision = {precision!r} is not allowed for resuming {path.name}, which started with {recorded!r}: "
        f"pass precision={recorded!r}, or train it in another root"
    )


def compile_options(members: int) -> dict:
    """Inductor's options for the step of ``members`` networks, those this torch version knows.

    Combo kernels launch independent small kernels (the parameters' separate gradient
    products, say) as one. That pays where a step is a chain of tiny kernels: on an H100 they
    took 6-8% off the step of one Nanda or Power model and 3% off 4 Power models, nothing off
    16, and 64 took 8% longer. Shape padding is off: inductor decides whether to pad a
    product's operands by timing it while compiling, so one step compiled to different code
    on different loans of one day (230 to 247 µs for Nanda's). Without it, on one H100, in
    two processes each: Nanda's step took 228 µs against 227-230, Power's 414-424 against
    420-433, and the 64-member sweep's 4.50 against 4.50-4.52 ms."""
    import torch._inductor.config as inductor

    options = {"shape_padding": False}
    if members <= 16:
        options["combo_kernels"] = True
    return {key: value for key, value in options.items() if hasattr(inductor, key)}


@functools.cache
def compiled_method(method: Callable, options: tuple[tuple[str, Any], ...]) -> Callable:
    """``torch.compile`` of a trainer's method (called with the trainer first), made once per
    inductor ``options`` and kept for the process's life. Dynamo keeps the compiled code per
    method anyway (on its code object), so every trainer can share the wrapper; making one
    copies inductor's config to check the options against, 12 ms of a warm run's 1.2 s on an
    H100's host."""
    return torch.compile(method, dynamic=False, options=dict(options))


def compile_pays_off(steps: int, members: int) -> bool:
    """Whether torch.compile is likely to save more time than it costs.

    Compiling the step costs 15-40 s with empty caches. On an H100 it saves about 0.35 ms a step
    for one small transformer and about 7 ms a step for 64 of them (benchmarks/speed.py):
    roughly 0.1 ms per member plus 0.25 ms. Against 40 s, that gives about 1e5 steps for one
    model, 6e3 for 64 models, and fewer for larger sweeps. Shorter runs replay uncompiled
    CUDA graphs.
    """
    return steps * (0.1 * members + 0.25) >= 40_000


def compile_metrics_pays_off(evaluations: int, members: int, graphed: bool = True) -> bool:
    """Whether the evaluations (a forward pass over both splits) are worth compiling too.

    On an H100, an evaluation of Nanda's model took 4.7 ms launched op by op, 0.48 ms
    replayed as a CUDA graph (``graphed``, the default on a GPU) and 1.1 ms compiled; of 64
    members of Power's model 61, 59 and 22 ms. So compiling saves about 0.6 ms per member,
    and 4 ms more where there is no graph. It costs 5-17 s with empty caches, about 1.4 s
    from inductor's disk cache; with ~100 evaluations, as most runs make, a 64-member sweep
    started 17 s sooner with uncompiled evaluations. Against 10 s: with graphs, compiled from
    about 170 evaluations of 100 members, never for one model.
    """
    return evaluations * (0.6 * members + (0 if graphed else 4)) >= 10_000  # milliseconds


def cpu_chunk_size(members: int, work: int) -> int | None:
    """How many members the CPU runs as one batched network (None: all of them), given a
    member's weights x examples per step.

    On the CPU, batching members saves only per-operation overhead, small next to a big
    member's step, and it makes every intermediate ``members`` times larger: out of cache, and
    from 32 MiB on (glibc's largest mmap threshold) a fresh mapping at each allocation that the
    kernel page-faults and zeroes. 8 Power members (4e5 weights x 512 examples) took 75k page
    faults a step that way, run one at a time they take none (benchmarks/ensemble_cpu.py).
    """
    chunk = max(1, 2**26 // work)
    return chunk if chunk < members else None


def in_chunks(forward: Callable, chunk: int | None, shared: bool = False) -> Callable[[dict, Tensor], Tensor]:
    """``forward(params, x)`` of stacked members, run ``chunk`` members at a time (None: all);
    ``x`` has a row per member, or is ``shared`` by all. One ``split`` per tensor, not a slice
    per chunk: the backward of each slice would zero-fill a gradient of the whole tensor."""
    if chunk is None:
        return forward

    def chunked(params: dict[str, Tensor], x: Tensor) -> Tensor:
        pieces = zip(*(p.split(chunk) for p in params.values()))
        inputs = itertools.repeat(x) if shared else x.split(chunk)
        return torch.cat([forward(dict(zip(params, piece)), xs) for piece, xs in zip(pieces, inputs)])

    return chunked


def eval_passes(
    evals: dict[str, tuple[Tensor, Tensor]], members: int, join: bool
) -> list[tuple[Tensor, list[tuple[int, int, Tensor]]]]:
    """The forward passes of an evaluation: each pass's example indices, and the splits it
    holds as (first column, end column, weights).

    With ``join`` (on a GPU) the training and validation sets go in one pass: at these sizes
    a GPU pass costs its kernels more than its rows (on an H100, an evaluation of Nanda et
    al.'s model took 0.38 ms in one pass, 0.46 ms in two). On the CPU a pass costs its
    arithmetic, the same either way, while a joined pass's intermediates are twice as large:
    Power et al.'s evaluation took 152-165 ms joined against 138-150 ms apart on 2 cores. A
    validation set that several members share always has a pass of its own, which ``vmap``
    runs as one product for all of them."""
    (train, train_weight), (val, val_weight) = evals["train"], evals["val"]
    n_train, n_val = train.shape[-1], val.shape[-1]
    if not join or (val.dim() == 1 and members > 1):
        return [(train, [(0, n_train, train_weight)]), (val, [(0, n_val, val_weight)])]
    joined = torch.cat([train, val.expand(members, -1)], dim=1)
    return [(joined, [(0, n_train, train_weight), (n_train, n_train + n_val, val_weight)])]


# glibc's mallopt parameters (malloc.h), and the environment through which a user sets them.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


@functools.cache
def keep_freed_heap() -> bool:
    """Make glibc keep freed memory for the next step instead of returning it to the kernel.

    A CPU step allocates and frees the same few MiB every time. With glibc's defaults those
    blocks are mapped afresh or trimmed off the heap on free, so the next step page-faults
    them in again, zeroed: 8 small members took 1-2k minor faults and 4-6 ms of kernel time a
    step, as much as their arithmetic (benchmarks/ensemble_cpu.py). Now blocks under 32 MiB
    (glibc's largest mmap threshold) come from the heap, which is trimmed only when 1 GiB at
    its top is free: the process keeps its peak heap. The setting is process-wide. It is left
    alone where the user tunes malloc through the environment (``MALLOC_*_`` variables or
    ``GLIBC_TUNABLES``) and where the C library is not glibc. Returns whether it was applied.
    """
    user_tuned = any(name in os.environ for name in MALLOC_ENV) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if user_tuned or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    trim = libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    mmap = libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    return bool(trim and mmap)


# -- schedules --------------------------------------------------------------------------


def log_steps(steps: int, n: int) -> list[int]:
    """At most ``n`` integer steps in [0, steps], log-spaced (so dense early): ``steps`` itself,
    0 from n = 2 on, and 1 from n = 3 on."""
    if n <= 0:
        return []
    if n == 1:
        return [steps]
    if n == 2:
        return [0, steps]
    points = np.unique(np.round(np.geomspace(1, steps, num=n - 1)).astype(int))
    return sorted({0, steps, *points.tolist()})


def _every(config: RunConfig, interval: int) -> set[int]:
    return set(range(0, config.steps + 1, interval)) if interval else set()


def eval_schedule(config: RunConfig) -> list[int]:
    steps = set(log_steps(config.steps, config.eval_points))
    steps |= _every(config, config.eval_every) | _every(config, config.checkpoint_every)
    return sorted(steps)


def checkpoint_schedule(config: RunConfig, evals: list[int]) -> list[int]:
    """Checkpoint steps: log-spaced ones snapped to evaluation steps (so each has metrics),
    and every ``checkpoint_every`` steps, the last step too (the trained network)."""
    wanted = log_steps(config.steps, config.checkpoints)
    grid = np.array(evals)
    snapped = {int(grid[np.abs(np.log1p(grid) - math.log1p(w)).argmin()]) for w in wanted}
    every = _every(config, config.checkpoint_every)
    return sorted(snapped | every | ({config.steps} if every else set()))


# -- members and their flat weights -----------------------------------------------------


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    allowed = "use 'auto', 'cpu', 'cuda' or 'cuda:N'"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device = {device!r} is not allowed: {allowed}") from None
    if resolved.type != "cuda" and str(resolved) != "cpu":  # meta, mps, cpu:3: the trainer knows neither
        raise ConfigError(f"device = {device!r} is not allowed: {allowed}")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        found = torch.cuda.device_count() or "no"
        raise ConfigError(f"device = {device!r} is not allowed: torch finds {found} GPU(s) here (use 'auto' or 'cpu')")
    return resolved


def build_member(config: RunConfig, member: dict) -> nn.Module:
    """Member's freshly initialised network (on the CPU, seeded, scaled by init_scale)."""
    with torch.random.fork_rng(devices=[]):
        # The CPU's generator only: torch.manual_seed would also reseed the caller's GPUs.
        torch.random.default_generator.manual_seed(member["seed"])
        model = config.model.build(config.task.model_dims())
    scale = member.get("init_scale", 1.0)
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
    return model


def flatten(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(flat: Tensor, model: nn.Module) -> dict[str, Tensor]:
    """Views of ``flat`` (..., P) shaped as ``model``'s parameters (..., *shape).

    One ``split``, not a slice per parameter: the backward of each slice zero-fills a whole
    (..., P) gradient and autograd adds them all up; the backward of ``split`` is one ``cat``."""
    named = list(model.named_parameters())
    parts = flat.split([p.numel() for _, p in named], dim=-1)
    return {name: part.view(*flat.shape[:-1], *p.shape) for (name, p), part in zip(named, parts)}


def _hash32(x: Tensor) -> Tensor:
    """A 32-bit integer hash, element-wise on int64 (multipliers < 2^31: no overflow)."""
    m = 0xFFFFFFFF
    x = x & m
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & m
    x = ((x ^ (x >> 15)) * 0x5BD1E995) & m
    return x ^ (x >> 16)


# -- the trainer ------------------------------------------------------------------------


class Preempted(Exception):
    """SIGTERM arrived (a SLURM time limit or pre-emption); the state was saved first, or, where
    it came during the last step, the finished run."""


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        device: torch.device,
        cuda_graphs: bool = True,
        torch_compile: bool | None = None,
        precision: str = "tf32",
    ):
        if not isinstance(config.optim, AdamW):
            raise TypeError(f"optim = {type(config.optim).__name__} is not supported by the trainer: use AdamW")
        check_precision(precision)
        self.config = config
        self.device = device
        # Only "bf16" acts here (autocast around the step's forward): TF32 is torch's process-wide
        # switch, which train() sets from the precision and restores.
        self.precision = device_precision(precision, device)
        self.bf16 = self.precision == "bf16"
        self.members = config.members()
        K = len(self.members)
        self.data = config.task.build(self.members, device)
        self.eval_passes = eval_passes(self.data.evals, K, join=device.type == "cuda")

        models = [build_member(config, m) for m in self.members]
        self.flat = torch.stack([flatten(m) for m in models]).to(device).requires_grad_()
        self.base = models[0].to("meta")  # the architecture; weights come from self.flat
        self.opt = EnsembleAdamW(self.flat, config.optim, eps=self._member_values("eps"), **self._group_values())
        self.seeds = torch.tensor([m["seed"] for m in self.members], device=device)
        self.active = torch.ones(K, 1, device=device)
        self.stopped_at = [None] * K

        # Batch sizes: Power et al. use min(512, half the training set), hence the cap.
        counts = self.data.train_count.round().long().tolist()
        if config.batch_size is None and config.max_batch_fraction == 1:
            self.batch = None  # the full batch
            weight = self.data.train_weight
        else:
            cap = math.inf if config.batch_size is None else config.batch_size
            # At most each member's training set (max_batch_fraction <= 1), so at most the
            # padded width that sample_batch draws from.
            sizes = [min(cap, math.ceil(config.max_batch_fraction * n)) for n in counts]
            self.batch = max(sizes)
            weight = (torch.arange(self.batch)[None, :] < torch.tensor(sizes)[:, None]).float().to(device)
        # Each drawn example's part of its member's mean loss (0 for padding): the same every
        # step, so worked out once rather than as a reduction in every step.
        self.share = weight / weight.sum(1, keepdim=True)
        self.step_count = torch.zeros((), dtype=torch.long, device=device)
        # The parts of sample_batch's keys that no step changes, worked out once: each a few
        # kernels of the uncompiled step, 20 of Power et al.'s 735 µs on an H100.
        self.seed_keys = _hash32(self.seeds * 0x9E3779B1 + 0x632BE5AB)
        self.example_keys = torch.arange(self.data.train_idx.shape[1], device=device)[None, :] * 0x85EBCA6B
        self.padding = self.data.train_weight == 0

        # Column ranges of the tracked parameters in the flat weight rows.
        self.tracked = {prefix: self.columns(prefix, "track_norms") for prefix in config.track_norms}
        self.metric_names = list(METRICS) + [f"norm_{prefix}" for prefix in config.track_norms]

        self.use_graph = device.type == "cuda" and cuda_graphs
        self.graph: torch.cuda.CUDAGraph | None = None
        # Steps run eagerly on a side stream before the capture, as a graph's warm-up must.
        # One is enough, since lazy set-up happens at a function's first call. In a new process
        # on an H200, Nanda's and Power's uncompiled steps were captured after one or three; on
        # H100s, Power's replayed to equal weights either way, Nanda's compiled runs reached 99%
        # in as many steps as before, and each warm-up step of Nanda's compiled step took
        # 2.6-8.1 ms of a run's 1.2 s, against 0.24 ms replayed.
        self.warmup_left = 1
        self.graph_evaluations = self.use_graph  # its own flag: one failed capture leaves the other
        self.eval_graph: torch.cuda.CUDAGraph | None = None
        self.eval_out: Tensor | None = None  # what the evaluation graph writes

        examples = self.batch or self.data.train_idx.shape[1]
        chunk = None
        if device.type == "cpu":
            keep_freed_heap()
            chunk = cpu_chunk_size(K, self.flat.shape[1] * examples)
        self._forward, self._forward_shared = self._members_forward(K, chunk)

        # On a GPU, torch.compile fuses the step's many small kernels (about 2x fewer GPU
        # microseconds per step on these models); the CPU runs eagerly (no compiler needed).
        if torch_compile is None:
            torch_compile = compile_pays_off(config.steps, K)
        self.compile_options = compile_options(K) if device.type == "cuda" else {}
        self._set_compiled(device.type == "cuda" and torch_compile)

    def _members_forward(self, K: int, chunk: int | None) -> tuple[Callable, Callable]:
        """Forwards of stacked networks, ``chunk`` at a time (None: all at once): given
        parameters (M, *shape) of the M members in training (K, or fewer once some have
        stopped), one on inputs (M, B, ...) and one on inputs (B, ...) that every member
        shares; both give (M, B, outputs)."""
        members_forward = getattr(self.base, "forward_members", None)
        if members_forward is not None:
            # The model runs stacked members itself, faster than vmap's batching rules would.
            def on_shared(params: dict[str, Tensor], x: Tensor) -> Tensor:
                return members_forward(params, x.expand(len(next(iter(params.values()))), *x.shape))

            return in_chunks(members_forward, chunk), in_chunks(on_shared, chunk, shared=True)
        if K == 1 or chunk == 1:
            # One network needs no vmap, which would make its matrix products batches of one,
            # with their overhead and slower kernels: 7-27% of a step of the small models of
            # benchmarks/ensemble_cpu.py on 2 CPU cores, 9% of Power's uncompiled step on an H100.
            # Members taken one at a time likewise: 8 of Power's took 9.3 times one through vmap.
            one = lambda params, x: self._network({name: p[0] for name, p in params.items()}, x)[None]  # noqa: E731
            return in_chunks(lambda params, x: one(params, x[0]), chunk), in_chunks(one, chunk, shared=True)
        return self._vmapped_forward(chunk)

    def _network(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """One network's forward with the given weights."""
        return functional_call(self.base, params, (x,))

    def _vmapped_forward(self, chunk: int | None) -> tuple[Callable, Callable]:
        """The two forwards of :meth:`_members_forward` through vmap over :meth:`_network`."""
        on_own = vmap(self._network, in_dims=(0, 0), chunk_size=chunk)
        return on_own, vmap(self._network, in_dims=(0, None), chunk_size=chunk)

    def _set_compiled(self, on: bool) -> None:
        """Use compiled (or plain) versions of the step's forward and update, and of the metrics
        where the run evaluates often enough to repay compiling them."""
        self.use_compile = on
        evaluations = len(eval_schedule(self.config))

        def compiled(name, pays_off=True):
            if not (on and pays_off):
                return getattr(self, name)
            options = tuple(sorted(self.compile_options.items()))
            return functools.partial(compiled_method(getattr(type(self), name), options), self)

        self._outputs_fn, self._update_fn = compiled("_outputs_and_gradient"), compiled("_update")
        # The batch's keys are 25 element-wise integer kernels, fused when compiled: Power et
        # al.'s compiled step took 351 µs instead of 393 on an H100. A full batch draws nothing.
        self._sample_fn = compiled("sample_batch", self.batch is not None)
        self.metrics_compiled = on and compile_metrics_pays_off(evaluations, len(self.members), graphed=self.graph_evaluations)
        self._metrics_fn = compiled("_metrics", self.metrics_compiled)

    def columns(self, prefix: str, parameter: str) -> list[tuple[int, int]]:
        """Column ranges, in the flat weight rows, of the parameters named ``prefix`` or inside
        the module it names: "blocks.1" is blocks.1.* but not blocks.10.*."""
        ranges, offset = [], 0
        for name, p in self.base.named_parameters():
            if in_module(name, prefix):
                ranges.append((offset, offset + p.numel()))
            offset += p.numel()
        if not ranges:
            names = ", ".join(n for n, _ in self.base.named_parameters())
            raise ConfigError(f"{parameter} prefix {prefix!r} matches no parameter: parameters are {names}")
        return ranges

    def _member_values(self, key: str) -> Tensor:
        return torch.tensor([float(m[key]) for m in self.members])[:, None]

    def _group_values(self) -> dict[str, Tensor]:
        """lr and weight decay per member, (K, 1); or per member and weight, (K, P), where
        ``optim.groups`` fixes them for some parameters (Liu et al.'s embedding vs decoder)."""
        values = {key: self._member_values(key) for key in ("lr", "weight_decay")}
        if not self.config.optim.groups:
            return values
        columns = {key: v.expand(-1, self.flat.shape[1]).clone() for key, v in values.items()}
        for prefix, overrides in self.config.optim.groups.items():
            for a, b in self.columns(prefix, "optim.groups"):
                for key, value in overrides.items():
                    columns[key][:, a:b] = value
        return columns

    # -- one step -----------------------------------------------------------------------
    def sample_batch(self) -> tuple[Tensor, Tensor]:
        """(K, B) example indices for this step, and each one's share of its member's mean
        loss (0 for padding)."""
        if self.batch is None:
            return self.data.train_idx, self.share
        member_key = _hash32(self.seed_keys ^ self.step_count)
        keys = _hash32(member_key[:, None] ^ self.example_keys).masked_fill(self.padding, 1 << 40)  # padding sorts last
        pos = keys.topk(self.batch, dim=1, largest=False, sorted=True).indices
        return self.data.train_idx.gather(1, pos), self.share

    def _outputs_and_gradient(self, flat: Tensor, idx: Tensor, share: Tensor) -> tuple[Tensor, Tensor]:
        """Every member's outputs on its batch, and the gradient with respect to them of the
        sum over members of each member's mean loss. The backward pass starts from there: a
        step never needs the loss's value (evaluations compute it), and the closed-form
        gradient needs no reduction over the batch: the loss's own two kernels, one such a
        reduction in a single thread block, took 20 of the 245 µs of Nanda's compiled step on
        an H200, and the step took 226 µs without them."""
        x, y = self.data.inputs[idx], self.data.targets[idx]
        # No cast cache: it is not safe in a CUDA graph's capture, and the step casts each weight once anyway.
        # (Entering a disabled autocast costs a few µs of every eager step: hence the null context.)
        bf16 = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if self.bf16 else contextlib.nullcontext()
        with bf16:
            outputs = self._forward(unflatten(flat, self.base), x)
        outputs = outputs.float()  # the loss's gradient from float32 logits (a no-op unless bf16)
        with torch.no_grad():
            gradient = loss_gradient(self.data.loss, outputs, y) * share[..., None]
        return outputs, gradient

    def _step(self) -> None:
        """One update of every member: only device work, no host sync (graph-capturable)."""
        idx, share = self._sample_fn()
        rows = self._training_rows()
        if rows is not None and not len(rows):  # every member has stopped
            self.step_count += 1
            return
        if rows is None:
            outputs, gradient = self._outputs_fn(self.flat, idx, share)
        else:  # only the members still training run forward and backward
            outputs, gradient = self._outputs_fn(self.flat[rows], idx[rows], share[rows])
        (grad,) = torch.autograd.grad(outputs, self.flat, gradient)
        self._update_fn(grad, self.active)

    def _update(self, grad: Tensor, active: Tensor) -> None:
        """The optimiser's update and the step count's, in one compiled function: counted
        outside it, the count took a kernel of its own (1.6 µs of Nanda's step on an H100)."""
        self.opt.step(grad, active)
        self.step_count += 1

    def _training_rows(self) -> Tensor | None:
        """On the CPU, once members have stopped (``stop_at``), the rows of those still
        training, so that a stopped member takes no forward or backward work; None: every
        row. A GPU step keeps every member: fixed shapes keep its CUDA graph and compiled code
        valid, and a GPU runs a few members more in about the same time anyway."""
        if self.device.type != "cpu" or all(s is None for s in self.stopped_at):
            return None
        return torch.tensor([k for k, s in enumerate(self.stopped_at) if s is None], dtype=torch.long)

    def _compile_failed(self, error: Exception) -> None:
        """Fall back after a failed compile: first to compiling without combo kernels
        (inductor's least tried part; shape padding stays off), then to running uncompiled."""
        failure = f"torch.compile failed ({type(error).__name__}: {error})"
        if "combo_kernels" in self.compile_options:
            warnings.warn(f"{failure}; compiling again without combo_kernels", stacklevel=3)
            self.compile_options = {k: v for k, v in self.compile_options.items() if k != "combo_kernels"}
            self._set_compiled(True)
        else:
            warnings.warn(f"{failure}; training without it", stacklevel=3)
            self._set_compiled(False)

    def _warm_step(self) -> None:
        """A step that falls back (``_compile_failed``) if compiling fails: compilation runs,
        and fails, before the compiled code touches any state."""
        while True:
            try:
                return self._step()
            except Exception as error:  # a torch version or platform whose compiler fails here
                if not self.use_compile:
                    raise
                self._compile_failed(error)

    def train_step(self) -> None:
        """One update. On a GPU the step is captured once as a CUDA graph and replayed: a
        step of these small models is otherwise all kernel-launch overhead."""
        if self.graph is not None:
            self.graph.replay()
            return
        if not self.use_graph:
            self._warm_step()
            return
        self.warmup_left -= 1
        if self.warmup_left >= 0:
            self._on_side_stream(self._warm_step)
            return
        captured = self._capture(self._step, "training")
        if captured is None:
            self.use_graph = False
            self._step()
            return
        self.graph = captured[0]
        self.graph.replay()  # capture records the step without running it

    def _on_side_stream(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on a side stream, as a CUDA graph's warm-up must (allocations, library handles)."""
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            out = fn()
        current.wait_stream(side)
        return out

    def _capture(self, fn: Callable[[], Any], what: str) -> tuple[torch.cuda.CUDAGraph, Any] | None:
        """``fn`` recorded as a CUDA graph, with what it returned; None, with a warning, where
        this torch version cannot capture one of its ops (the caller then runs eagerly)."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = fn()
        except Exception as error:
            warnings.warn(f"CUDA graph capture failed ({type(error).__name__}: {error}); {what} without graphs", stacklevel=3)
            return None
        return graph, out

    @torch.no_grad()
    def evaluate(self) -> Tensor:
        """(K, len(self.metric_names)) metrics of every member now."""
        while self.metrics_compiled:
            try:
                return self._metrics_fn(self.flat.detach())
            except Exception as error:  # see _warm_step
                self._compile_failed(error)
        if self.graph_evaluations:
            return self._graphed_metrics()
        return self._metrics(self.flat.detach())

    def _graphed_metrics(self) -> Tensor:
        """The uncompiled metrics replayed as one CUDA graph: launched one by one from Python,
        their hundred or so kernels take a few milliseconds, several times their GPU time."""
        if self.eval_graph is None:
            metrics = lambda: self._metrics(self.flat.detach())  # noqa: E731
            self._on_side_stream(metrics)
            captured = self._capture(metrics, "evaluating")
            if captured is None:
                self.graph_evaluations = False
                return metrics()
            self.eval_graph, self.eval_out = captured
        self.eval_graph.replay()
        return self.eval_out.clone()

    def _metrics(self, flat: Tensor) -> Tensor:
        params = unflatten(flat, self.base)
        out = []
        for idx, splits in self.eval_passes:
            x, y = self.data.inputs[idx], self.data.targets[idx]
            logits = self._forward_shared(params, x) if idx.dim() == 1 else self._forward(params, x)
            if idx.dim() == 1:
                y = y.expand(logits.shape[0], -1)
            losses, corrects = per_example(self.data.loss, logits, y)
            for a, b, weight in splits:  # training then validation, as METRICS lists them
                loss, correct = losses[:, a:b], corrects[:, a:b]
                total = weight.sum(1)
                # The fraction correct in float64, so that 9 of 10 is 0.9 in the history, as it
                # is to stop_at; float32 would store 0.8999999762, below a threshold of 0.9.
                accuracy = (correct * weight).sum(1).double() / total.double()
                out += [((loss * weight).sum(1) / total).double(), accuracy]
        out.append(flat.norm(dim=1).double())
        for ranges in self.tracked.values():
            out.append(torch.cat([flat[:, a:b] for a, b in ranges], dim=1).norm(dim=1).double())
        return torch.stack(out, dim=1)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "flat": self.flat.detach().cpu(),
            "opt": {k: v.cpu() for k, v in self.opt.state_dict().items()},
            "active": self.active.cpu(),
            "stopped_at": self.stopped_at,
            "step": int(self.step_count),
        }

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.flat.copy_(state["flat"])
        self.opt.load_state_dict(state["opt"])
        self.active.copy_(state["active"])
        self.stopped_at = list(state["stopped_at"])
        self.step_count.fill_(state["step"])


#: In "log" mode, the least time between two progress lines.
LOG_EVERY_S = 60.0


def _time_left(done: int, seconds: float, left: int) -> str:
    """"; about 12 min left" at this process's pace so far (members that stop early make it
    sooner), or nothing before a step has been timed or after the last."""
    if done <= 0 or left <= 0:
        return ""
    eta = seconds / done * left
    return "; about " + (f"{eta:.0f} s" if eta < 90 else f"{eta / 60:.0f} min" if eta < 5400 else f"{eta / 3600:.1f} h") + " left"


def _progress_mode(progress: bool | None) -> str:
    """"bar" (tqdm), "off", or "log": a plain line on the process's own stderr at an
    evaluation at most every ``LOG_EVERY_S``, for notebooks run headless (a SLURM log), where
    a cell's output shows only when the cell ends and would put the lines into the page.
    ``progress`` decides where given; else ``GROKCORE_PROGRESS`` (0, 1 or log; default 1)."""
    if progress is not None:
        return "bar" if progress else "off"
    modes = {"0": "off", "1": "bar", "log": "log"}
    value = os.environ.get("GROKCORE_PROGRESS", "1")
    if value not in modes:
        raise ConfigError(f"GROKCORE_PROGRESS = {value!r} is not allowed: must be 0 (none), 1 (bars) or log (lines)")
    return modes[value]


def train(
    config: RunConfig,
    *,
    device: str | torch.device = "auto",
    until: int | None = None,
    progress: bool | None = None,
    root: Path | None = None,
    save_every_s: float = 120.0,
    cuda_graphs: bool = True,
    torch_compile: bool | None = None,
    precision: str = "tf32",
) -> Run:
    """Train ``config`` (or load it if finished, or resume it if unfinished) and return the run.

    ``until`` stops after that many steps without finishing the run (a later call resumes).
    A KeyboardInterrupt or SIGTERM saves the state first, at the end of the step under way, so
    nothing is lost; a second Ctrl-C stops at once (a long first step: compiling), and it, or a
    crash that gives no warning (kill -9, a lost node), loses at most ``save_every_s`` seconds. On a GPU,
    ``torch_compile`` fuses the step's kernels (15-40 s of compiling with empty caches;
    None: where :func:`compile_pays_off`; the evaluations too where
    :func:`compile_metrics_pays_off`), ``cuda_graphs`` replays each step as one CUDA
    graph, and ``precision`` says how matrix products are computed (:data:`PRECISIONS`):
    "tf32" by default (about 1e-3 relative error per product; over 64 seeds of Nanda et al.'s
    setting it reached 99% neither detectably earlier nor later than exact float32, 28 seeds
    later and 33 earlier: ``benchmarks/precision_seeds.py --precisions fp32,tf32``), "fp32"
    exactly (one model's compiled step there took 1.6 times TF32's), "bf16" faster a step
    (Nanda et al.'s compiled step took 161-166 µs on H100s, against TF32's 226-231) but later to
    grok (a median 14% more steps to 99% over 64 seeds) and with 8 significant bits, which can
    matter where tiny losses do (the slingshots of Thilak et al.).
    None of them is part of the config's hash; config.json records the precision a run started
    with, and a run started in bf16 is not resumed in another precision, nor the other way round
    (a finished one is returned with a warning).

    A stop asked for during the run's last step (SIGTERM, Ctrl-C) lets the run finish and
    write its results, then raises, so that a caller's loop of runs stops too.
    """
    if until is not None and (isinstance(until, bool) or not isinstance(until, numbers.Integral) or until < 0):
        raise ConfigError(f"until = {until!r} is not allowed: must be a whole number of steps >= 0, or None")
    if isinstance(save_every_s, bool) or not isinstance(save_every_s, numbers.Real) or not save_every_s >= 0:
        raise ConfigError(f"save_every_s = {save_every_s!r} is not allowed: must be a number of seconds >= 0 (inf: never)")
    if not isinstance(config, RunConfig):
        raise ConfigError(f"config = {type(config).__name__} is not allowed: must be a grokcore.RunConfig")
    for name, value in (("progress", progress), ("torch_compile", torch_compile), ("cuda_graphs", cuda_graphs)):
        if not (isinstance(value, bool) or (value is None and name != "cuda_graphs")):
            allowed = "True or False" + ("" if name == "cuda_graphs" else ", or None (decided for you)")
            raise ConfigError(f"{name} = {value!r} is not allowed: must be {allowed}")
    check_precision(precision)
    mode = _progress_mode(progress)
    dev = resolve_device(device)
    path = run_path(config, root)
    if (path / "DONE").exists():
        _check_same_precision(path, precision, dev, finished=True)
        return Run(path)
    with _matmul_precision(precision), exclusive(path):
        if not (path / "DONE").exists():  # another process may have finished it since our first look
            if (path / "state.pt").exists():
                _check_same_precision(path, precision, dev, finished=False)
            trainer = Trainer(config, dev, cuda_graphs=cuda_graphs, torch_compile=torch_compile, precision=precision)
            _fit(trainer, path, until=until, progress=mode, save_every_s=save_every_s)
    return Run(path)


@contextlib.contextmanager
def _matmul_precision(precision: str):
    """torch's process-wide TF32 switch set for ``precision`` (bf16 too: its evaluations'
    products), and restored after."""
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


def trace_output_layer(
    config: RunConfig,
    *,
    every: int = 50,
    layer: str = "unembed",
    device: str | torch.device = "auto",
    precision: str = "tf32",
    progress: bool | None = None,
):
    """Train ``config`` afresh, storing nothing, and record every ``every`` steps how each
    member's output layer splits into the part common to every output, which no softmax sees,
    and the rest (:func:`~grokcore.measures.common_output_split`): of its weights, of the
    gradient of the step just taken, and of the step itself (Adam's update, weight decay
    included). The step's parts are fractions of a full-sized step, each weight moved by its
    learning rate, all one way; Adam's division by each weight's own running gradient size
    can make a consistent but tiny gradient move weights that far. The run store keeps
    neither gradients nor steps: this trains again, with the run's own trainer, to see them.

    Returns a DataFrame: member, the member's seed and swept values, step, the training loss
    after the step (this run's own: on a GPU a run drifts from a stored run of the same
    config), then ``{weight,gradient,step}_{common,rest}``. ``layer`` names one (outputs,
    width) weight (``"unembed"``: the transformers' last layer). The gradient is read back
    from Adam's first moment, which the step moved a (1 - beta1) part of the way to it; in
    float32 that resolves a common part down to about 1e-7 of the rest. Every member trains
    every step (``stop_at`` stops none), and ``device``, ``precision`` and ``progress`` are
    as for :func:`train`."""
    import pandas as pd  # a notebook-side table; the training loop itself needs no pandas

    if not isinstance(config, RunConfig):
        raise ConfigError(f"config = {type(config).__name__} is not allowed: must be a grokcore.RunConfig")
    if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
        raise ConfigError(f"every = {every!r} is not allowed: must be a whole number of steps >= 1")
    if not (isinstance(progress, bool) or progress is None):
        raise ConfigError(f"progress = {progress!r} is not allowed: must be True or False, or None (decided for you)")
    check_precision(precision)
    mode = _progress_mode(progress)
    dev = resolve_device(device)
    with _matmul_precision(precision), contextlib.ExitStack() as stack:
        trainer = Trainer(config, dev, precision=precision)
        named = dict(trainer.base.named_parameters())
        (lo, hi), *more = trainer.columns(layer, "layer")
        shape = next(p.shape for name, p in named.items() if in_module(name, layer))
        if more or len(shape) != 2:
            raise ConfigError(f"layer = {layer!r} is not allowed: it must name one (outputs, width) weight, "
                              f"and names {[name for name in named if in_module(name, layer)]} (name the weight itself, "
                              f"e.g. {layer + '.weight'!r})")
        beta1 = trainer.opt.beta1
        swept = ["seed", *config.sweep]
        rows = []
        what, logged_at, t0 = f"tracing {config.run_name}", -math.inf, time.perf_counter()
        if mode == "bar":
            from tqdm.auto import tqdm

            bar = stack.enter_context(tqdm(total=config.steps, desc=what, unit="step", leave=False))
        for step in range(1, config.steps + 1):
            traced = step % every == 0 or step == config.steps
            if traced:
                weights = trainer.flat.detach()[:, lo:hi].clone()
                moment = trainer.opt.exp_avg[:, lo:hi].clone()
                lr = trainer.opt.lr_now().expand_as(trainer.flat)[:, lo:hi]
            trainer.train_step()
            if not traced:
                continue
            after = trainer.flat.detach()[:, lo:hi]
            gradient = (trainer.opt.exp_avg[:, lo:hi] - beta1 * moment) / (1 - beta1)
            losses = trainer.evaluate()[:, METRICS.index("train_loss")].tolist()
            for k, member in enumerate(trainer.members):
                full = lr[k].double().norm().item() or math.nan  # 0 at the warm-up's first step
                parts = {"weight": after[k], "gradient": gradient[k], "step": after[k] - weights[k]}
                row = {"member": k, **{key: member[key] for key in swept}, "step": step, "train_loss": losses[k]}
                for part, values in parts.items():
                    common, rest = common_output_split(values.reshape(shape))
                    scale = full if part == "step" else 1.0
                    row[f"{part}_common"], row[f"{part}_rest"] = common / scale, rest / scale
                rows.append(row)
            if mode == "bar":
                bar.update(step - bar.n)
            elif mode == "log" and time.perf_counter() - logged_at >= LOG_EVERY_S:
                logged_at = time.perf_counter()
                seconds = logged_at - t0
                print(f"{what}: step {step:,} of {config.steps:,} ({seconds:.0f} s{_time_left(step, seconds, config.steps - step)})",
                      file=sys.__stderr__ or sys.stderr, flush=True)
    return pd.DataFrame(rows)


def _fit(trainer: Trainer, path: Path, *, until: int | None, progress: str, save_every_s: float) -> None:
    config = trainer.config
    K = len(trainer.members)
    evals = eval_schedule(config)
    checkpoints = set(checkpoint_schedule(config, evals))
    eval_set = set(evals)

    rows: list[list] = []
    wall_offset = 0.0
    evaluated = -1  # the last step whose metrics are in rows
    state_file = path / "state.pt"
    if state_file.exists():
        state = torch.load(state_file, map_location="cpu", weights_only=False)
        trainer.load_state_dict(state["trainer"])
        rows, wall_offset, evaluated = state["rows"], state["wall"], state["evaluated"]
        # Checkpoints after the saved state are from a run that was lost before its next save:
        # the resumed run writes its own (on a GPU, where members may stop at other steps, a
        # stale one could outlive it and be taken for the last).
        for later in Run(path).checkpoint_steps:
            if later > int(trainer.step_count):
                checkpoint_file(path, later).unlink()
    else:
        # A fresh start where an attempt was lost before its first save: that attempt's
        # checkpoints and history go (members that stop sooner this time would leave a later
        # checkpoint behind, to be taken for the run's last).
        for stale in [*(path / "checkpoints").glob("step_*.pt"), path / "history.csv"]:
            stale.unlink(missing_ok=True)
        meta = {
            "config": config.to_dict(),
            "hash": config.hash(),
            "code": code_version(),
            "torch": torch.__version__,
            "device": str(trainer.device) + (f" ({torch.cuda.get_device_name(trainer.device)})" if trainer.device.type == "cuda" else ""),
            "precision": trainer.precision,  # of the matrix products
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(path / "config.json", json.dumps(meta, indent=2))

    start_step = int(trainer.step_count)
    t0 = time.perf_counter()
    last_save = t0

    def wall() -> float:
        return wall_offset + time.perf_counter() - t0

    def save_state() -> None:
        state = {"trainer": trainer.state_dict(), "rows": rows, "wall": wall(), "evaluated": evaluated}
        atomic_torch_save(state, state_file)
        write_history(path, trainer, rows)

    def save_checkpoint(step: int) -> None:
        checkpoint = {"flat": trainer.flat.detach().cpu().clone(), "step": step}
        atomic_torch_save(checkpoint, checkpoint_file(path, step))

    bar = None
    logged_at = -math.inf
    if progress == "bar":
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start_step, desc=config.run_name, unit="step", leave=False)

    # Signals only raise a flag; the loop saves and stops at the next step boundary, so a
    # saved state is never torn half-way through an update. A step can take long (the first
    # one compiles for up to a minute), so a second Ctrl-C stops at once, saving nothing.
    requested: list[type[BaseException]] = []

    def on_signal(signum, frame, exc):
        if exc is KeyboardInterrupt and KeyboardInterrupt in requested:
            raise KeyboardInterrupt(f"stopped at once by a second Ctrl-C, without saving: the run resumes from its last saved state in {path}, if any")
        requested.append(exc)
        if exc is KeyboardInterrupt:  # os.write: print() could re-enter a write that this signal interrupted
            with contextlib.suppress(OSError):  # no stderr (a daemon): the stop goes on regardless
                os.write(2, b"\nStopping after this step, to save the run; Ctrl-C again stops at once.\n")

    handlers = {}
    if _in_main_thread():
        for sig, exc in ((signal.SIGTERM, Preempted), (signal.SIGINT, KeyboardInterrupt)):
            handlers[sig] = signal.signal(sig, functools.partial(on_signal, exc=exc))

    try:
        step = start_step
        while True:
            if step in eval_set and step > evaluated:
                metrics = trainer.evaluate().cpu()  # the one host sync, at evaluations only
                # Read once into Python floats: the GPU is idle until the next step is launched,
                # so indexing tensors member by member here would be pure delay.
                values = metrics.tolist()
                evaluated = step
                elapsed = wall()
                for k in range(K):
                    if trainer.stopped_at[k] is None:
                        rows.append([k, step, *values[k], elapsed])
                if config.stop_at is not None:
                    val_acc = METRICS.index("val_acc")
                    for k in range(K):
                        if trainer.stopped_at[k] is None and values[k][val_acc] >= config.stop_at:
                            trainer.stopped_at[k] = step
                            trainer.active[k] = 0.0
                if step in checkpoints:
                    save_checkpoint(step)
                if bar is not None:
                    bar.n = step
                    bar.set_postfix(
                        train_acc=f"{metrics[:, 1].mean():.3f}", val_acc=f"{metrics[:, 3].mean():.3f}", refresh=False
                    )
                    bar.refresh()
                elif progress == "log" and time.perf_counter() - logged_at >= LOG_EVERY_S:
                    logged_at = time.perf_counter()
                    log = sys.__stderr__ or sys.stderr  # the process's own: a kernel's goes to the command's log
                    print(
                        f"{config.run_name}: step {step:,} of {config.steps:,}, mean of {K} member(s): "
                        f"train_acc {metrics[:, 1].mean():.3f}, val_acc {metrics[:, 3].mean():.3f} "
                        f"({elapsed:.0f} s{_time_left(step - start_step, logged_at - t0, config.steps - step)})",
                        file=log,
                        flush=True,
                    )
            if step >= config.steps:
                break
            if all(s is not None for s in trainer.stopped_at):
                if checkpoints and step not in checkpoints:  # keep the networks as they stopped
                    save_checkpoint(step)
                break
            if (until is not None and step >= until) or requested:
                save_state()
                if requested:
                    raise requested[0](f"stopped at step {step}; state saved in {path}")
                return
            # Checked every step: late in a run, log-spaced evaluations are far apart.
            if time.perf_counter() - last_save > save_every_s:
                save_state()
                last_save = time.perf_counter()
            trainer.train_step()
            step += 1
    finally:
        if bar is not None:
            bar.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    write_history(path, trainer, rows)
    atomic_write_text(path / "DONE", f"{wall():.3f} s\n")
    state_file.unlink(missing_ok=True)  # the finished run keeps its checkpoints, not the resume state
    print(f"trained {config.run_name}: {step} steps x {K} member(s) in {wall():.1f} s on {trainer.device}")
    if requested:  # asked to stop during the last step: the run is done, but a caller's loop of runs must stop too
        raise requested[0](f"stopped after finishing {config.run_name} (saved in {path})")


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def write_history(path: Path, trainer: Trainer, rows: list[list]) -> None:
    """history.csv: a row per member and evaluation, by member and step, with the member's
    seed and swept values beside its metrics. Written with the csv module, which pandas
    reads back to the same table: pandas took 18 ms to build it for a run of 116
    evaluations on the GPU machine's host, part of the time every run is timed by. A
    diverged metric is written as nan (pandas wrote an empty field; both read back as NaN)."""
    swept = ["seed", *trainer.config.sweep]
    values = [[member[key] for key in swept] for member in trainer.members]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["member", *swept, "step", *trainer.metric_names, "wall_time"])
    for member, *rest in sorted(rows, key=lambda row: (row[0], row[1])):
        writer.writerow([member, *values[member], *rest])
    atomic_write_text(path / "history.csv", text.getvalue())

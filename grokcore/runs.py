"""The run store: one folder per resolved config, named by its content hash.

::

    runs/<name>-<hash>/
        config.json        the resolved config, the code version, when and where it ran
        history.csv        one row per (member, evaluation step)
        checkpoints/       step_0000123.pt: every member's weights at log-spaced steps
        state.pt           everything needed to resume (weights, optimiser, step, history; batches
                           come from a hash of (seed, step), so there is no RNG state)
        DONE               written last: the run is finished and is never retrained

Every file is written atomically (a temporary file, then ``os.replace``), so a crash
leaves either the old file or the new one. The root is ``$GROKCORE_RUNS`` if set, else
``runs/`` in the book's root folder (the nearest parent with a ``_toc.yml``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import subprocess
import tempfile
import time
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from grokcore.config import RunConfig, Spec
from grokcore.measures.curves import first_step


def runs_root(start: Path | None = None) -> Path:
    """The run store: $GROKCORE_RUNS (a relative one from the current folder), else runs/
    beside the _toc.yml of ``start`` (default: the current folder) or of a folder above it."""
    env = os.environ.get("GROKCORE_RUNS")
    if env:
        return Path(env).expanduser().resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").exists():
            return folder / "runs"
    return here / "runs"


def run_path(config: RunConfig, root: Path | None = None) -> Path:
    return (Path(root) if root else runs_root()) / config.run_name


# -- atomic writes ----------------------------------------------------------------------


def _umask() -> int:
    """The process's umask, read from /proc on Linux: the portable way, setting it to read
    it, leaves it 0 for an instant, in which another thread's new files are world-writable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _make_folders(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; runs are shared on clusters
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make a rename (or a new entry) durable: until its folder is synced, a power loss may bring
    back the old file (whole, but older), or lose a new one. Some file systems cannot sync a
    folder, and a folder may not be readable; the rename stands there. A failed sync (EIO) is
    an error."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _make_folders(folder: Path) -> None:
    """``folder`` and any missing parents, each synced into its parent."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    if missing:
        missing[0].mkdir(parents=True, exist_ok=True)
    for made in reversed(missing):
        _fsync_folder(made.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def exclusive(path: Path):
    """Hold the run folder's lock: two processes never train the same run at once. A folder
    made here that holds nothing but the lock when the body fails (a config that only the
    network can refuse) is removed, so that a failed start leaves no empty run behind."""
    made = not path.exists()
    _make_folders(path)
    lock = path / ".lock"
    try:
        with open(lock, "w") as f:
            # A second's grace: `python -m grokcore runs` holds the lock for an instant to see
            # whether anyone trains here.
            for attempt in range(20):
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 19:
                        made = False
                        raise RuntimeError(
                            f"another process is training {path} (its lock is held); wait for it or kill it"
                        ) from None
                    time.sleep(0.05)
            # A writer killed mid-write (kill -9, a lost node) leaves its temporary file behind,
            # as large as the state it was writing; no writer can be busy while we hold the lock.
            for stale in (*path.glob(".*.tmp"), *path.glob("checkpoints/.*.tmp")):
                with contextlib.suppress(OSError):  # another user's, in a shared store: left alone
                    stale.unlink()
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    except BaseException:
        # After unlocking and closing; the body's error, not a clean-up's, is what the caller sees.
        if made and [p.name for p in path.iterdir()] == [lock.name]:
            with contextlib.suppress(OSError):
                lock.unlink()
                path.rmdir()
        raise


def code_version(checkout: Path | None = None) -> str:
    """grokcore's version and, inside a git checkout, the commit (recorded, not hashed), with
    ``-dirty`` where tracked files differ from it: the run's code is then not that commit's."""
    from grokcore import __version__

    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=7", "--exclude=*"],
            cwd=checkout or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


# -- reading a run ----------------------------------------------------------------------


def checkpoint_file(run: Path, step: int) -> Path:
    """Where a run keeps every member's weights at ``step``."""
    return Path(run) / "checkpoints" / f"step_{step:07d}.pt"


class Run:
    """A finished (or partial) run read from the store."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta = json.loads((self.path / "config.json").read_text())
        self.meta = meta
        self.config: RunConfig = Spec.from_dict(meta["config"])  # type: ignore[assignment]
        self.members: list[dict] = self.config.members()

    def __repr__(self) -> str:
        state = "done" if self.done else "unfinished"
        return f"Run({self.path.name}, {len(self.members)} member(s), {state})"

    @property
    def done(self) -> bool:
        return (self.path / "DONE").exists()

    @cached_property
    def history(self) -> pd.DataFrame:
        return pd.read_csv(self.path / "history.csv")

    @property
    def checkpoint_steps(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in (self.path / "checkpoints").glob("step_*.pt"))

    def flat_params(self, step: int) -> torch.Tensor:
        """Every member's weights at ``step``: a (K, P) tensor."""
        return torch.load(checkpoint_file(self.path, step), map_location="cpu")["flat"]

    def model(self, step: int | None = None, member: int = 0) -> nn.Module:
        """Member ``member``'s network at checkpoint ``step`` (default: the last)."""
        from grokcore.train import build_member, unflatten

        steps = self.checkpoint_steps
        if not steps:
            raise FileNotFoundError(f"{self.path} has no checkpoints")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise ValueError(f"step = {step} has no checkpoint: must be one of {steps}")
        if not 0 <= member < len(self.members):
            raise ValueError(f"member = {member} is not allowed: this run has members 0 to {len(self.members) - 1}")
        model = build_member(self.config, self.members[member])
        flat = self.flat_params(step)[member]
        model.load_state_dict(unflatten(flat, model), strict=False)
        return model.eval()


def load(config: RunConfig, root: Path | None = None) -> Run | None:
    """The finished run of ``config``, or None if it has not finished."""
    path = run_path(config, root)
    return Run(path) if (path / "DONE").exists() else None


def summary(root: Path | None = None) -> pd.DataFrame:
    """One row per run in the store: what it trains, how far it got, and where it ended.

    ``status`` is ``done``, ``training`` (a process holds its lock now), ``stopped`` (it has
    saved state to resume from), ``empty`` (nothing saved yet) or ``unreadable: ...``. ``step``
    is the last evaluated step (a stopped run resumes from the step it saved, which may be
    later), and the metrics are the mean over members at each member's last evaluation; ``reached_99`` counts
    the members whose validation accuracy ever reached 0.99."""
    root = Path(root) if root else runs_root()
    rows = []
    for path in sorted(p for p in root.glob("*") if (p / "config.json").exists()):
        try:
            rows.append(_summary_row(path))
        except (OSError, ValueError, KeyError, TypeError) as e:  # a run this grokcore cannot read
            rows.append({"run": path.name, "status": f"unreadable: {type(e).__name__}: {e}"})
    return pd.DataFrame(rows)


def _summary_row(path: Path) -> dict:
    run = Run(path)
    history = pd.read_csv(path / "history.csv") if (path / "history.csv").exists() else pd.DataFrame()
    last = history.groupby("member").tail(1) if "member" in history else history

    def mean(column: str) -> float | None:
        return last[column].mean() if column in last and len(last) else None

    wall = (path / "DONE").read_text().split() if run.done else []
    return {
        "run": path.name,
        "status": "done" if run.done else _unfinished_status(path),
        "members": len(run.members),
        "step": int(last["step"].max()) if "step" in last and len(last) else None,
        "steps": run.config.steps,
        "train_acc": mean("train_acc"),
        "val_acc": mean("val_acc"),
        "reached_99": int(first_step(history, "val_acc", 0.99).notna().sum()) if "val_acc" in history else None,
        "wall_s": float(wall[0]) if wall else None,  # DONE is written last and may still be empty
        "created": run.meta.get("created"),
        "code": run.meta.get("code"),
        "device": run.meta.get("device"),
    }


def _unfinished_status(path: Path) -> str:
    """``training`` if a process holds the run's lock (tested by taking it for an instant)."""
    try:
        with open(path / ".lock") as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
    except BlockingIOError:
        return "training"
    except OSError:  # no lock file (it never trained here), or one we may not read
        pass
    return "stopped" if (path / "state.pt").exists() else "empty"

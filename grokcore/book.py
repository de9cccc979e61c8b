"""Execute the book's notebooks with papermill for a preset, then build the HTML book.

``parameters/<chapter>/<notebook>/<preset>.yaml`` holds each preset; the notebook's own
``parameters`` cell is the ``ci`` preset. Executed notebooks go to
``_build/executed/<preset>/book/<chapter>/<notebook>.ipynb``, only once they have run to the
end (a failed one goes beside it, as ``<notebook>.failed.ipynb``; one run with parameters
changed on the command line goes to ``_build/executed/<preset>-custom/``, as
``<notebook>-<hash of the changes>.ipynb``). The book is built
from a staged copy of the sources in which every notebook is replaced by its executed version.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from grokcore import runs

PRESETS = ("ci", "cpu", "paper")


class BookError(RuntimeError):
    pass


class Terminated(Exception):
    """SIGTERM arrived while a notebook ran (a SLURM time limit, a pre-emption, ``kill``)."""


def project_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").exists():
            return folder
    raise BookError(f"no _toc.yml in {here} or its parents: run this from the book's repository")


def toc_files(root: Path) -> list[str]:
    """Every file of ``_toc.yml`` in reading order, without suffix."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    out: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                out.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []):
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    out.append(toc["root"])
    walk({k: v for k, v in toc.items() if k != "root"})
    return out


def notebooks(root: Path) -> list[Path]:
    """The notebooks of the book (``book/<chapter>/<name>.ipynb``), in table-of-contents order."""
    return [root / f"{f}.ipynb" for f in toc_files(root) if (root / f"{f}.ipynb").exists()]


def select(root: Path, only: list[str] | None = None) -> list[Path]:
    """The book's notebooks whose path contains one of ``only`` (all of them without it), in
    table-of-contents order.

    A key that matches nothing is an error rather than a smaller selection: it is a typo.
    """
    every = notebooks(root)
    if not only:
        return every
    names = [str(nb.relative_to(root)) for nb in every]
    missing = [key for key in only if not any(key in name for name in names)]
    if missing:
        raise BookError(
            f"--only {', '.join(map(repr, missing))} matches no notebook; the notebooks are: {', '.join(names)}"
        )
    return [nb for nb, name in zip(every, names) if any(key in name for key in only)]


class _ParameterLoader(yaml.SafeLoader):
    """YAML as papermill's -y reads it, except that 1e-3 and -.5 are numbers, as in YAML 1.2
    (1.1 wants 1.0e-3, and takes .5 but not -.5); quoted, "1e-3" stays a string."""


_ParameterLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?([0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+|\.[0-9][0-9_]*([eE][-+]?[0-9]+)?)$"),
    list("-+.0123456789"),
)


def parameter_values(text: str, source: str):
    """Parameter values written in YAML, as preset files and ``-p`` give them: "3" is an int,
    "1e-3" a float, "[0.3, 0.5]" a list. A mistake is a BookError that names ``source``."""
    try:
        return yaml.load(text, Loader=_ParameterLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise BookError(f"{source} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def preset_file(root: Path, notebook: Path, preset: str) -> Path:
    rel = notebook.resolve().relative_to(root / "book").with_suffix("")
    return root / "parameters" / rel / f"{preset}.yaml"


def declared_parameters(notebook: Path) -> dict:
    import papermill

    return dict(papermill.inspect_notebook(str(notebook)))


def preset_parameters(root: Path, notebook: Path, preset: str, overrides: dict | None = None) -> dict:
    """The preset's values, checked against the names the notebook declares."""
    if preset not in PRESETS:
        raise BookError(f"preset = {preset!r} is not allowed: must be one of {', '.join(PRESETS)}")
    path = preset_file(root, notebook, preset)
    if not path.exists():
        raise BookError(
            f"{notebook.relative_to(root)} has no {preset!r} preset: {path.relative_to(root)} is missing (each notebook has "
            f"{', '.join(p + '.yaml' for p in PRESETS)} in {path.parent.relative_to(root)}, setting the same parameters; "
            "ci.yaml repeats the notebook's parameters cell)"
        )
    source = str(path.relative_to(root))
    values = parameter_values(path.read_text(), source)
    if values is None:  # an empty file: the notebook's own values
        values = {}
    if not isinstance(values, dict):
        raise BookError(f"{source} must map parameter names to values (name: value), not be a {type(values).__name__}")
    if not all(isinstance(name, str) for name in values):
        raise BookError(f"{source} must map parameter names to values: {sorted(map(repr, values))} are not all names")
    values.update(overrides or {})
    declared = declared_parameters(notebook)
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise BookError(
            f"unknown parameter {', '.join(map(repr, unknown))} for {notebook.relative_to(root)}; "
            f"allowed: {', '.join(declared)}"
        )
    for name, value in values.items():
        default = _literal(declared[name]["default"])
        try:
            values[name] = _as_declared(value, default)
        except ValueError as e:
            raise BookError(
                f"{name} = {value!r} is not allowed for {notebook.relative_to(root)}: {e}, "
                f"as its default {declared[name]['default']} is"
            ) from None
    return values


def _literal(text: str):
    """A parameter's default as a Python value; None where it is not a literal."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


def _as_declared(value, default):
    """``value`` as the notebook's ``default`` means it, or a ValueError saying what it must be.

    What a notebook would otherwise fail on in some later cell, as a Python error: a list where
    it means a number (or the reverse), 2.5 where it counts (range, linspace, a width), no items
    where it loops over them. "-p steps 1e5" or "steps: 1.0e+5" reads as 100000.0: an integer
    parameter gets the integer it means. Items are checked alike where the default's items are
    all of one type ("hidden: [32.5]")."""
    if default is None:
        return value
    if value is None:  # YAML's null: an empty value, ~ or null
        raise ValueError(f"must be a {_kind(default)}, not null (YAML reads an empty value, ~ and null as null)")
    if _kind(value) != _kind(default):
        words = isinstance(value, bool) and isinstance(default, str)  # -p positions off
        raise ValueError(f"must be a {_kind(default)}" + (" (YAML reads on, off, yes, no, true and false as booleans: quote the word for YAML, inside the shell's quotes, as in -p positions \"'off'\")" if words else ""))
    if type(default) is int and isinstance(value, float):  # not a bool: its kind differs
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    if _kind(default) == "list" and default:
        if not value:
            raise ValueError("must be a list of at least one item")
        if len({type(item) for item in default}) == 1:
            try:
                return [_as_declared(item, default[0]) for item in value]
            except ValueError as e:
                raise ValueError(f"each item {e}") from None
    return value


def _kind(value) -> str:
    """What a parameter's value is, as far as the book checks it (bool before int: a bool is one)."""
    kinds = (("boolean", bool), ("number", (int, float)), ("list", (list, tuple)), ("mapping", dict), ("string", str))
    return next((kind for kind, types in kinds if isinstance(value, types)), type(value).__name__)


def executed_path(root: Path, notebook: Path, preset: str, overrides: dict | None = None) -> Path:
    """Where ``notebook`` executed at ``preset`` is kept. With ``overrides`` (parameters changed on
    the command line) it is kept apart, so that the preset's book never shows it, and named by
    their hash, so that a run with other changes (``-p positions learned`` after ``-p positions
    sinusoidal``) does not overwrite it."""
    rel = notebook.resolve().relative_to(root)
    if not overrides:
        return root / "_build" / "executed" / preset / rel
    key = hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8]
    return root / "_build" / "executed" / f"{preset}-custom" / rel.with_name(f"{rel.stem}-{key}.ipynb")


def failed_path(executed: Path) -> Path:
    return executed.with_suffix(".failed.ipynb")


def _host() -> str:
    return socket.gethostname().replace(".", "_")  # no dots: they would read as suffixes


def partial_path(executed: Path, pid: int, host: str | None = None) -> Path:
    """Where process ``pid`` on ``host`` (default: this one) writes ``executed`` while it runs.
    Named by both, since the nodes of a cluster share the book's folder but not their PIDs."""
    return executed.with_suffix(f".{host or _host()}-{pid}.partial.ipynb")


def remove_stale_partials(executed: Path) -> None:
    """Remove what runs of ``executed`` killed without warning (SIGKILL, a lost node) left
    behind: partial notebooks of this host whose process is gone. Those of other hosts stay,
    since from here there is no telling whether they still run."""
    prefix = f"{executed.stem}.{_host()}-"
    for path in executed.parent.glob(f"{prefix}*.partial.ipynb"):
        pid = path.name[len(prefix):-len(".partial.ipynb")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


@contextlib.contextmanager
def forward_signals():
    """Pass SIGTERM and SIGINT (Ctrl-C) on to the notebook's kernel, as SIGTERM, while it runs;
    yields a list that holds the signals once they have arrived.

    The kernel runs in a session of its own, so a SLURM time limit, a ``kill`` or a Ctrl-C in
    the terminal reaches only this process; the kernel, finding its parent gone, would exit
    without saving its run. Passed on, the run saves its state (``grokcore.train``) and its
    cell fails. (On Ctrl-C papermill interrupts the kernel itself, but under load a test saw
    it hang with the kernel still training.)"""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # only it may set handlers
        yield received
        return
    import psutil

    def forward(signum, frame):
        received.append(signum)
        kernels = psutil.Process().children()  # the kernel; its own workers are its business
        if not kernels:  # not started yet (or gone): stop here rather than run the notebook
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise Terminated("before the notebook's kernel had started")
        for child in kernels:  # SIGTERM for both: a kernel ignores SIGINT between cells
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGTERM)

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class Failure:
    notebook: str
    cell: str
    error: str
    saved: str = ""  # the notebook as far as it ran, with the error beneath the cell that failed

    def __str__(self) -> str:
        kept = f" (the notebook as far as it ran: {self.saved})" if self.saved else ""
        return f"{self.notebook}, {self.cell}: {self.error}{kept}"


def execute(
    root: Path,
    notebook: Path,
    preset: str,
    overrides: dict | None = None,
    log_output: bool = False,
    params: dict | None = None,
    progress_lines: bool | None = None,
) -> Failure | None:
    """Run one notebook at ``preset``; return what failed, or None. Raises Terminated (SIGTERM)
    or KeyboardInterrupt (Ctrl-C), after the kernel has saved its run, if one arrives meanwhile.

    ``params``: the notebook's values from ``preset_parameters``, where the caller has them already.
    ``log_output``: stream the cells' output to this command's stdout. ``progress_lines``
    (default: ``log_output``): training's progress lines, one a minute at most, on its stderr."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    rel = str(notebook.resolve().relative_to(root))
    if params is None:
        try:
            params = preset_parameters(root, notebook, preset, overrides)
        except BookError as e:
            return Failure(rel, "parameters", str(e))
    out = executed_path(root, notebook, preset, overrides)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out)
    partial = partial_path(out, os.getpid())  # papermill writes it cell by cell
    # The kernel inherits these: one run store for the whole book (absolute: the kernel runs in
    # the notebook's folder); no per-step bars in pages (a progress line now and then on this
    # command's stderr instead, or nothing).
    os.environ["GROKCORE_RUNS"] = str(runs.runs_root(root))
    lines = log_output if progress_lines is None else progress_lines
    os.environ.setdefault("GROKCORE_PROGRESS", "log" if lines else "0")
    failure = None
    with forward_signals() as stopped:
        try:
            papermill.execute_notebook(
                str(notebook),
                str(partial),
                parameters=params,
                kernel_name="python3",
                cwd=str(notebook.parent),
                progress_bar=False,
                log_output=log_output,
                # Output written below Python's sys.stdout/stderr (C libraries, training's
                # progress lines in "log" mode) goes to this command's terminal or log, not
                # into the page. The kernel's own log is quiet below errors: ipykernel warns on
                # every start that it talks to us over unencrypted localhost TCP (its messages
                # are signed); IPC sockets, which it suggests, fail on NFS home directories.
                extra_arguments=["--IPKernelApp.capture_fd_output=False", "--IPKernelApp.log_level=ERROR"],
            )
        except PapermillExecutionError as e:
            # Jupyter's label of the cell in the failed notebook; papermill's log counts every cell.
            failure = Failure(rel, f"In [{e.exec_count}]", f"{e.ename}: {e.evalue}")
        except Exception as e:  # a kernel that died, a timeout, SIGTERM before the kernel: report
            failure = Failure(rel, "kernel", f"{type(e).__name__}: {e}")
        except BaseException:  # Ctrl-C: keep what ran, as a failed notebook
            if partial.exists():
                os.replace(partial, failed_path(out))
            raise
    if failure is None:
        os.replace(partial, out)
        failed_path(out).unlink(missing_ok=True)
    elif partial.exists():
        os.replace(partial, failed_path(out))
        failure.saved = str(failed_path(out).relative_to(root))
    if signal.SIGINT in stopped:
        raise KeyboardInterrupt(str(failure or rel))
    if stopped:
        raise Terminated(str(failure or rel))
    return failure


def book_parameters(root: Path, todo: list[Path], preset: str) -> dict[Path, dict]:
    """Each notebook's values at ``preset`` (``preset_parameters``); a BookError naming every
    notebook whose preset is wrong."""
    params, wrong = {}, []
    for nb in todo:
        try:
            params[nb] = preset_parameters(root, nb, preset)
        except BookError as e:
            wrong.append(str(Failure(str(nb.relative_to(root)), "parameters", str(e))))
    if wrong:
        raise BookError("\n".join(wrong))
    return params


def run_book(preset: str, root: Path | None = None, only: list[str] | None = None) -> list[Failure]:
    """Execute every notebook of the book at ``preset``; failures are collected, not raised.

    Every notebook's preset is checked first, a wrong one a BookError: a typo in the last
    notebook's preset is found at once, not after hours of the others."""
    from tqdm import tqdm

    root = root or project_root()
    todo = select(root, only)
    params = book_parameters(root, todo, preset)
    failures: list[Failure] = []
    bar = tqdm(todo, desc=f"executing ({preset})", unit="notebook", file=sys.stdout)
    for nb in bar:
        bar.set_postfix_str(str(nb.relative_to(root)))
        t0 = time.perf_counter()
        # A paper-preset notebook can train for hours: a line a minute shows it is alive.
        failure = execute(root, nb, preset, params=params[nb], progress_lines=True)
        status = "FAILED" if failure else "ok"
        bar.write(f"{status:6s} {nb.relative_to(root)} ({time.perf_counter() - t0:.0f} s)")
        if failure:
            failures.append(failure)
            bar.write(f"       {failure}")
    return failures


def check_jupyter_book() -> None:
    """A BookError unless jupyter-book can build: it is an extra, which ``pip install -e .`` leaves out."""
    if importlib.util.find_spec("jupyter_book") is None:
        raise BookError('building the HTML book needs jupyter-book, which is not installed: pip install -e ".[book]"')


def _edited_since(executed: Path, sources: list[Path]) -> bool:
    """Whether a source of ``executed`` (the notebook, its preset file) changed after it was written."""
    return any(s.exists() and s.stat().st_mtime > executed.stat().st_mtime for s in sources)


def build_html(preset: str, root: Path | None = None) -> Path:
    """Stage the sources with the executed notebooks and build the HTML book.

    The ``cpu`` book goes to ``_build/html``; another preset to ``_build/html-<preset>``.
    """
    check_jupyter_book()
    root = root or project_root()
    stage = root / "_build" / "stage" / preset
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    missing, failed, edited = [], [], []
    for f in toc_files(root):
        for suffix in (".md", ".ipynb"):
            src = root / f"{f}{suffix}"
            if not src.exists():
                continue
            dst = stage / f"{f}{suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if suffix == ".ipynb":
                executed = executed_path(root, src, preset)
                if failed_path(executed).exists():
                    failed.append(str(src.relative_to(root)))
                if not executed.exists():
                    missing.append(str(src.relative_to(root)))
                    executed = src
                elif _edited_since(executed, [src, preset_file(root, src, preset)]):
                    edited.append(str(src.relative_to(root)))
                shutil.copy2(executed, dst)
            else:
                shutil.copy2(src, dst)
    # Figures and other assets the pages link to.
    for asset in (root / "book").rglob("*"):
        if asset.is_file() and asset.suffix in {".png", ".svg", ".csv", ".bib"}:
            dst = stage / asset.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(asset, dst)
    if missing:
        print(f"warning: not executed at preset {preset!r}, shown without outputs: {', '.join(missing)}")
    if edited:
        print(
            f"warning: edited (the notebook or its {preset}.yaml) since last executed at preset {preset!r}, shown as "
            f"they ran then: {', '.join(edited)}; python -m grokcore book run --preset {preset} --only <key> runs them again"
        )
    if failed:
        print(
            f"warning: failed when last executed at preset {preset!r} (see their .failed.ipynb in "
            f"_build/executed/{preset}); shown as they last ran to the end, if ever: {', '.join(failed)}"
        )
    cli = "from jupyter_book.cli.main import main; main()"  # jupyter-book 1.x has no __main__
    cmd = [sys.executable, "-c", cli, "build", str(stage), "--builder", "html"]
    target = root / "_build" / ("html" if preset == "cpu" else f"html-{preset}")
    # jupyter-book ends by naming where it built the pages; they are moved to target below,
    # so its lines name target instead (the absolute path first: it holds the relative one).
    built = stage / "_build" / "html"
    moved = [(str(built), str(target)), (str(built.relative_to(root)), str(target.relative_to(root)))]
    with subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, text=True, bufsize=1) as build:
        for line in build.stdout:
            for old, new in moved:
                line = line.replace(old, new)
            sys.stdout.write(line)
    if build.returncode:
        raise BookError(f"jupyter-book build failed (exit {build.returncode})")
    if target.exists():
        shutil.rmtree(target)
    shutil.move(str(built), target)
    return target / "index.html"

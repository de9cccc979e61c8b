"""Command line: ``python -m grokcore {book run|book build|book all|run|slurm|runs} ...``.

Examples::

    python -m grokcore book run --preset cpu          # execute every notebook of _toc.yml
    python -m grokcore book build --preset cpu        # HTML from the executed notebooks
    python -m grokcore book all --preset cpu          # both
    python -m grokcore run book/power2022/grokking.ipynb --preset paper -p seeds 3
    python -m grokcore slurm --preset paper --only power2022   # sbatch a job array, then the build
    python -m grokcore runs --markdown > runs.md      # one line per run in the store
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import time
from pathlib import Path

from grokcore import book, runs, slurm


def _warn_if_no_gpu(preset: str) -> None:
    """The paper preset is sized for a GPU: on a CPU its notebooks run for hours or days. Say
    so before they start, and go on (a user may mean it)."""
    if preset == "paper":
        import torch

        if not torch.cuda.is_available():
            print(
                "warning: preset 'paper' is sized for a GPU, and torch finds none here: its notebooks "
                "will take hours or days (the cpu preset takes minutes)",
                file=sys.stderr,
            )


@contextlib.contextmanager
def _papermill_log_to_stdout():
    """papermill reports each cell and its output as it runs through logging, which says nothing
    until it is set up: without this, a SLURM log stays empty for hours. Set up for one run and
    undone after it, since a later call in the same process may have another sys.stdout (a
    handler left on a closed one fails on every message)."""
    log = logging.getLogger("papermill")
    if log.handlers:  # set up by the caller: theirs
        yield
        return
    handler, level, propagate = logging.StreamHandler(sys.stdout), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # a handler on the root logger would print it twice
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def _stopped(why: str, signum: int) -> int:
    print(f"stopped by {why}; a run that was training saved its state: the same command resumes it", file=sys.stderr)
    return 128 + signum


def _runs_table(frame, markdown: bool) -> str:
    """The run store's summary as text: aligned columns, or a Markdown table."""
    if frame.empty:
        return ""

    def cell(row, column):
        value = row.get(column)
        if value is None or value != value:  # None or NaN: not known for this run
            return "-"
        if column == "members":  # a column with a gap (an unreadable run) holds floats
            return str(int(value))
        if column == "step":
            return f"{int(value):,} / {int(row['steps']):,}"
        if column == "reached_99":
            return f"{int(value)} / {int(row['members'])}"
        if column in ("train_acc", "val_acc"):
            return f"{value:.3f}"
        if column == "wall_s":
            return f"{value:,.0f}"
        if column == "created":
            return str(value)[:16].replace("T", " ")
        return str(value)

    columns = ["run", "status", "members", "step", "train_acc", "val_acc", "reached_99", "wall_s", "created", "code"]
    header = ["run", "status", "members", "last evaluated", "train acc", "val acc", "val >= 0.99", "wall s", "created (UTC)", "code"]
    lines = [[cell(row, c) for c in columns] for row in frame.to_dict("records")]
    if markdown:  # a | in a run's name or an error would start a new cell
        lines = [[v.replace("|", "\\|") for v in line] for line in lines]
        return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *lines])
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *lines])


def _negative_values_kept(argv: list[str]) -> list[str]:
    """``-p NAME VALUE`` with a negative number for VALUE: argparse takes ``-1e-3`` or ``-.5``
    for an option (it knows only plain negative numbers) and stops with "expected 2 arguments".
    After ``-p NAME`` it can only be the value, so it gets a leading space, which YAML ignores."""
    argv = list(argv)
    for i in range(len(argv) - 2):
        if argv[i] in ("-p", "--parameter") and argv[i + 2].startswith("-"):
            try:
                float(argv[i + 2])
            except ValueError:
                continue
            argv[i + 2] = " " + argv[i + 2]
    return argv


def main(argv: list[str] | None = None) -> int:
    examples = [line.strip() for line in __doc__.split("Examples::")[1].strip().splitlines()]
    parser = argparse.ArgumentParser(
        prog="python -m grokcore",
        description="Execute grokbook's notebooks (one, or the whole book, here or through SLURM),\n"
        "build the HTML book, and summarise the run store.",
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    presets = "parameter sets: ci (seconds), cpu (minutes on a laptop), paper (the papers' settings, for a GPU)"
    sub = parser.add_subparsers(dest="command", required=True)

    book_p = sub.add_parser("book", help="execute and build the whole book")
    book_p.add_argument("action", choices=["run", "build", "all"])
    book_p.add_argument("--preset", default="cpu", choices=book.PRESETS, help=f"{presets}; default: cpu")
    book_p.add_argument(
        "--only", nargs="+", metavar="KEY", help="run, all: execute only notebooks whose path contains one of these"
    )

    run_p = sub.add_parser("run", help="execute one notebook at a preset")
    run_p.add_argument("notebook", type=Path)
    run_p.add_argument("--preset", default="cpu", choices=book.PRESETS, help=f"{presets}; default: cpu")
    run_p.add_argument(
        "-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"),
        help="override a parameter of the preset (repeatable); VALUE is YAML: 3, 1e-3, x/y, '[0.3, 0.5]'",
    )

    slurm_p = sub.add_parser("slurm", help="submit the book to SLURM: one array task per notebook, then the HTML build")
    slurm_p.add_argument("--preset", default="paper", choices=book.PRESETS, help=f"{presets}; default: paper")
    slurm_p.add_argument("--only", nargs="+", metavar="KEY", help="submit only notebooks whose path contains one of these")
    slurm_p.add_argument("--dry-run", action="store_true", help="write the batch scripts and print the sbatch commands; submit nothing")
    slurm_p.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION", help="an sbatch option for both jobs, e.g. --sbatch-arg=--partition=gpu (repeatable)")

    runs_p = sub.add_parser("runs", help="summarise the run store: one line per run, how far it got and how it ended")
    runs_p.add_argument("--root", type=Path, help="the run store (default: $GROKCORE_RUNS, else runs/ beside _toc.yml)")
    runs_p.add_argument("--markdown", action="store_true", help="print a Markdown table (e.g. for a summary page)")

    args = parser.parse_args(_negative_values_kept(sys.argv[1:] if argv is None else argv))
    if args.command == "book" and args.action == "build" and args.only:
        book_p.error("--only selects the notebooks to execute (book run or book all); book build builds every page")
    if args.command == "runs":
        root = args.root or runs.runs_root()
        if not root.is_dir():
            where = "--root" if args.root else "$GROKCORE_RUNS, else runs/ beside the book's _toc.yml"
            runs_p.error(f"there is no run store at {root} (from {where}); give one with --root")
        print(_runs_table(runs.summary(root), args.markdown) or f"no runs in {root}")
        return 0
    try:
        if args.command == "run":
            # The notebook's repository, wherever the command is run from.
            nb = args.notebook.resolve()
            if not nb.exists():
                run_p.error(f"notebook {args.notebook} does not exist")
            if nb.suffix != ".ipynb":
                run_p.error(f"{args.notebook} is not a notebook (.ipynb)")
            root = book.project_root(nb.parent)
            if not nb.is_relative_to(root / "book"):
                run_p.error(f"notebook {args.notebook} is not in {root / 'book'}, where the notebooks live")
        else:
            root = book.project_root()
    except book.BookError as e:
        parser.error(str(e))

    if args.command == "run":
        try:
            pairs = args.parameter or []
            overrides = {name: book.parameter_values(text, f"-p {name} {text.lstrip()!r}") for name, text in pairs}
        except book.BookError as e:
            run_p.error(str(e))
        try:
            params = book.preset_parameters(root, nb, args.preset, overrides)
        except book.BookError as e:
            print(f"FAILED {book.Failure(str(nb.relative_to(root)), 'parameters', str(e))}", file=sys.stderr)
            return 1
        # The changes as the notebook reads them, so that "-p steps 1e5" and "-p steps 100000"
        # name one executed copy.
        overrides = {name: params[name] for name in overrides}
        _warn_if_no_gpu(args.preset)
        t0 = time.perf_counter()
        try:
            with _papermill_log_to_stdout():
                failure = book.execute(root, nb, args.preset, overrides, log_output=True, params=params)
        except book.Terminated as stop:
            return _stopped(f"SIGTERM ({stop})", signal.SIGTERM)
        except KeyboardInterrupt:  # passed on to the kernel, which has saved its run
            return _stopped("Ctrl-C", signal.SIGINT)
        if failure:
            print(f"FAILED {failure}", file=sys.stderr)
            return 1
        out = book.executed_path(root, nb, args.preset, overrides)
        print(f"ok {nb.relative_to(root)} -> {out.relative_to(root)} ({time.perf_counter() - t0:.0f} s)")
        return 0

    if args.command == "slurm":
        try:
            slurm.submit(root, args.preset, args.only, args.sbatch_arg, dry_run=args.dry_run)
        except book.BookError as e:  # SlurmError included
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0

    if args.action in ("build", "all"):
        try:  # before hours of notebooks, not after them
            book.check_jupyter_book()
        except book.BookError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    failures: list[book.Failure] = []
    if args.action in ("run", "all"):
        _warn_if_no_gpu(args.preset)
        t0 = time.perf_counter()
        try:
            failures = book.run_book(args.preset, root, args.only)
        except book.Terminated as stop:
            return _stopped(f"SIGTERM ({stop})", signal.SIGTERM)
        except KeyboardInterrupt:
            return _stopped("Ctrl-C", signal.SIGINT)
        except book.BookError as e:
            book_p.error(str(e))
        print(f"executed the book at preset {args.preset!r} in {time.perf_counter() - t0:.0f} s")
    built = True
    if args.action in ("build", "all"):
        try:
            index = book.build_html(args.preset, root)
            print(f"built {index.relative_to(root)}")
        except book.BookError as e:  # jupyter-book has said why above
            print(f"error: {e}", file=sys.stderr)
            built = False
    if failures:
        print(f"{len(failures)} notebook(s) failed:", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
    return 0 if built and not failures else 1


if __name__ == "__main__":
    sys.exit(main())

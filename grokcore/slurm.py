"""Submit the book to SLURM: one array task per notebook, then the HTML build.

The batch scripts come from the templates in ``slurm/`` (``notebook_array.sbatch``,
``book_build.sbatch``), which users edit for their cluster; ``{{name}}`` fields are filled
in here and the results written to ``_build/slurm/<preset>.sbatch`` and
``_build/slurm/<preset>-book.sbatch``. Each task runs ``python -m grokcore run <notebook>
--preset <preset>``: finished runs are loaded from the run store, unfinished ones resume, so
submitting again after a time limit carries on where the last job stopped.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from grokcore import book, runs


class SlurmError(book.BookError):
    pass


def render(template: Path, values: dict[str, str]) -> str:
    """The template with every ``{{name}}`` replaced; a name we do not fill is an error, not a silent blank."""
    text = template.read_text()
    unknown = sorted(set(re.findall(r"{{(\w+)}}", text)) - set(values))
    if unknown:
        raise SlurmError(f"{template} has unknown field(s) {', '.join(unknown)}; allowed: {', '.join(values)}")
    return re.sub(r"{{(\w+)}}", lambda m: values[m.group(1)], text)


def sbatch_quote(value: str) -> str:
    """``value`` as one word of an ``#SBATCH`` line: sbatch reads double quotes and backslash
    escapes there as a shell would, so a path with spaces stays one argument."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sbatch(args: list[str]) -> str:
    """Submit with ``sbatch --parsable`` and return the job id (it prints ``id`` or ``id;cluster``)."""
    done = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True)
    if done.returncode:
        raise SlurmError(f"sbatch {shlex.join(args)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


def submit(
    root: Path,
    preset: str,
    only: list[str] | None = None,
    sbatch_args: list[str] | None = None,
    dry_run: bool = False,
    python: str | None = None,
) -> tuple[str, str] | None:
    """Write the two batch scripts and, unless ``dry_run``, submit them; return the (array, book) job ids.

    Every check comes before anything is written: a bad preset, preset file, ``--only`` key or
    sbatch option, or no ``sbatch`` to submit with.
    """
    if preset not in book.PRESETS:
        raise SlurmError(f"preset = {preset!r} is not allowed: must be one of {', '.join(book.PRESETS)}")
    odd = sorted(set(str(root)) & set("%\\\n"))
    if odd:  # SLURM reads % in --output as a pattern and \ as an escape; a newline ends the line
        raise SlurmError(
            f"the repository path {str(root)!r} has {' and '.join(map(repr, odd))}, which #SBATCH lines "
            "cannot carry: move the repository, or link it, to a path without them"
        )
    extra = list(sbatch_args or [])
    for arg in extra:
        if not arg.startswith("-"):
            raise SlurmError(
                f"--sbatch-arg = {arg!r} is not allowed: must be one sbatch option, e.g. --sbatch-arg=--partition=gpu"
            )
    todo = book.select(root, only)
    if not todo:
        raise SlurmError("the book lists no notebook in _toc.yml: nothing to submit")
    book.book_parameters(root, todo, preset)  # here, not on a GPU node after the queue's wait
    book.check_jupyter_book()  # the build job runs this Python: not after the whole array
    if not dry_run and shutil.which("sbatch") is None:
        raise SlurmError("sbatch is not on PATH: run this on a SLURM login node, or add --dry-run to only write the scripts")

    out = root / "_build" / "slurm"
    logs = out / "logs"
    values = {
        "preset": preset,
        "root": sbatch_quote(str(root)),
        "logs": sbatch_quote(str(logs)),
        "python": shlex.quote(python or sys.executable),
        "last_task": str(len(todo) - 1),
        "notebooks": "\n".join(f"  {shlex.quote(str(nb.relative_to(root)))}" for nb in todo),
    }
    array_text = render(root / "slurm" / "notebook_array.sbatch", values)
    book_text = render(root / "slurm" / "book_build.sbatch", values)
    logs.mkdir(parents=True, exist_ok=True)  # SLURM does not create the folder of --output
    array_script = out / f"{preset}.sbatch"
    book_script = out / f"{preset}-book.sbatch"
    array_script.write_text(array_text)
    book_script.write_text(book_text)
    shown = os.path.relpath
    # The jobs run in the repository (--chdir) with this environment: a relative run store
    # would be taken from there, not from here, where `python -m grokcore runs` looks.
    store = ""
    if os.environ.get("GROKCORE_RUNS"):
        os.environ["GROKCORE_RUNS"] = str(runs.runs_root(root))
        store = f"GROKCORE_RUNS={shlex.quote(os.environ['GROKCORE_RUNS'])} "

    for i, nb in enumerate(todo):
        print(f"task {i}: {nb.relative_to(root)}")
    if dry_run:
        print(f"wrote {shown(array_script)} and {shown(book_script)}; submit them with")
        print(f"  {store}sbatch {shlex.join(extra + [shown(array_script)])}")
        print(f"  {store}sbatch --dependency=afterany:<array job id> {shlex.join(extra + [shown(book_script)])}")
        return None
    array_id = sbatch([*extra, str(array_script)])
    # Said at once: the array runs whether or not the build job is accepted.
    print(f"submitted {len(todo)} notebook(s) at preset {preset!r}: array job {array_id} ({shown(array_script)})")
    try:
        book_id = sbatch([f"--dependency=afterany:{array_id}", *extra, str(book_script)])
    except SlurmError as e:
        cancel = f"`scancel {array_id}` cancels it"
        raise SlurmError(f"{e}; array job {array_id} runs all the same, without the book build: {cancel}") from None
    print(f"book build: job {book_id}, once the array has ended (afterany:{array_id})")
    print(f"logs: {shown(logs)}/grokbook-{preset}-{array_id}_<task>.out, {shown(logs)}/grokbook-{preset}-book-{book_id}.out")
    return array_id, book_id

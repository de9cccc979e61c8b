"""``python -m grokcore slurm`` against a fake ``sbatch`` that runs the array tasks here.

The project is a small book in tmp_path with the repository's templates; the fake ``sbatch``
records its arguments, prints a job id and runs each task of the script it is given (as
SLURM would, with ``SLURM_ARRAY_TASK_ID`` set, in ``--chdir``); the interpreter the scripts
call is a fake ``python`` that records its arguments instead of executing a notebook.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from grokcore.__main__ import main

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["book/ch1/alpha.ipynb", "book/ch1/beta.ipynb", "book/ch2/gamma.ipynb"]

FAKE_SBATCH = """\
#!{python}
import json, os, shlex, subprocess, sys
from pathlib import Path

log = Path(os.environ["FAKE_SLURM_LOG"])
args = sys.argv[1:]
with open(log / "sbatch.jsonl", "a") as f:
    f.write(json.dumps(args) + "\\n")
if os.environ.get("FAKE_SBATCH_ERROR"):
    sys.exit("sbatch: error: " + os.environ["FAKE_SBATCH_ERROR"])
if os.environ.get("FAKE_SBATCH_DEPENDENCY_ERROR") and any(a.startswith("--dependency") for a in args):
    sys.exit("sbatch: error: " + os.environ["FAKE_SBATCH_DEPENDENCY_ERROR"])
job = str(4242 + sum(1 for _ in open(log / "sbatch.jsonl")) - 1)
script = Path(args[-1])
options = {{}}
for line in script.read_text().splitlines():  # sbatch splits an #SBATCH line as a shell would
    if line.startswith("#SBATCH "):
        options.update(arg[2:].partition("=")[::2] for arg in shlex.split(line[len("#SBATCH "):]))
options.update(a[2:].split("=", 1) for a in args[:-1] if a.startswith("--") and "=" in a)
if "array" in options:
    first, last = map(int, options["array"].split("-"))
    tasks = [dict(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_ID=str(i)) for i in range(first, last + 1)]
else:
    tasks = [{{}}]
for task in tasks:
    with open(log / "job-output", "a") as out:  # SLURM's --output
        subprocess.run(["bash", str(script)], cwd=options["chdir"], env={{**os.environ, "SLURM_JOB_ID": job, **task}},
                       stdout=out, check=True)
print(job + ";fakecluster" if "--parsable" in args else "Submitted batch job " + job)
"""

FAKE_PYTHON = """\
#!/bin/bash
echo "$PWD|$*" >> "$FAKE_SLURM_LOG/python.log"
"""


@pytest.fixture
def project(tmp_path, monkeypatch, request):
    """A three-notebook book with a paper preset for each, a fake sbatch on PATH and a fake python;
    ``indirect`` parametrisation names the project's folder."""
    root = tmp_path / getattr(request, "param", "project")
    (root / "book").mkdir(parents=True)
    (root / "intro.md").write_text("# intro\n")
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n"
        + "".join(f"  - file: {nb.removesuffix('.ipynb')}\n" for nb in NOTEBOOKS)
    )
    notebook = nbformat.v4.new_notebook()  # one parameter, steps
    notebook.cells = [nbformat.v4.new_code_cell("steps = 1", metadata={"tags": ["parameters"]})]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for nb in NOTEBOOKS:
        (root / nb).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, root / nb)
        presets = root / "parameters" / Path(nb).relative_to("book").with_suffix("")
        presets.mkdir(parents=True)
        for preset in ("ci", "cpu", "paper"):
            (presets / f"{preset}.yaml").write_text("steps: 10\n")
    shutil.copytree(REPO / "slurm", root / "slurm")

    log = tmp_path / "log"
    log.mkdir()
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for path, text in ((bin_ / "sbatch", FAKE_SBATCH.format(python=sys.executable)), (tmp_path / "python", FAKE_PYTHON)):
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv("FAKE_SLURM_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.chdir(root)
    return root


def submissions(project):
    path = project.parent / "log" / "sbatch.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def python_calls(project):
    path = project.parent / "log" / "python.log"
    return path.read_text().splitlines() if path.exists() else []


def test_task_i_runs_notebook_i_at_the_preset_then_the_book_is_built(project, capsys):
    assert main(["slurm", "--preset", "paper"]) == 0
    runs = [f"{project}|-m grokcore run {nb} --preset paper" for nb in NOTEBOOKS]
    assert python_calls(project) == runs + [f"{project}|-m grokcore book build --preset paper"]

    array, build = submissions(project)
    assert "--parsable" in array and "--parsable" in build
    assert "--dependency=afterany:4242" in build and not any(a.startswith("--dependency") for a in array)
    out = capsys.readouterr().out
    assert "4242" in out and "4243" in out and "_build/slurm/logs" in out
    assert (project / "_build" / "slurm" / "logs").is_dir()  # sbatch does not create it


@pytest.mark.parametrize("project", ['my "grok" project'], indirect=True)
def test_a_project_path_with_spaces_and_quotes_reaches_the_jobs(project):
    assert main(["slurm", "--preset", "ci", "--only", "gamma"]) == 0
    assert python_calls(project) == [
        f"{project}|-m grokcore run book/ch2/gamma.ipynb --preset ci",
        f"{project}|-m grokcore book build --preset ci",
    ]


@pytest.mark.parametrize("project", ["100%-grok", "back\\slash", "new\nline"], indirect=True)
def test_a_path_sbatch_cannot_carry_is_refused_before_any_work(project, capsys):
    assert main(["slurm", "--preset", "ci"]) == 2
    assert "#SBATCH lines cannot carry" in capsys.readouterr().err
    assert submissions(project) == [] and not (project / "_build").exists()


@pytest.mark.parametrize(
    "only, chosen",
    [(["ch1"], NOTEBOOKS[:2]), (["gamma", "alpha"], [NOTEBOOKS[0], NOTEBOOKS[2]])],
)
def test_only_selects_by_path_in_book_order(project, only, chosen):
    assert main(["slurm", "--preset", "ci", "--only", *only]) == 0
    assert python_calls(project)[:-1] == [f"{project}|-m grokcore run {nb} --preset ci" for nb in chosen]


def test_sbatch_args_and_template_edits_reach_the_jobs(project):
    template = project / "slurm" / "notebook_array.sbatch"
    template.write_text(template.read_text().replace("##SBATCH --partition=gpu", "#SBATCH --partition=edited"))
    assert main(["slurm", "--sbatch-arg=--account=proj", "--sbatch-arg=--qos=long", "--sbatch-arg=-pgpu"]) == 0
    for args in submissions(project):
        assert args[-4:-1] == ["--account=proj", "--qos=long", "-pgpu"]  # short options too
    assert "#SBATCH --partition=edited" in (project / "_build" / "slurm" / "paper.sbatch").read_text()


def test_dry_run_writes_the_scripts_and_submits_nothing(project, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(project))  # no sbatch: a dry run does not need it
    assert main(["slurm", "--preset", "cpu", "--dry-run", "--sbatch-arg=--qos=long"]) == 0
    assert submissions(project) == [] and python_calls(project) == []
    out = capsys.readouterr().out
    assert "sbatch --qos=long _build/slurm/cpu.sbatch" in out
    assert "sbatch --dependency=afterany:<array job id> --qos=long _build/slurm/cpu-book.sbatch" in out
    assert (project / "_build/slurm/cpu.sbatch").exists() and (project / "_build/slurm/cpu-book.sbatch").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--only", "alpha", "delta"], ["'delta'", "matches no notebook", *NOTEBOOKS]),
        (["--sbatch-arg", "gpu"], ["--sbatch-arg", "'gpu'", "one sbatch option"]),
        (["--preset", "cpu"], ["book/ch2/gamma.ipynb", "no 'cpu' preset", "parameters/ch2/gamma/cpu.yaml"]),
        ([], ["sbatch is not on PATH", "--dry-run"]),
    ],
    ids=["only", "sbatch-arg", "missing-preset", "no-sbatch"],
)
def test_bad_input_stops_before_any_work(project, capsys, monkeypatch, argv, words):
    (project / "parameters" / "ch2" / "gamma" / "cpu.yaml").unlink()
    if argv == []:
        monkeypatch.setenv("PATH", str(project))
    assert main(["slurm", *argv]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert submissions(project) == [] and not (project / "_build").exists()


def test_a_template_field_grokcore_does_not_fill_is_refused(project, capsys):
    template = project / "slurm" / "book_build.sbatch"
    template.write_text(template.read_text() + "#SBATCH --comment={{budget}}\n")
    assert main(["slurm", "--preset", "ci"]) == 2
    assert "has unknown field(s) budget; allowed: preset, root" in capsys.readouterr().err
    assert submissions(project) == [] and not (project / "_build").exists()


def test_a_book_that_could_not_be_built_is_not_submitted(project, capsys, monkeypatch):
    """The build job runs this Python after the whole array: without jupyter-book, refused now."""
    monkeypatch.setitem(sys.modules, "jupyter_book", None)  # not importable
    assert main(["slurm", "--preset", "ci", "--dry-run"]) == 2
    assert 'needs jupyter-book, which is not installed: pip install -e ".[book]"' in capsys.readouterr().err
    assert submissions(project) == [] and not (project / "_build").exists()


def test_unknown_preset_names_the_allowed_ones(project, capsys):
    with pytest.raises(SystemExit):
        main(["slurm", "--preset", "gpu"])
    err = capsys.readouterr().err
    assert "--preset" in err and "'gpu'" in err and all(p in err for p in ("ci", "cpu", "paper"))


def test_a_refused_submission_says_why_and_submits_no_build(project, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_SBATCH_ERROR", "invalid partition specified: gpu")
    assert main(["slurm"]) == 2
    assert "invalid partition specified: gpu" in capsys.readouterr().err
    assert len(submissions(project)) == 1


def test_a_refused_build_job_still_names_the_array_job_that_runs(project, capsys, monkeypatch):
    """The array is submitted and runs when the build's sbatch is refused: its id must not be lost."""
    monkeypatch.setenv("FAKE_SBATCH_DEPENDENCY_ERROR", "invalid qos specification")
    assert main(["slurm"]) == 2
    captured = capsys.readouterr()
    assert "array job 4242" in captured.out
    assert "invalid qos specification" in captured.err and "scancel 4242" in captured.err
    assert len(submissions(project)) == 2


@pytest.mark.parametrize(
    "text, words",
    [
        ("stepz: 5\n", ["unknown parameter 'stepz'", "book/ch2/gamma.ipynb", "allowed: steps"]),
        ("steps: [1, 2\n", ["parameters/ch2/gamma/paper.yaml is not valid YAML"]),
        ("- 1\n", ["parameters/ch2/gamma/paper.yaml must map parameter names to values", "list"]),
    ],
    ids=["unknown-name", "malformed", "not-a-mapping"],
)
def test_a_bad_preset_file_stops_before_any_work(project, capsys, text, words):
    """Found here, not on a GPU node after the queue's wait."""
    (project / "parameters" / "ch2" / "gamma" / "paper.yaml").write_text(text)
    assert main(["slurm", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and all(w in err for w in words), err
    assert submissions(project) == [] and not (project / "_build").exists()


def test_a_relative_run_store_is_the_one_beside_the_submitting_shell(project, tmp_path, monkeypatch, capsys):
    """The jobs run in the repository: GROKCORE_RUNS=relruns, typed in book/, must still mean
    book/relruns there, where `python -m grokcore runs` typed in book/ looks."""
    (tmp_path / "python").write_text('#!/bin/bash\necho "$GROKCORE_RUNS" >> "$FAKE_SLURM_LOG/store.log"\n')
    monkeypatch.chdir(project / "book")
    monkeypatch.setenv("GROKCORE_RUNS", "relruns")
    assert main(["slurm", "--preset", "ci", "--only", "gamma"]) == 0
    store = project / "book" / "relruns"
    assert (tmp_path / "log" / "store.log").read_text().splitlines() == [str(store)] * 2  # the task and the build
    monkeypatch.setenv("GROKCORE_RUNS", "relruns")
    assert main(["slurm", "--preset", "ci", "--dry-run"]) == 0
    assert f"GROKCORE_RUNS={store} sbatch " in capsys.readouterr().out  # for the user to submit from anywhere


def start_task(project, tmp_path, restarts: int) -> subprocess.Popen:
    """Task 1 of the array script, its python a fake that waits for SIGTERM, `scontrol` a fake that logs."""
    log = tmp_path / "log"
    (tmp_path / "python").write_text(textwrap.dedent("""\
        #!/bin/bash
        trap 'touch "$FAKE_SLURM_LOG/got-term"; kill $!; exit 143' TERM
        touch "$FAKE_SLURM_LOG/started"
        sleep 30 & wait $!
        """))
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text('#!/bin/bash\necho "$*" >> "$FAKE_SLURM_LOG/scontrol.log"\n')
    scontrol.chmod(0o755)
    assert main(["slurm", "--dry-run"]) == 0
    # Task 1 of array 4242 runs as job 4243: requeueing 4243 alone would be right, 4242 (the id of
    # the array's last task to start) would requeue every task, so the script names <array>_<task>.
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "4243",
           "SLURM_RESTART_COUNT": str(restarts)}
    with open(log / "task.out", "w") as out:  # the child keeps its own copy of the descriptor
        shell = subprocess.Popen(["bash", "_build/slurm/paper.sbatch"], env=env, stdout=out,
                                 start_new_session=True)  # its own group, so the test can end all of it
    wait_for(log / "started", 20, "the script never started python")
    return shell


def wait_for(path: Path, seconds: float, why: str):
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert path.exists(), why


def end_task(shell: subprocess.Popen) -> int:
    try:
        return shell.wait(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()


@pytest.mark.parametrize("restarts, requeued", [(0, True), (9, True), (10, False)])
def test_the_time_limit_warning_saves_the_run_and_requeues_the_task(project, tmp_path, restarts, requeued):
    """--signal=B:USR1 signals only the batch shell: python must get a SIGTERM to save its run,
    and the task (only this task of the array) must go back to the queue, at most 10 times."""
    log = tmp_path / "log"
    shell = start_task(project, tmp_path, restarts)
    os.kill(shell.pid, signal.SIGUSR1)
    wait_for(log / "got-term", 20, "python did not get a SIGTERM from the batch shell")
    assert end_task(shell) == 143  # python's status: stopped by SIGTERM
    requeues = (log / "scontrol.log").read_text().splitlines() if (log / "scontrol.log").exists() else []
    assert requeues == (["requeue 4242_1"] if requeued else [])
    said = (log / "task.out").read_text()
    assert ("requeued (restart" in said) == requeued and ("not requeued" in said) == (not requeued)
    assert (f"requeued (restart {restarts + 1} of at most 10)" in said) == requeued, said  # the start to come


def test_scancel_does_not_requeue(project, tmp_path):
    """scancel sends SIGTERM (to every process of the job; here to the shell): no requeue."""
    log = tmp_path / "log"
    shell = start_task(project, tmp_path, 0)
    os.kill(shell.pid, signal.SIGTERM)
    end_task(shell)
    assert not (log / "scontrol.log").exists()

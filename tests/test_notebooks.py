"""Every notebook of the book: present, parameterised by the ci preset, committed clean."""

import ast
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from grokcore import book

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = book.notebooks(ROOT)
IDS = [str(nb.relative_to(ROOT)) for nb in NOTEBOOKS]


def test_toc_lists_notebooks_that_exist():
    assert NOTEBOOKS, "the table of contents lists no notebook"
    for f in book.toc_files(ROOT):
        assert (ROOT / f"{f}.ipynb").exists() or (ROOT / f"{f}.md").exists(), f"_toc.yml names {f}, which is missing"


def parameters_cell(nb_path):
    cells = json.loads(nb_path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    return code[0]


def cell_values(cell):
    """The literal values a parameters cell assigns, evaluated without running it."""
    tree = ast.parse("".join(cell["source"]))
    values = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, "parameters cells hold plain assignments only"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_first_code_cell_is_the_ci_preset(nb):
    cell = parameters_cell(nb)
    assert "parameters" in cell["metadata"].get("tags", []), "the first code cell must be tagged 'parameters'"
    ci = yaml.safe_load(book.preset_file(ROOT, nb, "ci").read_text())
    assert cell_values(cell) == ci


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_presets_have_the_same_keys(nb):
    keys = {p: set(yaml.safe_load(book.preset_file(ROOT, nb, p).read_text())) for p in book.PRESETS}
    assert keys["ci"] == keys["cpu"] == keys["paper"], keys


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_committed_without_outputs(nb):
    for cell in json.loads(nb.read_text())["cells"]:
        if cell["cell_type"] == "code":
            assert not cell["outputs"] and cell["execution_count"] is None, f"{nb.name} has outputs: strip them"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_cells_have_unique_ids(nb):
    """nbformat 4.5 requires an id on every cell (future nbformat versions refuse notebooks without)."""
    ids = [cell.get("id") for cell in json.loads(nb.read_text())["cells"]]
    assert all(isinstance(i, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i) for i in ids), f"{nb.name}: a cell lacks a valid id"
    assert len(set(ids)) == len(ids), f"{nb.name}: cell ids repeat"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_page_cites_the_paper_and_the_paper_command(nb):
    text = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "markdown")
    assert "arxiv.org/abs/" in text
    assert f"python -m grokcore run {nb.relative_to(ROOT)} --preset paper" in text


def test_unknown_parameter_is_refused_before_execution():
    nb = ROOT / "book/power2022/grokking.ipynb"
    with pytest.raises(book.BookError, match="unknown parameter 'train_fractoin'.*allowed: .*train_fraction"):
        book.preset_parameters(ROOT, nb, "ci", {"train_fractoin": 0.5})


def test_an_integral_float_is_an_integer_where_the_notebook_declares_one():
    nb = ROOT / "book/nanda2023/progress_measures.ipynb"  # steps = 300, lr = 0.003, weight_decay = 1.0
    values = book.preset_parameters(ROOT, nb, "ci", {"steps": 1e5, "weight_decay": 2.0, "lr": 1e-3})
    assert values["steps"] == 100000 and type(values["steps"]) is int
    assert type(values["weight_decay"]) is float and values["lr"] == 0.001
    with pytest.raises(book.BookError, match=r"steps = 2.5 is not allowed .*: must be a whole number"):
        book.preset_parameters(ROOT, nb, "ci", {"steps": 2.5})  # range(2.5) would fail in the notebook


def test_cli_finds_the_notebooks_repository_from_anywhere(tmp_path, monkeypatch):
    from grokcore.__main__ import main

    calls = []
    monkeypatch.setattr(book, "execute", lambda *args, **_: calls.append(args))
    monkeypatch.setattr(book, "preset_parameters", lambda root, nb, preset, overrides: dict(overrides))  # any names
    monkeypatch.chdir(tmp_path)
    nb = ROOT / "book/power2022/grokking.ipynb"
    assert main(["run", str(nb), "--preset", "ci", "-p", "seeds", "2"]) == 0
    assert calls == [(ROOT, nb, "ci", {"seeds": 2})]
    # YAML 1.1 reads 1e-3 (no dot) as a string; on the command line it is the number, unless quoted.
    main(["run", str(nb), "-p", "lr", "1e-3", "-p", "fractions", "[0.5, 1e-1]", "-p", "op", "x/y", "-p", "name", '"2e3"'])
    assert calls[-1][2:] == ("cpu", {"lr": 0.001, "fractions": [0.5, 0.1], "op": "x/y", "name": "2e3"})
    # A negative number is the value, not an option (argparse alone reads -1e-3 as an option).
    main(["run", str(nb), "-p", "lr", "-1e-3", "-p", "seeds", "-2", "--parameter", "wd", "-.5"])
    assert calls[-1][2:] == ("cpu", {"lr": -0.001, "seeds": -2, "wd": -0.5})


def test_cli_exit_status_says_whether_every_notebook_ran(monkeypatch, capsys):
    """0 where every notebook ran (saying where the executed copy is), 1 where one failed (a
    SLURM array task, or CI, must see it), with the failure on stderr."""
    from grokcore.__main__ import main

    nb = ROOT / "book/power2022/grokking.ipynb"
    failure = book.Failure("book/power2022/grokking.ipynb", "In [3]", "ValueError: boom")
    monkeypatch.chdir(ROOT)  # `book` finds the book from here
    monkeypatch.setattr(book, "execute", lambda *a, **k: None)
    assert main(["run", str(nb), "--preset", "ci", "-p", "seeds", "2"]) == 0
    custom = book.executed_path(ROOT, nb, "ci", {"seeds": 2}).relative_to(ROOT)
    assert custom.parent == Path("_build/executed/ci-custom/book/power2022")
    assert f"-> {custom} (" in capsys.readouterr().out
    # 1e5 and 100000 are one value of an integer parameter, and one executed copy.
    for steps in ("1e5", "100000"):
        assert main(["run", str(nb), "--preset", "ci", "-p", "steps", steps]) == 0
    copies = [line.split(" -> ")[1].split(" (")[0] for line in capsys.readouterr().out.splitlines() if " -> " in line]
    assert len(copies) == 2 and copies[0] == copies[1]
    # The cells' log went to this call's stdout and no further: a handler left on it would fail
    # on every message once a later call (another test) has another stdout.
    assert not logging.getLogger("papermill").handlers
    monkeypatch.setattr(book, "execute", lambda *a, **k: failure)
    assert main(["run", str(nb)]) == 1
    assert f"FAILED {failure}" in capsys.readouterr().err
    # A parameter the notebook does not declare fails before any execution, the same way.
    monkeypatch.setattr(book, "execute", lambda *a, **k: pytest.fail("executed"))
    assert main(["run", str(nb), "-p", "train_fractoin", "0.5"]) == 1
    assert "FAILED book/power2022/grokking.ipynb, parameters: unknown parameter 'train_fractoin'" in capsys.readouterr().err

    presets = []
    monkeypatch.setattr(book, "run_book", lambda preset, root, only: presets.append(preset) or [failure])
    assert main(["book", "run"]) == 1
    assert presets == ["cpu"]  # the book's default preset
    assert f"1 notebook(s) failed:\n  {failure}" in capsys.readouterr().err
    monkeypatch.setattr(book, "run_book", lambda preset, root, only: [])
    assert main(["book", "run", "--preset", "ci"]) == 0


@pytest.mark.parametrize("gpu", [False, True])
def test_the_paper_preset_warns_before_it_starts_on_a_machine_without_a_gpu(monkeypatch, capsys, gpu):
    import torch

    from grokcore.__main__ import main

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(book, "execute", lambda *a, **k: None)
    monkeypatch.setattr(book, "run_book", lambda *a, **k: [])
    warning = "warning: preset 'paper' is sized for a GPU, and torch finds none here"
    for argv in (["run", str(ROOT / "book/power2022/grokking.ipynb"), "--preset", "paper"], ["book", "run", "--preset", "paper"]):
        assert main(argv) == 0
        assert (warning in capsys.readouterr().err) == (not gpu)
    assert main(["book", "run", "--preset", "cpu"]) == 0
    assert warning not in capsys.readouterr().err


def test_cli_refuses_what_it_cannot_run_in_one_line(tmp_path, monkeypatch, capsys):
    from grokcore.__main__ import main

    stray = tmp_path / "stray.ipynb"
    stray.write_text((ROOT / "book/power2022/grokking.ipynb").read_text())
    project = tmp_path / "project"  # a book's repository, and a notebook outside its book/
    outside = project / "other" / "x.ipynb"
    outside.parent.mkdir(parents=True)
    outside.write_text(stray.read_text())
    (project / "_toc.yml").write_text("root: intro\n")
    monkeypatch.chdir(tmp_path)
    for argv, message in [
        (["run", str(stray)], "no _toc.yml in"),
        (["run", str(outside)], "is not in " + str(project / "book")),
        (["run", str(ROOT / "README.md")], "is not a notebook (.ipynb)"),
        (["run", str(ROOT / "book/power2022/index.md")], "is not a notebook (.ipynb)"),
        (["run", str(ROOT / "book/power2022/missing.ipynb")], "does not exist"),
        (["run", str(ROOT / "book/power2022/missing.ipynb")], "usage: python -m grokcore run"),  # the subcommand's
        (["book", "run"], "no _toc.yml in"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_book_run_refuses_an_only_key_that_matches_no_notebook(monkeypatch, capsys):
    from grokcore.__main__ import main

    monkeypatch.setattr(book, "execute", lambda *a, **k: pytest.fail("a notebook was executed"))
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as stopped:
        main(["book", "run", "--only", "power2022", "nanda2O23"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "'nanda2O23' matches no notebook" in err and "book/nanda2023/" in err
    assert "usage: python -m grokcore book" in err


def test_book_build_refuses_only_which_it_would_ignore(monkeypatch, capsys):
    from grokcore.__main__ import main

    monkeypatch.setattr(book, "build_html", lambda *a, **k: pytest.fail("the book was built"))
    with pytest.raises(SystemExit) as stopped:
        main(["book", "build", "--only", "power2022"])
    assert stopped.value.code == 2 and "book build builds every page" in capsys.readouterr().err


@pytest.mark.parametrize(
    "notebook, value, message",
    [
        ("book/power2022/grokking.ipynb", "train_fraction: 1.5", "train_fraction = 1.5 is not allowed"),
        # One number: np.geomspace would take it as the stop and sweep 50 learning rates up to n_lr.
        ("book/liu2022/phase_diagram.ipynb", "lr_range: [0.01]", "lr_range = [0.01] is not allowed"),
        ("book/liu2022/transformer_phase_diagram.ipynb", "lr_range: [1, 2, 3]", "lr_range = [1, 2, 3] is not allowed"),
    ],
)
def test_papermill_stops_at_once_on_an_impossible_value(tmp_path, notebook, value, message):
    nb = ROOT / notebook
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(nb), str(tmp_path / "out.ipynb"), "-y", value],
        capture_output=True,
        text=True,
        cwd=nb.parent,
        timeout=300,
    )
    assert done.returncode != 0
    assert message in done.stderr + done.stdout
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    assert not any(
        "gc.train(" in "".join(c["source"]) and c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code"
    ), "training started before the parameters were checked"


def demo_book(root: Path, notebooks: dict[str, str], preset: str = "x: 2\n", params: str = "x = 1") -> None:
    """A book in ``root`` whose notebooks (name -> code) take the parameters ``params`` (one, x)."""
    import nbformat

    chapters = "".join(f"  - file: book/demo/{name}\n" for name in notebooks)
    (root / "_toc.yml").write_text(f"format: jb-book\nroot: intro\nchapters:\n{chapters}")
    (root / "intro.md").write_text("# demo\n")
    for name, body in notebooks.items():
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell(params)
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell, nbformat.v4.new_code_cell(body)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = root / "book" / "demo" / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
        preset_file = root / "parameters" / "demo" / name / "ci.yaml"
        preset_file.parent.mkdir(parents=True, exist_ok=True)
        preset_file.write_text(preset)


def test_book_runner_reports_a_failing_notebook_and_goes_on(tmp_path):
    """A notebook that raises is reported with its cell and error, and kept apart from the
    executed notebooks that the book shows; the next one still runs."""
    demo_book(tmp_path, {"broken": "raise ValueError('boom ' + str(x))", "fine": "y = x + 1"})
    failures = book.run_book("ci", root=tmp_path)
    assert len(failures) == 1
    assert failures[0].notebook == "book/demo/broken.ipynb"
    assert "ValueError: boom 2" in failures[0].error
    assert failures[0].cell == "In [3]"  # the label beside the cell: parameters 1, injected 2, body 3
    executed = {name: book.executed_path(tmp_path, tmp_path / f"book/demo/{name}.ipynb", "ci") for name in ("broken", "fine")}
    assert executed["fine"].exists() and not book.failed_path(executed["fine"]).exists()
    assert not executed["broken"].exists() and book.failed_path(executed["broken"]).exists()
    assert str(failures[0]).endswith(" (the notebook as far as it ran: _build/executed/ci/book/demo/broken.failed.ipynb)")
    assert not list((tmp_path / "_build").rglob("*.partial.ipynb"))
    # Parameters changed on the command line: kept out of the preset's folder.
    before = executed["fine"].read_text()
    assert book.execute(tmp_path, tmp_path / "book/demo/fine.ipynb", "ci", {"x": 5}) is None
    assert book.execute(tmp_path, tmp_path / "book/demo/fine.ipynb", "ci", {"x": 6}) is None
    custom = [book.executed_path(tmp_path, tmp_path / "book/demo/fine.ipynb", "ci", {"x": x}) for x in (5, 6)]
    assert custom[0] != custom[1] and all(path.exists() for path in custom)  # the second kept the first
    assert all(path.parent == tmp_path / "_build/executed/ci-custom/book/demo" for path in custom)
    assert executed["fine"].read_text() == before
    # Mended, the notebook runs, and its failed copy from before goes: the folder shows the
    # latest outcome alone.
    demo_book(tmp_path, {"broken": "y = x", "fine": "y = x + 1"})
    assert book.execute(tmp_path, tmp_path / "book/demo/broken.ipynb", "ci") is None
    assert executed["broken"].exists() and not book.failed_path(executed["broken"]).exists()


def test_the_book_runner_gives_its_kernels_progress_lines(tmp_path, monkeypatch):
    """`book run` shows a bar over notebooks, and a paper-preset notebook can train for hours
    under it: its kernels write a progress line now and then (GROKCORE_PROGRESS=log) on the
    command's stderr, where a single notebook's execute keeps them quiet unless it logs."""
    monkeypatch.setenv("GROKCORE_PROGRESS", "")  # recorded, so that the test leaves it as it was
    monkeypatch.delenv("GROKCORE_PROGRESS")
    demo_book(tmp_path, {"env": "import os\nprint(os.environ['GROKCORE_PROGRESS'])"})
    assert book.run_book("ci", root=tmp_path) == []
    executed = json.loads(book.executed_path(tmp_path, tmp_path / "book/demo/env.ipynb", "ci").read_text())
    assert "".join(executed["cells"][-1]["outputs"][0]["text"]).strip() == "log"


def test_notebooks_share_one_run_store_beside_the_book_by_default(tmp_path, monkeypatch):
    """Without GROKCORE_RUNS, every notebook's kernel trains into runs/ beside _toc.yml, so
    two notebooks that train the same config share one run."""
    monkeypatch.delenv("GROKCORE_RUNS")  # conftest points it at a temporary folder
    demo_book(tmp_path, {"store": "import os\nstore = os.environ['GROKCORE_RUNS']\nopen('store.txt', 'w').write(store)"})
    assert book.execute(tmp_path, tmp_path / "book/demo/store.ipynb", "ci") is None
    assert (tmp_path / "book/demo/store.txt").read_text() == str(tmp_path / "runs")


def test_a_relative_run_store_is_taken_from_where_the_command_runs(tmp_path, monkeypatch):
    """The kernel runs in the notebook's folder: GROKCORE_RUNS=relruns must still mean the
    relruns/ of the folder the command was typed in, one store for every chapter, the one
    that `python -m grokcore runs` typed there reads."""
    from grokcore import runs

    demo_book(tmp_path, {"store": "import os\nstore = os.environ['GROKCORE_RUNS']\nopen('store.txt', 'w').write(store)"})
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("GROKCORE_RUNS", "relruns")
    assert book.execute(tmp_path, tmp_path / "book/demo/store.ipynb", "ci") is None
    assert (tmp_path / "book/demo/store.txt").read_text() == str(here / "relruns") == str(runs.runs_root())


def test_preset_files_read_numbers_as_the_command_line_does(tmp_path):
    """YAML 1.1 reads 1e-3 (no dot) and -.5 (a sign before the dot) as strings; as on the
    command line, they are numbers."""
    preset = "steps: 6.0e+3\nlr: 1e-3\nname: '2e3'\nshift: -.5\n"
    demo_book(tmp_path, {"demo": "pass"}, preset=preset, params="steps = 10\nlr = 0.1\nname = 'a'\nshift = 0.0")
    values = book.preset_parameters(tmp_path, tmp_path / "book/demo/demo.ipynb", "ci")
    assert values == {"steps": 6000, "lr": 0.001, "name": "2e3", "shift": -0.5}
    assert type(values["steps"]) is int and type(values["lr"]) is float


@pytest.mark.parametrize(
    "values, message",
    [
        ({"fractions": 0.5}, r"fractions = 0.5 is not allowed .*: must be a list, as its default \[0.4, 0.7\] is"),
        ({"steps": [100]}, r"steps = \[100\] is not allowed .*: must be a number"),
        ({"ops": "x+y"}, r"ops = 'x\+y' is not allowed .*: must be a list"),
        ({"steps": 2.5}, r"steps = 2.5 is not allowed .*: must be a whole number, as its default 100 is"),
        ({"fractions": []}, r"fractions = \[\] is not allowed .*: must be a list of at least one item, as its default"),
        ({"ops": []}, r"ops = \[\] is not allowed .*: must be a list of at least one item"),
        ({"fractions": [0.5], "steps": 200.0}, None),  # the kinds agree; the config judges the rest
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_before_execution(values, message):
    """A list where the notebook means a number, or the reverse, a fraction where it counts, or
    no items where it loops over them, would fail in some later cell as a Python error; it is
    refused before the kernel starts, naming the parameter."""
    nb = ROOT / "book/power2022/data_fraction.ipynb"  # fractions = [0.4, 0.7], steps = 100, ops = [...]
    if message is None:
        assert book.preset_parameters(ROOT, nb, "ci", values)["fractions"] == [0.5]
    else:
        with pytest.raises(book.BookError, match=message):
            book.preset_parameters(ROOT, nb, "ci", values)


def test_a_malformed_p_value_is_one_error_line(monkeypatch, capsys):
    from grokcore.__main__ import main

    monkeypatch.setattr(book, "execute", lambda *a, **k: pytest.fail("the notebook was executed"))
    with pytest.raises(SystemExit) as stopped:
        main(["run", str(ROOT / "book/power2022/grokking.ipynb"), "-p", "fractions", "[0.3, 0.5"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert "error: -p fractions '[0.3, 0.5' is not valid YAML (line 1, column 10): expected ',' or ']'" in err, err


def test_preset_files_and_p_values_are_checked_alike(tmp_path):
    """A whole number where the notebook counts, items where it loops over a list, true or false
    where it switches: from a preset file as from -p."""
    params = "n = 3\nitems = [1, 2]\nflag = True\nword = 'learned'"
    demo_book(tmp_path, {"demo": "pass"}, preset="n: 4.0\nitems: [3]\nflag: false\n", params=params)
    nb = tmp_path / "book/demo/demo.ipynb"
    values = book.preset_parameters(tmp_path, nb, "ci")
    assert values == {"n": 4, "items": [3], "flag": False} and type(values["n"]) is int
    assert book.preset_parameters(tmp_path, nb, "ci", {"flag": True})["flag"] is True
    items = book.preset_parameters(tmp_path, nb, "ci", {"items": [2.0, 1e1]})["items"]
    assert items == [2, 10] and all(type(i) is int for i in items)  # as a whole number alone becomes one
    for text, message in [
        ("n: 2.5\n", r"n = 2.5 is not allowed for book/demo/demo.ipynb: must be a whole number, as its default 3 is"),
        ("items: []\n", r"items = \[\] .*: must be a list of at least one item, as its default \[1, 2\]"),
        ("items: [1, 2.5]\n", r"items = \[1, 2.5\] .*: each item must be a whole number, as its default \[1, 2\] is"),
        ("items: [x]\n", r"items = \['x'\] .*: each item must be a number, as its default \[1, 2\] is"),
        ("n: true\n", r"n = True is not allowed .*: must be a number"),  # a bool is an int, but not a count
        ("flag: 1\n", r"flag = 1 is not allowed .*: must be a boolean"),
        ("n:\n", r"n = None is not allowed .*: must be a number, not null \(YAML reads an empty value, ~ and null as null\)"),
        ("items: ~\n", r"items = None is not allowed .*: must be a list, not null"),
        ("word: off\n", r"word = False .*: must be a string \(YAML reads on, off, yes, no, true and false as booleans: quote the word for YAML, inside the shell's quotes, as in -p positions \"'off'\"\), as its default 'learned' is"),
    ]:
        (tmp_path / "parameters/demo/demo/ci.yaml").write_text(text)
        with pytest.raises(book.BookError, match=message):
            book.preset_parameters(tmp_path, nb, "ci")


def test_a_missing_preset_file_says_which_files_a_notebook_needs(tmp_path):
    demo_book(tmp_path, {"demo": "pass"})
    with pytest.raises(book.BookError) as error:
        book.preset_parameters(tmp_path, tmp_path / "book/demo/demo.ipynb", "cpu")
    assert str(error.value) == (
        "book/demo/demo.ipynb has no 'cpu' preset: parameters/demo/demo/cpu.yaml is missing (each notebook has ci.yaml, "
        "cpu.yaml, paper.yaml in parameters/demo/demo, setting the same parameters; ci.yaml repeats the notebook's parameters cell)"
    )


def _no_kernel(monkeypatch):
    import papermill

    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: pytest.fail("a notebook was executed"))


@pytest.mark.parametrize(
    "text, words",
    [
        ("x: [1, 2\n", ["is not valid YAML (line 2, column 1)"]),
        ("- 1\n", ["must map parameter names to values", "list"]),
        ("1: 2\nx: 3\n", ["must map parameter names to values", "are not all names"]),
        ("x: 2\nxx: 3\n", ["unknown parameter 'xx' for book/demo/broken.ipynb; allowed: x"]),
    ],
    ids=["malformed", "not-a-mapping", "a-number-for-a-name", "unknown-name"],
)
def test_book_run_refuses_a_bad_preset_file_before_executing_any_notebook(tmp_path, monkeypatch, capsys, text, words):
    """Every notebook's preset is checked first: a typo in the last one's is an error at once,
    not after hours of the notebooks before it."""
    from grokcore.__main__ import main

    demo_book(tmp_path, {"fine": "y = x + 1", "broken": "y = x"})  # the broken one comes last
    (tmp_path / "parameters/demo/broken/ci.yaml").write_text(text)
    _no_kernel(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(["book", "run", "--preset", "ci"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    failed = err.split("error: ")[1]
    assert failed.startswith("book/demo/broken.ipynb, parameters: "), err
    assert all(w in failed for w in words), err
    assert "Traceback" not in err and not (tmp_path / "_build").exists()


def test_run_book_names_every_notebook_with_a_bad_preset(tmp_path, monkeypatch):
    demo_book(tmp_path, {"a": "pass", "b": "pass", "c": "pass"})
    (tmp_path / "parameters/demo/b/ci.yaml").write_text("x: 2.5\n")
    (tmp_path / "parameters/demo/c/ci.yaml").write_text("y: 1\n")
    _no_kernel(monkeypatch)
    with pytest.raises(book.BookError) as refused:
        book.run_book("ci", root=tmp_path)
    lines = str(refused.value).splitlines()
    assert len(lines) == 2 and "book/demo/a.ipynb" not in str(refused.value)
    assert lines[0].startswith("book/demo/b.ipynb, parameters: x = 2.5 is not allowed for book/demo/b.ipynb")
    assert lines[1].startswith("book/demo/c.ipynb, parameters: unknown parameter 'y' for book/demo/c.ipynb")


def test_run_book_reads_each_preset_once(tmp_path, monkeypatch):
    """The values checked up front are the ones the notebook runs with; nothing is read twice."""
    import papermill

    demo_book(tmp_path, {"a": "pass", "b": "pass"})
    (tmp_path / "parameters/demo/b/ci.yaml").write_text("x: 3\n")
    read, ran = [], []
    real = book.preset_parameters
    monkeypatch.setattr(book, "preset_parameters", lambda root, nb, *a: read.append(nb.stem) or real(root, nb, *a))

    def run(src, dst, parameters, **_):
        ran.append((Path(src).stem, parameters))
        Path(dst).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", run)
    assert book.run_book("ci", root=tmp_path) == []
    assert read == ["a", "b"] and ran == [("a", {"x": 2}), ("b", {"x": 3})]


def test_book_checks_for_jupyter_book_before_executing_a_notebook(monkeypatch, capsys):
    """jupyter-book is an extra (pip install -e . leaves it out): say so before hours of notebooks."""
    from grokcore.__main__ import main

    monkeypatch.setitem(sys.modules, "jupyter_book", None)  # not importable
    monkeypatch.setattr(book, "run_book", lambda *a, **k: pytest.fail("a notebook was executed"))
    monkeypatch.chdir(ROOT)
    for action in ("all", "build"):
        assert main(["book", action, "--preset", "ci"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "jupyter-book" in err and 'pip install -e ".[book]"' in err, err


def test_the_build_names_where_the_pages_end_up(tmp_path, capfd):
    """jupyter-book builds in a staging folder and says so at the end; the pages are then moved,
    so every path it prints must be the one they are moved to."""
    demo_book(tmp_path, {"fine": "y = x + 1"})
    (tmp_path / "_config.yml").write_text('title: demo\nexecute:\n  execute_notebooks: "off"\n')
    index = book.build_html("ci", root=tmp_path)
    assert index == tmp_path / "_build" / "html-ci" / "index.html" and index.exists()
    out = capfd.readouterr().out
    assert "_build/html-ci/index.html" in out and f"file://{index}" in out, out
    assert "stage/ci/_build/html" not in out, out  # the staging folder's own name may appear


def test_the_build_names_notebooks_edited_since_they_ran(tmp_path, capsys):
    """An executed copy older than its notebook or its preset file shows what ran then: said."""
    demo_book(tmp_path, {"kept": "y = x", "edited": "y = x", "preset": "y = x"})
    (tmp_path / "_config.yml").write_text("title: [unclosed\n")  # the warnings come first; no pages needed
    for name, (source, preset) in {"kept": (1, 1), "edited": (3, 1), "preset": (1, 3)}.items():
        src = tmp_path / f"book/demo/{name}.ipynb"
        executed = book.executed_path(tmp_path, src, "ci")
        executed.parent.mkdir(parents=True, exist_ok=True)
        executed.write_bytes(src.read_bytes())
        for path, t in ((src, source), (book.preset_file(tmp_path, src, "ci"), preset), (executed, 2)):
            os.utime(path, (1e9 + t, 1e9 + t))
    with pytest.raises(book.BookError, match="jupyter-book build failed"):
        book.build_html("ci", root=tmp_path)
    assert ("warning: edited (the notebook or its ci.yaml) since last executed at preset 'ci', shown as they ran "
            "then: book/demo/edited.ipynb, book/demo/preset.ipynb;") in capsys.readouterr().out


def test_a_failed_html_build_is_an_error_line_after_the_notebooks_failures(tmp_path, monkeypatch, capsys):
    from grokcore.__main__ import main

    demo_book(tmp_path, {"fine": "y = x + 1"})
    (tmp_path / "_config.yml").write_text("title: [unclosed\n")  # jupyter-book cannot read it
    failure = book.Failure("book/demo/fine.ipynb", "In [3]", "ValueError: boom")
    monkeypatch.setattr(book, "run_book", lambda *a, **k: [failure])
    monkeypatch.chdir(tmp_path)
    assert main(["book", "all", "--preset", "ci"]) == 1
    err = capsys.readouterr().err
    assert "error: jupyter-book build failed (exit 1)" in err and f"1 notebook(s) failed:\n  {failure}" in err, err
    assert main(["book", "build", "--preset", "ci"]) == 1
    assert "error: jupyter-book build failed (exit 1)" in capsys.readouterr().err


@pytest.mark.parametrize("signum, stop", [(signal.SIGTERM, book.Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_before_the_kernel_starts_stops_at_once(tmp_path, monkeypatch, signum, stop):
    """With no kernel yet to pass it to, SIGTERM or Ctrl-C stops the command instead of being
    lost while the notebook runs to the end (until SLURM's SIGKILL)."""
    import papermill

    demo_book(tmp_path, {"slow": "import time\ntime.sleep(60)"})
    real = papermill.execute_notebook

    def signalled_first(*args, **kwargs):
        os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(papermill, "execute_notebook", signalled_first)
    t0 = time.monotonic()
    with pytest.raises(stop):
        book.execute(tmp_path, tmp_path / "book/demo/slow.ipynb", "ci")
    assert time.monotonic() - t0 < 30
    assert not book.executed_path(tmp_path, tmp_path / "book/demo/slow.ipynb", "ci").exists()


TRAIN_FOREVER = """
import grokcore as gc
config = gc.RunConfig(name="sigterm", task=gc.AlgorithmicTask(op="x+y", p=11), steps=10**7, checkpoints=0,
                      model=gc.Transformer(n_layers=1, d_model=16, n_heads=2, d_mlp=32))
gc.train(config)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_to_the_cli_saves_the_kernels_run(tmp_path, signum):
    """A SLURM time limit signals the command, not the kernel (it runs in its own session): the
    command passes SIGTERM on, the run saves its state, and the command says how to resume.
    Ctrl-C likewise, without a traceback."""
    demo_book(tmp_path, {"train": TRAIN_FOREVER})
    runs = tmp_path / "runs"
    # The command's own default for progress (the test session turns it off).
    env = {k: v for k, v in os.environ.items() if k != "GROKCORE_PROGRESS"} | {"GROKCORE_RUNS": str(runs), "OMP_NUM_THREADS": "1"}
    cli = subprocess.Popen(
        [sys.executable, "-m", "grokcore", "run", "book/demo/train.ipynb", "--preset", "ci"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 120
    while not list(runs.glob("sigterm-*/config.json")) and time.monotonic() < deadline and cli.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the training loop
    cli.send_signal(signum)
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 128 + signum, err
    assert err.strip().splitlines()[-1].startswith("stopped by"), err  # a message, not a traceback
    # While it ran, the log showed the cells and training's progress (kept out of the page).
    assert "Executing Cell 2" in out and "sigterm-" in err and ": step 0 of 10,000,000" in err
    (run,) = runs.glob("sigterm-*")
    assert (run / "state.pt").exists() and not (run / "DONE").exists(), err
    assert "resume" in err
    executed = book.executed_path(tmp_path, tmp_path / "book/demo/train.ipynb", "ci")
    assert book.failed_path(executed).exists() and not executed.exists()
    assert "step 0 of" not in book.failed_path(executed).read_text()


def test_help_shows_working_examples_and_what_the_presets_are(capsys):
    """`python -m grokcore --help` ends with examples; the notebooks they name exist, and each
    command's --preset says what ci, cpu and paper are."""
    from grokcore.__main__ import main

    with pytest.raises(SystemExit) as shown:
        main(["--help"])
    out = capsys.readouterr().out
    assert shown.value.code == 0 and "examples:" in out
    named = [word for word in out.split() if word.endswith(".ipynb")]
    assert named and all((ROOT / word).exists() for word in named), named
    for command in (["book"], ["run"], ["slurm"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "ci (seconds), cpu (minutes on a laptop), paper (the papers' settings, for a GPU)" in " ".join(capsys.readouterr().out.split())


def test_a_killed_runs_partial_notebook_is_removed_by_the_next_run_on_its_host(tmp_path):
    """SIGKILL leaves the partial notebook papermill was writing. The next run of that notebook
    removes it if its process is gone from this host; a live process's, another host's (whose
    process may live) and another notebook's stay."""
    out = tmp_path / "_build" / "executed" / "cpu" / "nb.ipynb"
    out.parent.mkdir(parents=True)
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    stale = book.partial_path(out, finished.pid)
    kept = [
        book.partial_path(out, os.getpid()),
        book.partial_path(out, finished.pid, host="another-node"),
        book.partial_path(out.with_name("nb2.ipynb"), finished.pid),
    ]
    for path in [stale, *kept]:
        path.write_text("{}")
    book.remove_stale_partials(out)
    assert not stale.exists()
    assert all(path.exists() for path in kept)

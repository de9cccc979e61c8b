"""Every notebook of the book: present, parameterised by the ci preset, committed clean."""

import ast
import json
import re
import subprocess
import sys
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


def test_cli_finds_the_notebooks_repository_from_anywhere(tmp_path, monkeypatch):
    from grokcore.__main__ import main

    calls = []
    monkeypatch.setattr(book, "execute", lambda root, nb, preset, overrides, **_: calls.append((root, nb, overrides)))
    monkeypatch.chdir(tmp_path)
    nb = ROOT / "book/power2022/grokking.ipynb"
    assert main(["run", str(nb), "--preset", "ci", "-p", "seeds", "2"]) == 0
    assert calls == [(ROOT, nb, {"seeds": 2})]
    # YAML 1.1 reads 1e-3 (no dot) as a string; on the command line it is the number.
    main(["run", str(nb), "-p", "lr", "1e-3", "-p", "fractions", "[0.5, 1e-1]", "-p", "op", "x/y"])
    assert calls[-1][2] == {"lr": 0.001, "fractions": [0.5, 0.1], "op": "x/y"}


def test_cli_refuses_what_it_cannot_run_in_one_line(tmp_path, monkeypatch, capsys):
    from grokcore.__main__ import main

    stray = tmp_path / "stray.ipynb"
    stray.write_text((ROOT / "book/power2022/grokking.ipynb").read_text())
    monkeypatch.chdir(tmp_path)
    for argv, message in [
        (["run", str(stray)], "no _toc.yml in"),
        (["run", str(ROOT / "README.md")], "is not in " + str(ROOT / "book")),
        (["book", "run"], "no _toc.yml in"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_papermill_stops_at_once_on_an_impossible_value(tmp_path):
    nb = ROOT / "book/power2022/grokking.ipynb"
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(nb), str(tmp_path / "out.ipynb"), "-p", "train_fraction", "1.5"],
        capture_output=True,
        text=True,
        cwd=nb.parent,
        timeout=300,
    )
    assert done.returncode != 0
    assert "train_fraction = 1.5 is not allowed" in done.stderr + done.stdout
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    assert not any(
        "gc.train(" in "".join(c["source"]) and c.get("outputs") for c in executed["cells"] if c["cell_type"] == "code"
    ), "training started before the parameters were checked"


def test_book_runner_reports_a_failing_notebook_and_goes_on(tmp_path):
    """A notebook that raises is reported with its cell and error; the next one still runs."""
    import nbformat

    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nchapters:\n  - file: book/demo/broken\n  - file: book/demo/fine\n"
    )
    (tmp_path / "intro.md").write_text("# demo\n")
    for name, body in [("broken", "raise ValueError('boom ' + str(x))"), ("fine", "y = x + 1")]:
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell("x = 1")
        params.metadata["tags"] = ["parameters"]
        nb.cells = [params, nbformat.v4.new_code_cell(body)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = tmp_path / "book" / "demo" / f"{name}.ipynb"
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
        preset = tmp_path / "parameters" / "demo" / name / "ci.yaml"
        preset.parent.mkdir(parents=True, exist_ok=True)
        preset.write_text("x: 2\n")
    failures = book.run_book("ci", root=tmp_path)
    assert len(failures) == 1
    assert failures[0].notebook == "book/demo/broken.ipynb"
    assert "ValueError: boom 2" in failures[0].error and failures[0].cell.startswith("cell")
    assert book.executed_path(tmp_path, tmp_path / "book/demo/fine.ipynb", "ci").exists()

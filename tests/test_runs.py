"""The run store's summary (``python -m grokcore runs``), read against the runs' own files."""

import csv
import json
import shutil

import pytest

import grokcore as gc
from grokcore import runs
from grokcore.__main__ import main
from test_train import small_config


def last_rows(path):
    """Each member's last history row, with the csv module."""
    last = {}
    with open(path / "history.csv") as f:
        for row in csv.DictReader(f):
            last[row["member"]] = row
    return list(last.values())


def test_summary_says_how_far_each_run_got(tmp_path):
    done = small_config(name="done", seeds=2)
    gc.train(done, root=tmp_path, progress=False)
    stopped = small_config(name="stopped", steps=40)
    gc.train(stopped, root=tmp_path, until=12, progress=False)
    empty = tmp_path / "empty-0000000000"  # a run whose process died before its first save
    empty.mkdir()
    shutil.copy(tmp_path / done.run_name / "config.json", empty / "config.json")

    frame = runs.summary(tmp_path).set_index("run")
    assert list(frame.index) == sorted([done.run_name, stopped.run_name, empty.name])

    row, rows = frame.loc[done.run_name], last_rows(tmp_path / done.run_name)
    assert row["status"] == "done" and row["members"] == 2 and row["steps"] == 30
    assert row["step"] == max(int(r["step"]) for r in rows) == 30
    assert abs(row["val_acc"] - sum(float(r["val_acc"]) for r in rows) / 2) < 1e-9
    with open(tmp_path / done.run_name / "history.csv") as f:
        best = {}
        for r in csv.DictReader(f):
            best[r["member"]] = max(best.get(r["member"], 0.0), float(r["val_acc"]))
    assert row["reached_99"] == sum(v >= 0.99 for v in best.values())
    assert row["wall_s"] > 0 and row["code"] == json.loads((tmp_path / done.run_name / "config.json").read_text())["code"]

    row = frame.loc[stopped.run_name]
    assert row["status"] == "stopped" and row["steps"] == 40
    assert row["step"] == max(int(r["step"]) for r in last_rows(tmp_path / stopped.run_name)) <= 12

    assert frame.loc[empty.name, "status"] == "empty"
    with runs.exclusive(tmp_path / stopped.run_name):  # as a training process holds it
        assert runs.summary(tmp_path).set_index("run").loc[stopped.run_name, "status"] == "training"


def test_runs_command_prints_a_table_or_markdown(tmp_path, capsys):
    config = small_config(name="cli")
    gc.train(config, root=tmp_path, progress=False)
    (tmp_path / "not-a-run").mkdir()
    capsys.readouterr()
    assert main(["runs", "--root", str(tmp_path)]) == 0
    header, line = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["run", "status", "members"]
    assert line.split()[:5] == [config.run_name, "done", "1", "30", "/"]
    assert main(["runs", "--root", str(tmp_path), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("| --- |") and lines[2].startswith(f"| {config.run_name} | done | 1 | 30 / 30 |")


def test_runs_command_refuses_a_missing_store(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["runs", "--root", str(tmp_path / "nowhere")])
    assert stop.value.code == 2
    assert "no run store at" in capsys.readouterr().err

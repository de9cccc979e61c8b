"""The run store's summary (``python -m grokcore runs``), read against the runs' own files."""

import csv
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from datetime import datetime

import pandas as pd
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
    assert header.split()[:5] == ["run", "status", "members", "last", "evaluated"]
    assert line.split()[:5] == [config.run_name, "done", "1", "30", "/"]
    # Created to the minute, in UTC as config.json records it; then the code's version.
    created = datetime.fromisoformat(json.loads((tmp_path / config.run_name / "config.json").read_text())["created"])
    assert line.split()[-3:-1] == [created.strftime("%Y-%m-%d"), created.strftime("%H:%M")]
    assert main(["runs", "--root", str(tmp_path), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("| --- |") and lines[2].startswith(f"| {config.run_name} | done | 1 | 30 / 30 |")


def test_a_bar_in_a_runs_name_stays_in_its_markdown_cell(tmp_path, capsys):
    gc.train(small_config(name="a|b"), root=tmp_path, progress=False)
    capsys.readouterr()
    assert main(["runs", "--root", str(tmp_path), "--markdown"]) == 0
    header, _, line = capsys.readouterr().out.splitlines()
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
    assert len(cells) == header.count("|") - 1 and cells[0].startswith("a\\|b-")


def test_runs_command_says_when_the_store_is_empty(tmp_path, capsys):
    assert main(["runs", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"no runs in {tmp_path}\n"


def test_runs_command_refuses_a_missing_store(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["runs", "--root", str(tmp_path / "nowhere")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"no run store at {tmp_path / 'nowhere'} (from --root)" in err


def test_odd_run_folders_get_a_row_not_a_crash(tmp_path, capsys):
    """Members counted by hand; an empty DONE (written last, so briefly empty), a history
    without val_acc, and a config.json that is not JSON each still give a row."""
    config = small_config(name="odd", seeds=3)
    gc.train(config, root=tmp_path, progress=False)
    done = tmp_path / config.run_name
    for name, history in {
        "hand-0000000001": "member,seed,step,train_acc,val_acc\n0,0,5,1.0,0.99\n1,1,5,1.0,0.98\n2,2,5,1.0,1.0\n2,2,9,1.0,0.5\n",
        "noval-0000000002": "member,seed,step,train_acc\n0,0,5,1.0\n",
    }.items():
        (tmp_path / name).mkdir()
        shutil.copy(done / "config.json", tmp_path / name / "config.json")
        (tmp_path / name / "history.csv").write_text(history)
        (tmp_path / name / "DONE").write_text("")
    (tmp_path / "broken-0000000003").mkdir()
    (tmp_path / "broken-0000000003" / "config.json").write_text("{not json")

    frame = runs.summary(tmp_path).set_index("run")
    hand = frame.loc["hand-0000000001"]
    # member 0 reached exactly 0.99 and member 2 1.0 (later 0.5); member 1 never reached 0.99
    assert hand["reached_99"] == 2 and hand["step"] == 9 and hand["status"] == "done" and pd.isna(hand["wall_s"])
    assert abs(hand["val_acc"] - (0.99 + 0.98 + 0.5) / 3) < 1e-12
    noval = frame.loc["noval-0000000002"]
    assert pd.isna(noval["val_acc"]) and pd.isna(noval["reached_99"]) and noval["train_acc"] == 1.0
    assert frame.loc["broken-0000000003", "status"].startswith("unreadable: JSONDecodeError")

    capsys.readouterr()
    assert main(["runs", "--root", str(tmp_path)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["hand-0000000001"].split()[1:7] == ["done", "3", "9", "/", "30", "1.000"]
    assert "2 / 3" in lines["hand-0000000001"] and "3.0" not in lines["hand-0000000001"]
    assert lines["broken-0000000003"].split()[1] == "unreadable:"
    assert lines["hand-0000000001"].split()[-4] == "-"  # wall s (before created and code): DONE is still empty


def test_a_glance_at_the_lock_does_not_stop_a_run_from_starting(tmp_path):
    """`runs` takes a run's lock for an instant; a run starting just then waits, it does not fail."""
    config = small_config(name="glance")
    path = tmp_path / config.run_name
    path.mkdir()
    (path / ".lock").touch()
    glance = open(path / ".lock")
    fcntl.flock(glance, fcntl.LOCK_SH)
    threading.Timer(0.3, glance.close).start()  # closing the file lets the lock go
    assert gc.train(config, root=tmp_path, progress=False).done


@pytest.mark.parametrize("race", [False, True], ids=["folder-there", "both-made-it"])
def test_a_run_being_trained_elsewhere_is_refused_and_left_alone(tmp_path, monkeypatch, race):
    """Another process holds the lock: train() refuses after its second of grace, and leaves
    that process's folder and lock file where they are, also when both processes found no
    folder and made it at once (the one refused must not clean up as if the folder were its own)."""
    config = small_config(name="busy")
    path = tmp_path / config.run_name
    other = []  # the other process's open lock file

    def take_the_lock():
        other.append(open(path / ".lock", "a"))
        flock(other[0], fcntl.LOCK_EX)

    flock = fcntl.flock
    if race:  # the other process takes the lock between our mkdir and our first try

        def other_first(f, operation):
            if not other:
                take_the_lock()
            return flock(f, operation)

        monkeypatch.setattr(fcntl, "flock", other_first)
    else:
        path.mkdir()
        take_the_lock()
    with pytest.raises(RuntimeError, match="^another process is training"):
        gc.train(config, root=tmp_path, progress=False)
    assert sorted(p.name for p in path.iterdir()) == [".lock"]
    other[0].close()


def test_the_store_writes_whole_files_readable_by_the_group(tmp_path, monkeypatch):
    """Every file lands by rename: no temporary file is left after a run, a write that fails
    part-way leaves the previous file whole, and files get the umask's mode (mkstemp's 0600
    would hide runs from the rest of a group on a cluster)."""
    mask = os.umask(0o027)
    try:
        run = gc.train(small_config(name="atomic"), root=tmp_path, progress=False)
    finally:
        os.umask(mask)
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []
    assert (run.path / "config.json").stat().st_mode & 0o777 == 0o640
    if sys.platform == "linux":  # read, not set for an instant to 0: other threads' files stay safe
        monkeypatch.setattr(runs.os, "umask", None)
        assert runs._umask() == mask
    before = (run.path / "config.json").read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        runs.atomic_write_text(run.path / "config.json", "{}")
    assert (run.path / "config.json").read_bytes() == before
    assert [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")] == []


def test_a_resumed_run_removes_the_temporary_files_of_a_killed_writer(tmp_path):
    """kill -9 in the middle of an atomic write leaves the writer's temporary file (as large as
    the state); the next process to train the run removes it, and nothing else."""
    config = small_config(name="killed", steps=40)
    path = gc.train(config, root=tmp_path, until=20, progress=False).path
    stale = [path / ".state.pt.k2x9.tmp", path / "checkpoints" / ".step_0000030.pt.q81z.tmp"]
    for file in stale:
        file.write_bytes(b"half a state")
    kept = sorted(path.glob("checkpoints/step_*.pt"))  # the run's own files stay
    run = gc.train(config, root=tmp_path, progress=False)
    assert run.done
    assert not any(file.exists() for file in stale)
    assert kept and all(file.exists() for file in kept)


def test_a_write_syncs_the_file_then_its_folder(tmp_path, monkeypatch):
    """The file's bytes reach the disk before the rename, and the rename itself after it (its
    folder synced), as does a folder the write makes; a file system that cannot sync a folder
    does not fail the write, but a sync that fails does."""
    synced = []
    real_fsync = os.fsync

    def record(fd):
        info = os.fstat(fd)
        synced.append(info.st_ino if stat.S_ISDIR(info.st_mode) else info.st_size)
        real_fsync(fd)

    monkeypatch.setattr(runs.os, "fsync", record)
    runs.atomic_write_text(tmp_path / "run" / "checkpoints" / "history.csv", "step\n1\n")
    inode = {name: (tmp_path / name).stat().st_ino for name in ("", "run", "run/checkpoints")}
    assert synced == [inode[""], inode["run"], len("step\n1\n"), inode["run/checkpoints"]]
    synced.clear()
    runs.atomic_write_text(tmp_path / "run" / "checkpoints" / "history.csv", "step\n2\n")
    assert synced == [len("step\n2\n"), inode["run/checkpoints"]]

    def folder_sync_fails(code):
        def fsync(fd):
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise OSError(code, os.strerror(code))
        return fsync

    monkeypatch.setattr(runs.os, "fsync", folder_sync_fails(errno.EINVAL))  # e.g. some network file systems
    runs.atomic_write_text(tmp_path / "run" / "checkpoints" / "history.csv", "step\n3\n")
    assert (tmp_path / "run" / "checkpoints" / "history.csv").read_text() == "step\n3\n"
    monkeypatch.setattr(runs.os, "fsync", folder_sync_fails(errno.EIO))
    with pytest.raises(OSError, match=os.strerror(errno.EIO)):
        runs.atomic_write_text(tmp_path / "run" / "checkpoints" / "history.csv", "step\n4\n")


def test_the_code_version_names_the_commit_and_whether_the_checkout_differs(tmp_path):
    """A run records the commit it ran from; edited tracked files add -dirty (the code was not
    that commit's), new untracked files do not; outside a checkout, the version alone."""
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()

    assert runs.code_version(tmp_path) == gc.__version__
    git("init", "-q")
    (tmp_path / "model.py").write_text("width = 128\n")
    git("add", "model.py")
    git("commit", "-q", "-m", "a model")
    commit = git("rev-parse", "--short=7", "HEAD")
    assert runs.code_version(tmp_path) == f"{gc.__version__}+{commit}"
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert runs.code_version(tmp_path) == f"{gc.__version__}+{commit}"
    (tmp_path / "model.py").write_text("width = 256\n")
    assert runs.code_version(tmp_path) == f"{gc.__version__}+{commit}-dirty"

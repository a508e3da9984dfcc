"""The run directory keeps users' files safe and never gets stuck.

--overwrite replaces only a zocli run; a failed creation leaves nothing that blocks the next attempt;
one writer at a time; a run whose directory vanishes stops; a damaged or symlinked run is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zocli.cli import app
from zocli.run import files
from zocli.run.checkpoint import save_task
from zocli.run.files import RunDirError
from zocli.run.lock import LOCK_NAME
from zocli.run.rundir import RunDir

IDENTITY = {"zocli_version": "test", "config": {}}
RUNNER = CliRunner(env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})


def zocli(*args) -> tuple[int, str]:
    result = RUNNER.invoke(app, [str(a) for a in args], prog_name="zocli")
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"unhandled {type(result.exception).__name__}: {result.exception}"
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 0 or len(lines) == 1, result.stderr
    return result.exit_code, result.stderr


def a_run(root: Path, tasks: int = 1) -> RunDir:
    """A finished-looking run with `tasks` committed tasks; its lock released."""
    run = RunDir.create(root, IDENTITY)
    run.log({"event": "eval", "task": 0})
    for task in range(tasks):
        save_task(run, task, {}, {})
    run.release()
    return run


def train_into(out: Path, data: Path, *extra) -> tuple[int, str]:
    return zocli("train", "--preset", "demo", "--data-root", data, "--max-steps", 1, "--out", out, *extra)


# ---------------------------------------------------------------------------------------------- 1: --overwrite


def test_overwrite_refuses_a_hugging_face_model_folder(tmp_path, digits_root):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["BertModel"]}')
    (model / "weights.bin").write_text("x")
    code, err = train_into(model, digits_root, "--overwrite")
    assert code == 1 and "not one" in err
    assert (model / "weights.bin").read_text() == "x" and len(list(model.iterdir())) == 2


def test_overwrite_refuses_the_current_directory_and_its_parents(tmp_path, digits_root, monkeypatch):
    run = a_run(tmp_path / "run")
    (run.root / "sub").mkdir()
    # '.' is refused as a flag value (usage, 2); '..' names a directory, which --overwrite refuses (1)
    for cwd, out, expected in ((run.root, ".", 2), (run.root / "sub", "..", 1)):
        monkeypatch.chdir(cwd)
        code, err = train_into(Path(out), digits_root, "--overwrite")
        assert code == expected and "current directory" in err
    assert run.task_file(0).is_file()


def test_overwrite_refuses_a_symlink(tmp_path, digits_root):
    run = a_run(tmp_path / "run")
    (tmp_path / "link").symlink_to(run.root)
    code, err = train_into(tmp_path / "link", digits_root, "--overwrite")
    assert code == 1 and "symbolic link" in err
    assert run.task_file(0).is_file()


def test_overwrite_refuses_a_run_holding_files_zocli_did_not_write(tmp_path):
    run = a_run(tmp_path / "run")
    (run.root / "notes.txt").write_text("my analysis")
    (run.checkpoints / "best.pt").write_text("mine")
    with pytest.raises(RunDirError, match=r"best.pt. and 1 more"):
        RunDir.create(run.root, IDENTITY, overwrite=True)
    assert (run.root / "notes.txt").read_text() == "my analysis" and run.task_file(0).is_file()


def test_overwrite_replaces_a_run_and_nothing_of_the_old_one_survives(tmp_path):
    run = a_run(tmp_path / "run", tasks=2)
    (run.checkpoints / ".task_01.safetensors.abc123.tmp").write_bytes(b"half")
    with RunDir.create(run.root, {**IDENTITY, "zocli_version": "new"}, overwrite=True) as new:
        assert sorted(p.name for p in new.root.iterdir()) == [LOCK_NAME, "checkpoints", "config.json"]
        assert list(new.checkpoints.iterdir()) == []
        assert new.saved()["zocli_version"] == "new"


# ---------------------------------------------------------------------------------------------- 2: half-created


def test_a_config_error_found_while_building_leaves_no_directory(tmp_path, digits_root):
    out = tmp_path / "out"
    code, err = train_into(out, digits_root, "--vision", "zo", "--layers", "prefix", "--layers-n", 99)
    assert code == 2 and "--layers-n" in err
    assert not out.exists()


def test_a_failed_config_write_leaves_nothing_and_the_next_train_works(tmp_path, monkeypatch):
    out = tmp_path / "out"

    def disk_full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(files, "atomic_write", disk_full)
        with pytest.raises(RunDirError, match="No space left"):
            RunDir.create(out, IDENTITY)
    assert not out.exists()
    out.mkdir()  # the user made it: it stays, and is still usable
    with monkeypatch.context() as patch:
        patch.setattr(files, "atomic_write", disk_full)
        with pytest.raises(RunDirError):
            RunDir.create(out, IDENTITY)
    assert out.is_dir()
    RunDir.create(out, IDENTITY).release()


@pytest.mark.parametrize("leftover", ["killed-before-config", "older-zocli"])
def test_a_run_killed_before_its_config_is_reusable(tmp_path, leftover):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    if leftover == "killed-before-config":
        (out / LOCK_NAME).write_text("12345\n")
        (out / ".config.json.k2j3h4.tmp").write_text("{")
    RunDir.check_available(out)  # neither "not empty" nor "not a run"
    RunDir.create(out, IDENTITY).release()
    assert RunDir.open(out).saved() == IDENTITY


# ---------------------------------------------------------------------------------------------- 4: lock


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of a run at tmp_path/run."""
    run = a_run(tmp_path / "run")
    code = (
        "from zocli.run.rundir import RunDir\n"
        f"r = RunDir.open({str(run.root)!r}).locked()\n"
        "print('held', flush=True)\n"
        "input()"
    )
    with subprocess.Popen(  # leaving the block closes its pipes and waits for it
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    ) as proc:
        assert proc.stdout.readline().strip() == "held"
        yield run, proc.pid
        proc.kill()


def test_a_second_writer_is_refused_with_the_holders_pid(holder, digits_root):
    run, pid = holder
    for args in (
        ["train", "--resume", run.root],
        ["train", "--preset", "demo", "--data-root", digits_root, "--out", run.root, "--overwrite"],
    ):
        code, err = zocli(*args)
        assert code == 1 and f"in use by another zocli process (pid {pid})" in err
    with pytest.raises(RunDirError, match=str(pid)):
        RunDir.open(run.root).locked()
    assert run.task_file(0).is_file() and run.manifest.is_file()


def test_the_lock_goes_with_its_holder(holder):
    run, pid = holder
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    RunDir.open(run.root).locked().release()  # a killed holder leaves no stale lock


# ---------------------------------------------------------------------------------------------- 3: gone mid-run


@pytest.mark.parametrize("how", ["deleted", "moved"])
def test_a_run_whose_directory_vanishes_stops(tmp_path, digits_root, how):
    from conftest import tiny_config

    from zocli.resolve import resolve
    from zocli.run.train import run

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"

    def vanish(event):
        if event["event"] == "task_start" and event["task"] == 1:
            shutil.rmtree(out) if how == "deleted" else os.rename(out, elsewhere)

    assert tiny_config()  # the demo preset resolves
    flags = {"data_root": str(digits_root), "max_steps": 1, "inc": 5, "eval_batch_size": 512}
    with pytest.raises(RunDirError, match="deleted or moved"):
        run(resolve(["demo"], flags), out, on_event=vanish)
    assert not out.exists()  # nothing re-created
    if how == "moved":  # the moved run keeps its last commit, and can be resumed where it now lives
        assert json.loads((elsewhere / "checkpoints" / "manifest.json").read_text())["tasks_done"] == 1
        assert not (elsewhere / "summary.json").exists()


def test_writes_need_the_directory_in_place(tmp_path):
    run = RunDir.create(tmp_path / "run", IDENTITY)
    os.rename(run.root, tmp_path / "moved")
    run.root.mkdir()  # something else now at the path
    for write in (lambda: run.log({"event": "x"}), lambda: save_task(run, 0, {}, {})):
        with pytest.raises(RunDirError, match="deleted or moved"):
            write()
    assert list(run.root.iterdir()) == []


# ---------------------------------------------------------------------------------------------- 8-10


def test_a_log_cut_before_its_commit_point_is_refused(tmp_path):
    run = RunDir.create(tmp_path / "run", IDENTITY)
    run.log({"event": "train", "task": 0})
    committed = run.log_size()
    run.log({"event": "eval", "task": 0})
    run.truncate_log(committed)  # events after the commit point are dropped
    assert run.log_size() == committed
    os.truncate(run.metrics, committed - 5)  # cut mid-line
    with pytest.raises(RunDirError, match="cut or edited"):
        run.truncate_log(committed)
    with pytest.raises(RunDirError, match="cut or edited"):
        run.truncate_log(committed - 3)  # a length that does not end a line
    assert run.log_size() == committed - 5


@pytest.mark.parametrize("name", ["metrics.jsonl", "checkpoints"])
def test_symlinks_inside_a_run_are_refused(tmp_path, name):
    run = a_run(tmp_path / "run")
    target = tmp_path / "target"
    os.rename(run.root / name, target)
    (run.root / name).symlink_to(target)
    before = sorted(p.name for p in target.iterdir()) if target.is_dir() else target.read_bytes()
    code, err = zocli("train", "--resume", run.root)
    assert code == 1 and "symbolic link" in err
    assert (sorted(p.name for p in target.iterdir()) if target.is_dir() else target.read_bytes()) == before


def test_resume_validates_before_it_cleans(tmp_path):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / ".precious.abc.tmp").write_text("mine")
    code, err = zocli("train", "--resume", folder)
    assert code == 1 and "not a zocli run" in err
    assert (folder / ".precious.abc.tmp").read_text() == "mine"

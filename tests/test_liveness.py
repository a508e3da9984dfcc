"""A sweep stays inside its directory, never hangs, never lies about a run and never trains on a login node:
run names checked where they are read, attempts' liveness across hosts and pid reuse, --slurm without SLURM,
grids validated in full before any run starts, a recorded failure is the error line (zocli.sweep)."""

from __future__ import annotations

import json
import os
import time

import pytest
from test_errors import assert_one_line_error, invoke

from zocli.run.files import write_json
from zocli.sweep import directory, launch, liveness
from zocli.sweep.grid import Grid, expand

TINY = ["--preset", "digits-demo", "--grid", "inc=5", "--grid", "max_steps=1"]


@pytest.fixture
def sweep(tmp_path):
    """A two-run sweep created (no run started) with `--dry-run`'s plan made real by `create`."""
    runs = expand(Grid(("digits-demo",), {"inc": [5], "lr": [0.01, 0.003]}, (0,)))
    return directory.create(tmp_path / "s", runs)


@pytest.mark.parametrize("name", ["../x", "/tmp/x", ".hidden", "a/b", "a\\b", "", "..", 7])
def test_run_names_that_leave_the_sweep_are_refused_where_read(name, sweep, tmp_path):
    manifest = sweep.root / directory.MANIFEST
    saved = json.loads(manifest.read_text())
    saved["runs"][0]["name"] = name
    manifest.write_text(json.dumps(saved))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_one_line_error(invoke(["sweep", "--out", str(sweep.root), "--status"]), 1, "not a plain name")
    assert_one_line_error(invoke(["sweep", "--out", str(sweep.root)]), 1, "not a plain name")
    assert_one_line_error(invoke(["eval", str(sweep.root)]), 1, "not a plain name")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _attempt(sweep, name: str, **fields) -> None:
    record = {"action": "start", "started": time.time(), "where": "cpu #0", **fields}
    write_json(sweep.status_file(name), {"name": name, "attempts": [record]})


def test_an_attempt_on_another_host_is_unknown_and_taken_over_only_when_asked(sweep):
    name = sweep.runs[0].name
    _attempt(sweep, name, host="compute-17", pid=os.getpid(), pid_start=1)
    now = directory.state(sweep, name)
    assert now.state == "unknown" and "--takeover" in now.error and "compute-17" in now.error
    assert not launch._to_run(now, takeover=False) and launch._to_run(now, takeover=True)
    result = invoke(["sweep", "--out", str(sweep.root), "--status", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["counts"]["unknown"] == 1


def test_a_reused_pid_is_dead_and_a_live_attempt_is_running(sweep):
    name = sweep.runs[0].name
    me = liveness.identity(os.getpid())
    assert me["pid_start"] is not None
    _attempt(sweep, name, **me)
    assert directory.state(sweep, name).state == "running"
    _attempt(sweep, name, **{**me, "pid_start": me["pid_start"] - 1})  # the pid now belongs to another process
    assert directory.state(sweep, name).state == "pending"
    _attempt(sweep, name, **{**me, "boot": "another-boot"})  # the machine rebooted since
    assert directory.state(sweep, name).state == "pending"


def test_a_sweep_missing_its_logs_folder_is_repaired(sweep):
    for run in sweep.runs:  # every run under way elsewhere: the sweep starts nothing, but repairs first
        _attempt(sweep, run.name, host="compute-17", pid=1)
    (sweep.root / "logs").rmdir()
    launch.run_local(sweep, launch.local_slots(None, 1), poll=0)
    assert (sweep.root / "logs").is_dir()


def test_slurm_without_sbatch_refuses_in_one_line(sweep, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert_one_line_error(invoke(["sweep", "--out", str(sweep.root), "--slurm"]), 1, "no sbatch", "--slurm-local")
    assert not (sweep.root / "slurm").exists()


def test_grid_values_are_validated_for_every_run_before_the_first_starts(tmp_path):
    out = tmp_path / "s"
    args = ["sweep", *TINY, "--grid", "vision=zo", "--grid", "layers=prefix", "--grid", "layers-n=2,99"]
    assert_one_line_error(invoke([*args, "--out", str(out)]), 2, "--layers-n must be between 1 and 4", "99")
    assert not out.exists()


def test_a_huge_seed_range_is_refused_at_once(tmp_path):
    began = time.monotonic()
    result = invoke(["sweep", *TINY, "--seeds", "0-9999999", "--dry-run", "--out", str(tmp_path / "s")])
    assert_one_line_error(result, 2, "more than 10000 seeds")
    assert time.monotonic() - began < 5


def test_a_recorded_failure_is_the_error_line_never_a_box_border(tmp_path):
    log = tmp_path / "r.log"
    log.write_text(
        "=== 2024-01-01 start on cpu #0: zocli train ...\n"
        "Usage: zocli train [OPTIONS]\n"
        "Try 'zocli train --help' for help.\n"
        "╭─ Error ──────────────────────────────╮\n"
        "│ Invalid value for '--layers-n': 99   │\n"
        "╰──────────────────────────────────────╯\n"
    )
    assert directory._error_line(log, 2) == "exit 2: Invalid value for '--layers-n': 99"

"""zocli.sweep.grid, zocli.sweep.directory and zocli.sweep.launch: grids, a real 2 × 2 sweep killed with SIGKILL
and resumed, failures, SLURM through submitit's local executor; and seed groups (zocli.study.stats) checked
against the summaries by hand."""

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zocli.cli import app
from zocli.config import ConfigError
from zocli.resolve import resolve
from zocli.study import stats
from zocli.study.compare import Comparison, RunRow
from zocli.sweep import directory, launch
from zocli.sweep.grid import Grid, expand, load_grid, parse_axes, parse_seeds

# The smallest real runs: digits on random-init zocli-tiny, 2 tasks of 5 classes, 8 steps each.
TINY = [
    "--preset",
    "digits-demo",
    "--grid",
    "inc=5",
    "--grid",
    "epochs=1",
    "--grid",
    "max_steps=8",
    "--grid",
    "warmup_steps=2",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="zocli")


def sweep_command(root, data_root):
    return [
        sys.executable,
        "-m",
        "zocli",
        "sweep",
        *TINY,
        "--grid",
        "lr=0.01,0.003",
        "--seeds",
        "0-1",
        "--jobs",
        "2",
        "--out",
        str(root),
        "--data-root",
        str(data_root),
    ]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, digits_root):
    """2 configurations × 2 seeds, 2 workers: SIGKILL the sweep once the second pair has started, then run
    the same command again. What the first attempt left, and the sweep after the second."""
    root = tmp_path_factory.mktemp("sweep") / "s"
    first = subprocess.Popen(
        sweep_command(root, digits_root), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    second_pair = [root / "lr-0.003_s0", root / "lr-0.003_s1"]
    deadline = time.monotonic() + 120
    while not all((run / "config.json").is_file() for run in second_pair):  # the first pair is then done
        assert first.poll() is None and time.monotonic() < deadline, "the sweep ended before the kill"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    opened = directory.open_sweep(root)
    for name in (r.name for r in opened.runs):  # the orphaned runs commit and exit on their own (SIGTERM)
        for attempt in directory.attempts(opened, name):
            while _alive(attempt["pid"]):
                time.sleep(0.05)
    before = {r.name: (directory.state(opened, r.name), _mtime(root / r.name / "summary.json")) for r in opened.runs}
    again = subprocess.run(sweep_command(root, digits_root), env=ENV, capture_output=True, text=True)
    return root, before, again


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _mtime(path: Path):
    return path.stat().st_mtime_ns if path.is_file() else None


def test_rerun_does_only_the_missing_work(killed_and_resumed):
    root, before, again = killed_and_resumed
    assert again.returncode == 0, again.stderr
    opened = directory.open_sweep(root)
    assert {s.state for s in directory.states(opened)} == {"finished"}
    was = {name: state.state for name, (state, _) in before.items()}
    assert was["lr-0.01_s0"] == was["lr-0.01_s1"] == "finished" and "partial" in was.values()  # killed mid-way
    for name, (_, summary_mtime) in before.items():
        tries = directory.attempts(opened, name)
        if was[name] == "finished":  # untouched: no new attempt, the same summary file
            assert len(tries) == 1 and _mtime(root / name / "summary.json") == summary_mtime
        else:  # started by the killed sweep: continued through `train --resume`, not redone
            assert was[name] == "partial" and [t["action"] for t in tries] == ["start", "resume"]
            assert tries[0]["outcome"].startswith("unrecorded")
            # ... because the run stopped itself gracefully (SIGTERM as its parent died), committing first
            assert f"resume with: zocli train --resume {root / name}" in (root / "logs" / f"{name}.log").read_text()


def test_grouped_table_is_mean_and_std_of_the_summaries(killed_and_resumed):
    root = killed_and_resumed[0]
    result = cli("eval", root, "--json")
    assert result.exit_code == 0, result.output
    groups = {g["config"]["lr"]: g for g in json.loads(result.stdout)["groups"]}
    assert set(groups) == {0.01, 0.003}
    for lr, group in groups.items():
        summaries = [json.loads((root / f"lr-{lr}_s{s}" / "summary.json").read_text()) for s in (0, 1)]
        assert group["n"] == 2 and group["seeds"] == [0, 1]
        for key in ("last", "avg", "forgetting", "bwt", "wall_seconds"):
            values = [s[key] for s in summaries]
            assert group[key]["mean"] == pytest.approx(statistics.mean(values))
            assert group[key]["std"] == pytest.approx(statistics.stdev(values))
        peaks = [s["peak_memory"]["bytes"] for s in summaries]
        assert group["peak_memory_bytes"]["mean"] == pytest.approx(statistics.mean(peaks))
    table = cli("eval", root, "--markdown").stdout.splitlines()
    # rows named by the flags that vary (found: raw values, Python True/None in Markdown and LaTeX)
    assert table[0].startswith("| configuration | n | Last |") and len(table) == 4
    assert any("--lr 0.01" in line for line in table) and any("--lr 0.003" in line for line in table)
    latex = cli("eval", root, "--latex").stdout
    assert latex.startswith("\\begin{tabular}{lrrrrrrr}") and " $\\pm$ " in latex
    csv_text = cli("eval", root, "--csv").stdout
    for literal in ("True", "False", "None"):
        assert literal not in table and literal not in latex and literal not in csv_text
    pytest.importorskip("matplotlib")
    assert cli("eval", root, "--plot", root.parent / "curves.png").exit_code == 0
    assert (root.parent / "curves.png").stat().st_size > 0


def test_sweep_state_as_json(killed_and_resumed):
    root = killed_and_resumed[0]
    state = json.loads(cli("sweep", "--out", root, "--status", "--json").stdout)
    assert state["counts"]["finished"] == 4 and len(state["runs"]) == 4
    assert all(run["state"] == "finished" and run["tasks_done"] == 2 for run in state["runs"])


def test_a_failed_run_is_recorded_and_does_not_stop_the_others(tmp_path):
    # cifar100 is not prepared under an empty data root: that run fails at once (before torch is imported)
    root = tmp_path / "s"
    result = cli("sweep", "--grid", "benchmark=cifar100,nope", "--out", root, "--data-root", tmp_path, "--json")
    assert result.exit_code == 2 and "nope" in result.stderr  # a bad grid value: usage error, nothing ran
    assert not root.exists()
    # one worker: the second run starts only after the first has failed
    result = cli("sweep", "--grid", "benchmark=cifar100,tinyimg", "--out", root, "--data-root", tmp_path, "--json")
    assert result.exit_code == 1
    runs = json.loads(result.stdout)["runs"]
    assert [(r["name"], r["state"], r["attempts"]) for r in runs] == [
        ("benchmark-cifar100_s0", "failed", 1),
        ("benchmark-tinyimg_s0", "failed", 1),
    ]
    assert all("is not prepared" in r["error"] and "zocli prepare" in r["error"] for r in runs)


def test_submitit_local_executor_runs_the_same_attempts(tmp_path, digits_root):
    pytest.importorskip("submitit")
    grid = Grid(("digits-demo",), {"inc": [10], "epochs": [1], "max_steps": [1]}, (0, 1))
    opened = directory.create(tmp_path / "s", expand(grid), str(digits_root))
    jobs = launch.submit(opened, launch.SlurmOptions(gpus=0, cpus=1, time_min=5), cluster="local")
    assert [job.result()["state"] for _, job in jobs] == ["finished", "finished"]
    for name in ("s0", "s1"):
        (attempt,) = directory.attempts(opened, name)
        assert attempt["action"] == "start" and attempt["where"].startswith("slurm") and attempt["returncode"] == 0
    assert launch.submit(opened, launch.SlurmOptions(gpus=0), cluster="local") == []  # nothing left to do


# ---------------------------------------------------------------------------------------------- grids


def test_grid_expands_axes_times_seeds_with_names_of_what_varies():
    runs = expand(Grid(("digits-demo",), {"preset": ["fo", "vision-zo+lora"], "lr": [0.01], "mozo": [False]}, (0, 1)))
    assert [r.name for r in runs] == ["fo_s0", "fo_s1", "vision-zo+lora_s0", "vision-zo+lora_s1"]
    assert runs[2].presets == ("digits-demo", "vision-zo", "lora") and runs[2].flags == {
        "lr": 0.01,
        "mozo": False,
        "seed": 0,
    }
    assert runs[2].train_args()[-5:] == ["--lr", "0.01", "--no-mozo", "--seed", "0"]


def test_grid_values_take_their_flags_types_and_bad_ones_are_usage_errors(tmp_path):
    assert parse_axes(["lr=1e-3,3e-3", "conservative=false", "layers-n=none,4"]) == {
        "lr": [1e-3, 3e-3],
        "conservative": [False],
        "layers_n": [None, 4],
    }
    assert parse_seeds("0-2,7") == (0, 1, 2, 7)
    for bad in (["learning_rate=1"], ["lr"], ["inc=ten"], ["seed=1,2"]):
        with pytest.raises(ConfigError):
            parse_axes(bad)
    with pytest.raises(ConfigError, match="vision"):
        expand(Grid(("digits-demo",), {"vision": ["sideways"]}))
    (tmp_path / "g.toml").write_text('presets = ["digits-demo"]\nseeds = "0-2"\nepochs = 1\n[grid]\nlr = [0.1, 0.2]\n')
    grid = load_grid(tmp_path / "g.toml")
    assert (
        grid.presets == ("digits-demo",) and grid.seeds == (0, 1, 2) and grid.axes == {"epochs": [1], "lr": [0.1, 0.2]}
    )


def test_dry_run_lists_commands_and_writes_nothing(tmp_path):
    result = cli(
        "sweep", *TINY, "--grid", "lr=0.1,0.2", "--seeds", "0-1", "--out", tmp_path / "s", "--dry-run", "--json"
    )
    plan = json.loads(result.stdout)["runs"]
    assert [p["name"] for p in plan] == ["lr-0.1_s0", "lr-0.1_s1", "lr-0.2_s0", "lr-0.2_s1"]
    assert plan[3]["command"][2:4] == ["zocli", "train"] and "--seed" in plan[3]["command"]
    assert not (tmp_path / "s").exists()


def test_sweep_takes_train_flags_as_values_fixed_for_every_run(tmp_path):
    # Found: `zocli sweep --preset demo --max-steps 3` was refused (No such option).
    result = cli(
        "sweep", "--preset", "demo", "--max-steps", "3", "--seeds", "0-4", "--out", tmp_path / "s", "--dry-run"
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if re.match(r"s\d+: ", line)]
    assert [line.split(":")[0] for line in lines] == [f"s{seed}" for seed in range(5)]
    assert all("--preset demo --max-steps 3 --seed" in line for line in lines)
    plan = json.loads(
        cli(
            "sweep", "--preset", "demo", "--no-mozo", "--aggressive", "--grid", "eval-future=true,false",
            "--layers-n", "none", "--out", tmp_path / "s", "--dry-run", "--json",
        ).stdout
    )["runs"]  # fmt: skip
    assert [run["name"] for run in plan] == ["eval-future-True_s0", "eval-future-False_s0"]
    assert plan[1]["command"][4:12] == [
        "--preset", "demo", "--layers-n", "none", "--no-mozo", "--aggressive", "--no-eval-future", "--seed",
    ]  # fmt: skip
    assert not (tmp_path / "s").exists()


def test_a_key_both_fixed_and_gridded_is_a_usage_error(tmp_path):
    result = cli("sweep", "--preset", "demo", "--lr", "0.1", "--grid", "lr=0.1,0.2", "--out", tmp_path / "s")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --lr is given both as a flag and as --grid lr: give its values in one place"
    )


def test_a_sweep_directory_refuses_another_config_under_a_known_name(tmp_path):
    runs = expand(Grid(("digits-demo",), {"lr": [0.1]}))
    directory.create(tmp_path / "s", runs)
    directory.create(tmp_path / "s", runs + expand(Grid(("digits-demo",), {"lr": [0.1]}, (1,))))  # extends
    assert [r.name for r in directory.open_sweep(tmp_path / "s").runs] == ["s0", "s1"]
    with pytest.raises(directory.SweepError, match="another config"):
        directory.create(tmp_path / "s", expand(Grid(("digits-demo",), {"lr": [0.2]})))


# ---------------------------------------------------------------------------------------------- groups


def _row(run, seed, last, **config):
    cfg = {**resolve(["digits-demo"], {"seed": seed, **config}).config.as_dict()}
    return RunRow(run, cfg, 2, 2, last, last, 0.0, 0.0, [last + 1, last], None, 1.0)


def test_runs_differing_only_by_seed_form_one_group():
    rows = (
        _row("a", 0, 10.0),
        _row("b", 1, 20.0),
        _row("c", 0, 50.0, lr=0.1),
        _row("d", 1, 30.0, device="cpu", workers=0),
    )
    grouped = stats.group(Comparison(("lr", "seed"), rows))
    assert [g.runs for g in grouped.groups] == [("a", "b", "d"), ("c",)]
    first = grouped.groups[0]
    assert first.stats["last"].mean == 20.0 and first.stats["last"].std == pytest.approx(10.0)
    assert first.mean_curve == [21.0, 20.0] and grouped.differing == ("lr",)
    assert grouped.groups[1].stats["last"].std is None and grouped.repeated


def test_a_group_matching_a_published_cell_carries_the_papers_numbers():
    config = resolve(["cifar100-inc10", "fo"], {"seed": 3, "device": "cuda"}).config.as_dict()
    assert stats.published(config, ("device",)) == {"presets": "cifar100-inc10 + fo", "last": 80.47, "avg": 86.97}
    config["lr"] = 0.01
    assert stats.published(config, ("device",)) is None

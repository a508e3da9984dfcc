"""`zocli eval A B ...`: runs side by side from their run directories (table, --json, --csv, --plot, globs)."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pytest
from typer.testing import CliRunner

from zocli.cli import app
from zocli.study.compare import compare

PNG = b"\x89PNG\r\n\x1a\n"
RUNNER = CliRunner(env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})


def invoke(*args):
    result = RUNNER.invoke(app, [str(a) for a in args], prog_name="zocli")
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_root):
    """Two finished demo runs (5 tasks, 4 steps each) that differ only in the vision branch: FO vs ZO."""
    from zocli.resolve import resolve
    from zocli.run.train import run

    parent = tmp_path_factory.mktemp("compare") / "runs"
    flags = {"data_root": str(digits_root), "max_steps": 4}  # = tiny_config(**flags), with its sources
    fo = run(resolve(["digits-demo"], flags), parent / "fo").run_dir
    zo = run(resolve(["digits-demo"], {**flags, "vision": "zo"}), parent / "zo").run_dir
    return fo, zo


def test_compare_names_exactly_the_keys_that_differ(runs):
    comparison = compare(list(runs))
    assert comparison.differing == ("vision",)
    assert [r.config["vision"] for r in comparison.rows] == ["fo", "zo"]


def test_rows_come_from_each_summary(runs):
    for row, root in zip(compare(list(runs)).rows, runs):
        summary = json.loads((root / "summary.json").read_text())
        assert row.run == str(root)
        assert (row.tasks_done, row.tasks_total) == (5, 5)
        assert (row.last, row.avg, row.forgetting, row.bwt) == (
            summary["last"],
            summary["avg"],
            summary["forgetting"],
            summary["bwt"],
        )
        assert row.seen_accuracy == summary["seen_accuracy"]
        assert row.peak_memory_bytes == summary["peak_memory"]["bytes"] > 0
        assert row.wall_seconds == summary["wall_seconds"] > 0


def test_an_unfinished_run_is_compared_from_its_manifest(runs, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(runs[0], partial)
    (partial / "summary.json").unlink()
    row = compare([runs[0], partial]).rows[1]
    full = compare([runs[0]]).rows[0]
    assert (row.tasks_done, row.last, row.avg, row.seen_accuracy) == (
        full.tasks_done,
        full.last,
        full.avg,
        full.seen_accuracy,
    )
    assert row.peak_memory_bytes is None  # only a finished run knows its peak


def test_table_shows_both_runs_and_the_differing_column(runs):
    result = invoke("eval", *runs)
    assert "fo" in result.stdout and "zo" in result.stdout
    header = next(line for line in result.stdout.splitlines() if "Last" in line)
    for column in ("run", "--vision", "tasks", "Last", "Avg", "forgetting", "peak", "wall s"):
        assert column in header
    assert result.stdout.count("5/5") == 2


def test_json_has_both_runs(runs):
    data = json.loads(invoke("eval", *runs, "--json").stdout)
    assert data["differing"] == ["vision"]
    assert [r["run"] for r in data["runs"]] == [str(r) for r in runs]
    assert [r["config"] for r in data["runs"]] == [{"vision": "fo"}, {"vision": "zo"}]
    for r in data["runs"]:
        assert {"last", "avg", "forgetting", "bwt", "peak_memory_bytes", "wall_seconds", "seen_accuracy"} <= set(r)


def test_csv_is_a_header_and_one_row_per_run(runs):
    rows = list(csv.reader(io.StringIO(invoke("eval", *runs, "--csv").stdout)))
    assert rows[0][:7] == ["run", "--vision", "tasks", "Last", "Avg", "forgetting", rows[0][6]]
    assert rows[0][6].startswith("peak") and rows[0][7] == "wall s"
    assert len(rows) == 3
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [("fo", "fo", "5/5"), ("zo", "zo", "5/5")]
    for row, run in zip(rows[1:], compare(list(runs)).rows):
        assert float(row[3]) == pytest.approx(run.last, abs=0.005)


def test_a_quoted_glob_is_expanded(runs):
    data = json.loads(invoke("eval", f"{runs[0].parent}/*", "--json").stdout)
    assert [r["run"] for r in data["runs"]] == [str(r) for r in runs]


def test_plot_of_several_runs_writes_accuracy_curves(runs, tmp_path):
    path = tmp_path / "curves.png"
    invoke("eval", *runs, "--plot", path)
    assert path.read_bytes()[:8] == PNG


def test_plot_of_one_run_writes_a_heatmap(runs, tmp_path, digits_root):
    path = tmp_path / "figs" / "heat.png"
    result = invoke("eval", runs[0], "--plot", path, "--data-root", digits_root, "--json")
    assert path.read_bytes()[:8] == PNG
    # re-evaluation reproduces what training recorded
    assert json.loads(result.stdout)["acc_matrix"] == json.loads((runs[0] / "summary.json").read_text())["acc_matrix"]


def test_table_keeps_numbers_whole_on_a_narrow_console(runs):
    # Piped output is 80 columns; every cell used to come out as "1…".
    result = RUNNER.invoke(app, ["eval", *map(str, runs)], prog_name="zocli", env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.stdout
    for row in compare(list(runs)).rows:
        line = next(line for line in result.stdout.splitlines() if f" {row.run.rsplit('/', 1)[-1]} " in line)
        assert f" {row.last:.2f} " in line and f" {row.avg:.2f} " in line

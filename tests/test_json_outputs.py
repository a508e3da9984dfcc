"""Every `--json` prints exactly one JSON document on stdout and nothing else (scripts parse it whole).

CliRunner (click ≥ 8.2) keeps `result.stdout` and `result.stderr` apart, so progress and notes on stderr
are allowed; stdout must be one line that `json.loads` reads completely.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from zocli.cli import app

RUNNER = CliRunner(env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})


def one_document(args: list) -> object:
    result = RUNNER.invoke(app, [str(a) for a in args], prog_name="zocli")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n") and len(result.stdout.strip().splitlines()) == 1, result.stdout
    return json.loads(result.stdout)  # raises on anything before or after the document


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_root):
    """`zocli train --json` itself (2 tasks x 2 steps), and a copy of its run to compare against."""
    base = tmp_path_factory.mktemp("json")
    data = one_document(
        [
            "train",
            "--preset",
            "digits-demo",
            "--data-root",
            digits_root,
            "--inc",
            "5",
            "--max-steps",
            "2",
            "--out",
            base / "a",
            "--json",
        ]
    )
    shutil.copytree(base / "a", base / "b")
    return base / "a", base / "b", data


def test_train(runs):
    run, _, data = runs
    assert data["run_dir"] == str(run)
    assert len(data["acc_matrix"]) == 2
    assert data == json.loads((run / "summary.json").read_text())


def test_eval_one_run(runs):
    data = one_document(["eval", runs[0], "--json"])
    assert data["acc_matrix"] == runs[2]["acc_matrix"]


def test_eval_compare(runs):
    data = one_document(["eval", runs[0], runs[1], "--json"])
    assert len(data["runs"]) == 2


def test_prepare(tmp_path):
    data = one_document(["prepare", "--benchmark", "digits", "--data-root", tmp_path / "data", "--json"])
    assert data == {"data": str(tmp_path / "data" / "digits")}


def test_memory():
    data = one_document(["memory", "--preset", "digits-demo", "--configs", "fo,dual", "--json"])
    assert [r["config"] for r in data["rows"]] == ["fo", "dual"]


def test_probe_variance(digits_root):
    data = one_document(
        [
            "probe-variance",
            "--preset",
            "digits-demo",
            "--data-root",
            digits_root,
            "--batches",
            "1",
            "--draws",
            "2",
            "--json",
        ]
    )
    assert "ratio_vision_language" in data


def test_presets():
    assert "demo" in one_document(["presets", "--json"])


def test_presets_show():
    assert one_document(["presets", "show", "digits-demo", "--json"])["config"]["benchmark"] == "digits"

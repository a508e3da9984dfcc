"""zocli.study.probe: ZO/FO gradient variance per branch and per layer on the tiny model; JSON, plot, CLI.

A Q-direction ZO estimate averages Q independent (z·g)z terms, so its per-coordinate variance falls as
1/Q. The estimate of that variance is itself noisy: with 2 batches × 8 draws (16 estimates) the mean ZO
variance of one branch carries ~35 % relative noise (a χ² with 16 degrees of freedom). Measured when this
was written, ratio mean-var(Q=4) / mean-var(Q=1), seeds 0-5:
    vision   0.18 0.20 0.26 0.15 0.40 0.33      language 0.30 0.52 0.22 0.20 0.29 0.36
    pooled (coordinate-weighted, both branches)   0.26 0.24 0.24 0.16 0.36 0.35
so the pooled ratio is checked against [0.125, 0.45] (excludes 1/√Q = 0.5 and 1/Q² ≈ 0.06), and each
branch must at least clearly shrink (< 0.7).
"""

import itertools
import json
import math

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from zocli.cli import app
from zocli.run.session import open_session
from zocli.study.probe import HIST_BINS, VarianceReport, probe_variance

BATCHES, DRAWS = 2, 8
PNG = b"\x89PNG\r\n\x1a\n"
REPORT_KEYS = {
    "model",
    "adapter",
    "benchmark",
    "task",
    "batches",
    "draws",
    "queries",
    "estimator",
    "seed",
    "hist_edges_log10",
    "branches",
    "ratio_vision_language",
}
BRANCH_KEYS = {"branch", "coordinates", "eps", "zo", "fo", "cosine_zo_fo", "layers", "step_change"}
DIST_KEYS = {"mean", "median", "quantiles", "hist_counts", "zero"}
QUANTILE_KEYS = {"q05", "q25", "q50", "q75", "q95"}


def _session(digits_root, **overrides):
    return open_session(tiny_config(data_root=str(digits_root), **overrides))


@pytest.fixture(scope="module")
def session(digits_root):
    return _session(digits_root)


@pytest.fixture(scope="module")
def reports(session) -> dict[int, VarianceReport]:
    # Q=1 first, on the fresh session: test_same_seed_gives_an_identical_report compares against it.
    return {q: probe_variance(session, task=0, batches=BATCHES, draws=DRAWS, queries=q) for q in (1, 4)}


def pooled_zo_mean(report: VarianceReport) -> float:
    return sum(b.zo.mean * b.coordinates for b in report.branches) / sum(b.coordinates for b in report.branches)


def test_zo_variance_falls_as_one_over_q(reports):
    one, four = reports[1], reports[4]
    per_branch = {b1.branch: b4.zo.mean / b1.zo.mean for b1, b4 in zip(one.branches, four.branches)}
    pooled = pooled_zo_mean(four) / pooled_zo_mean(one)
    assert 0.125 <= pooled <= 0.45, f"pooled {pooled:.3f}, per branch {per_branch}"
    assert all(ratio < 0.7 for ratio in per_branch.values()), per_branch
    assert (one.queries, four.queries) == (1, 4)


def test_report_schema(reports, session):
    report = reports[1]
    data = report.as_dict()
    assert set(data) == REPORT_KEYS
    assert (data["task"], data["batches"], data["draws"], data["queries"]) == (0, BATCHES, DRAWS, 1)
    assert data["estimator"] == "two-sided" and data["seed"] == 0
    assert set(data["ratio_vision_language"]) == {"zo_mean", "zo_median", "fo_mean"}
    edges = data["hist_edges_log10"]
    assert len(edges) == HIST_BINS + 1 and edges == sorted(edges)
    assert [b["branch"] for b in data["branches"]] == ["vision", "language"]
    depth = session.model.depth()
    for branch in data["branches"]:
        assert set(branch) == BRANCH_KEYS
        assert set(branch["layers"]) == set(range(1, depth[branch["branch"]] + 1))
        assert all(set(v) == {"zo_mean", "fo_mean"} for v in branch["layers"].values())
        for kind in ("zo", "fo"):
            dist = branch[kind]
            assert set(dist) == DIST_KEYS and set(dist["quantiles"]) == QUANTILE_KEYS
            assert len(dist["hist_counts"]) == len(edges) - 1
            # every coordinate is either in the log histogram or counted as exactly zero
            assert sum(dist["hist_counts"]) + dist["zero"] == branch["coordinates"]
    text = json.dumps(data)
    again = json.loads(text)
    assert set(again) == REPORT_KEYS  # JSON-serialisable (layer keys become strings: "1".."L")
    assert set(again["branches"][0]["layers"]) == {str(k) for k in range(1, depth["vision"] + 1)}


def test_report_values_are_consistent(reports, session):
    report = reports[1]
    for branch in report.branches:
        sizes = {k: sum(p.numel() for p in session.model.unit((branch.branch, k)).parameters()) for k in branch.layers}
        assert sum(sizes.values()) == branch.coordinates
        layered = sum(sizes[k] * v["zo_mean"] for k, v in branch.layers.items()) / branch.coordinates
        assert math.isclose(layered, branch.zo.mean, rel_tol=1e-6)
        assert branch.zo.mean > 0 and branch.zo.zero == 0  # every coordinate is perturbed
        assert branch.zo.mean > 100 * branch.fo.mean  # ZO noise dwarfs FO batch-to-batch variance
        assert branch.eps == 1e-3
        assert -1.0 <= branch.cosine_zo_fo <= 1.0
    vision, language = report.branches
    assert math.isclose(report.ratio_vision_language["zo_mean"], vision.zo.mean / language.zo.mean)


def test_same_seed_gives_an_identical_report(reports, digits_root):
    fresh = probe_variance(_session(digits_root), task=0, batches=BATCHES, draws=DRAWS, queries=1)
    assert fresh.as_dict() == reports[1].as_dict()


def test_probe_leaves_the_model_unchanged(digits_root):
    session = _session(digits_root)
    before = {k: v.clone() for k, v in session.model.units.state_dict().items()}
    probe_variance(session, task=0, batches=1, draws=2, queries=1)
    after = session.model.units.state_dict()
    drift = max(float((before[k] - after[k]).abs().max()) for k in before)
    assert drift == 0.0, f"adapters moved by up to {drift:.3g}"


def test_plot_is_written(reports, tmp_path):
    pytest.importorskip("matplotlib")
    from zocli.study.plots import variance_histogram

    path = variance_histogram(reports[1], tmp_path / "sub" / "v.png")
    assert path.read_bytes().startswith(PNG)


def test_plot_has_a_log_count_histogram_and_a_per_layer_panel(reports, tmp_path, monkeypatch):
    # Found: linear counts, 40 bins, an x range stretched by empty bins, and no per-layer view.
    pytest.importorskip("matplotlib")
    from zocli.study import plots

    figures = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
    plots.variance_histogram(reports[1], tmp_path / "v.png")
    hist, per_layer = figures[0].axes[:2]
    assert hist.get_yscale() == "log" and per_layer.get_yscale() == "log"
    assert HIST_BINS >= 80
    edges = reports[1].hist_edges_log10
    occupied = [  # the axis spans the ZO distributions, the figure's point (found: FO to 1e-28 squeezed them)
        (a + b) / 2
        for b_ in reports[1].branches
        for (a, b), n in zip(itertools.pairwise(edges), b_.zo.hist_counts)
        if n
    ]
    low, high = hist.get_xlim()
    assert low >= min(occupied) - 3 * (edges[1] - edges[0]) and high <= max(occupied) + 3 * (edges[1] - edges[0])
    assert len(per_layer.get_lines()) == 4  # ZO and FO of each branch
    assert all(list(line.get_xdata()) == [1, 2, 3, 4] for line in per_layer.get_lines())


def test_the_report_prints_a_per_layer_table(reports):
    import io

    from rich.console import Console

    from zocli.cli import render_measure

    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(render_measure.variance(reports[1]))
    text = console.file.getvalue()
    assert "mean variance per layer" in text
    vision = next(b for b in reports[1].branches if b.branch == "vision")
    for layer, means in vision.layers.items():
        row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith(f"{layer} "))
        assert f"{means['zo_mean']:.3e}" in row and f"{means['fo_mean']:.3e}" in row


def test_cli_probe_variance_json_and_plot(digits_root, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "file.png"
    args = [
        "probe-variance",
        "--preset",
        "digits-demo",
        "--data-root",
        digits_root,
        "--batches",
        "2",
        "--draws",
        "3",
        "--json",
        "--plot",
        plot,
    ]
    result = CliRunner().invoke(app, [str(a) for a in args], prog_name="zocli")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # exactly one JSON document on stdout, nothing else
    assert set(data) == REPORT_KEYS
    assert (data["batches"], data["draws"], data["queries"]) == (2, 3, 1)
    assert all(set(b) == BRANCH_KEYS for b in data["branches"])
    assert plot.read_bytes().startswith(PNG)


def test_step_changes_compare_every_rule_with_the_exact_fo_step(reports):
    for branch in reports[1].branches:
        changes = branch.step_change
        assert set(changes) == {"fo-adamw", "zo-plain λ=1", "mozo λ=1", "configured (adam)", "noise", "random-search"}
        assert changes["fo-adamw"] < 0 and changes["fo-adamw"] < changes["zo-plain λ=1"]  # FO: the most progress
        assert changes["random-search"] <= 0  # conservative: never worse on its own batch

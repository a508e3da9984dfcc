"""plots: every figure renders, in PNG and in vector formats, its legend outside its axes' data area."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("matplotlib")

from zocli.study import plots

CONFIG = {"benchmark": "testbed", "inc": 10, "model": "zocli-tiny", "pretrained": "testbed", "adapter": "moe"}


def _no_overlap() -> None:
    layout = plots.LAST_LAYOUT
    assert layout["legends"], "the figure has a legend"
    for legend in layout["legends"]:
        for axes in layout["axes"]:
            assert not plots.overlaps(legend, axes), (legend, axes)


def comparison():
    rows = tuple(
        SimpleNamespace(
            run=f"/runs/testbed-inc10-moe-{name}-s0",
            config=CONFIG,
            avg=50.0 + i,
            seen_accuracy=[80.0 - 5 * t - i for t in range(10)],
        )
        for i, name in enumerate(("fo", "vision-zo-all-adam", "dual-zo-hop-even-sign-adam-mozo"))
    )
    return SimpleNamespace(rows=rows)


def grouped():
    stat = SimpleNamespace(mean=55.0, std=1.0, n=2)
    groups = tuple(
        SimpleNamespace(
            name=name,
            seeds=(0, 1),
            stats={"avg": stat},
            mean_curve=[80.0 - 4 * t - i for t in range(10)],
            std_curve=[1.0] * 10,
            zero_shot_curve=[60.0 - 4 * t for t in range(10)],
        )
        for i, name in enumerate(("demo + fo", "demo + vision-zo", "demo + dual-hop-even-mozo"))
    )
    return SimpleNamespace(groups=groups)


@pytest.mark.parametrize("suffix", [".png", ".pdf", ".svg"])
def test_curves_render_with_the_legend_outside_the_data(tmp_path, suffix):
    path = plots.seed_curves(grouped(), tmp_path / f"seeds{suffix}", configs=[CONFIG])
    assert path.stat().st_size > 0
    _no_overlap()
    if suffix == ".svg":
        assert "demo + dual-hop-even-mozo" in path.read_text()  # text stays text, names as the tables'
    path = plots.accuracy_curves(comparison(), tmp_path / f"runs{suffix}")
    assert path.stat().st_size > 0
    _no_overlap()


def test_heatmap_carries_zero_shot_row_seen_columns_and_last_avg(tmp_path):
    matrix = [[round(90 - 3 * j - t + 0.5, 1) for j in range(t + 1)] for t in range(10)]
    summary = {"seen_accuracy": [80.0 - t for t in range(10)], "last": 71.0, "avg": 75.5}
    path = plots.accuracy_heatmap(
        matrix,
        tmp_path / "heat.svg",
        "demo",
        seen=summary["seen_accuracy"],
        zero_shot_row=[15.0] * 10,
        zero_shot_curve=[40.0 - t for t in range(10)],
        summary=summary,
    )
    text = path.read_text()
    # every tick labelled, cells as the table formats them (tasks 90.5, never "90"; seen columns 80.00)
    for label in ("zero-shot*", "Last 71.00", "Avg 75.50", "T0", "T5", "T9", "seen", "90.5", "15.0", "80.00", "31.00"):
        assert label in text, label


def test_variance_histogram_counts_exact_zeros_and_spans_the_zo_distributions(tmp_path):
    edges = [-28.0 + i for i in range(27)]  # FO down to 1e-28 would squeeze the ZO curves

    def dist(peak, zero):
        counts = [0] * 26
        counts[peak] = 100
        return SimpleNamespace(hist_counts=counts, zero=zero)

    branches = tuple(
        SimpleNamespace(
            branch=b, eps=1e-3, zo=dist(24, 0), fo=dist(1, 5000), layers={1: {"zo_mean": 1e-3, "fo_mean": 1e-6}}
        )
        for b in ("vision", "language")
    )
    report = SimpleNamespace(
        hist_edges_log10=edges, branches=branches, benchmark="testbed", task=0, model="zocli-tiny",
        adapter="moe", estimator="two-sided", queries=8, batches=2, draws=4,
    )  # fmt: skip
    path = plots.variance_histogram(report, tmp_path / "var.svg")
    assert "5,000 exactly 0, not drawn" in path.read_text()
    _no_overlap()

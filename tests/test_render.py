"""render: tables never fold or ellipsize a number or a name, whatever the console width."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from zocli.cli import render, render_measure


def rendered(renderable, width: int) -> str:
    """What the CLI's stdout console (soft wrap, as in cli/_shared.py) prints at `width` columns."""
    console = Console(width=width, file=io.StringIO(), soft_wrap=True, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def comparison() -> SimpleNamespace:
    """A stand-in for compare.Comparison with three runs (only the fields the table reads)."""
    rows = tuple(
        SimpleNamespace(
            run=f"/runs/demo-vision-zo-hop-even-seed{i}",
            tasks_done=5,
            tasks_total=5,
            config={"vision": "zo", "prompt": f"a bad photo of a {{}} {i}."},
            last=13.456 + i,
            avg=45.678,
            forgetting=3.25,
            bwt=-1.5,
            seen_accuracy=[1.0],
            peak_memory_bytes=1_234_567_890,
            wall_seconds=1234.5,
            peak_memory_kind="process_max_rss",
        )
        for i in range(3)
    )
    return SimpleNamespace(differing=("vision", "prompt"), rows=rows)


@pytest.mark.parametrize("width", [40, 80, 120, 200])
def test_comparison_keeps_run_names_and_metrics_whole(width):
    # Found: below ~160 columns Last read "13.…" and run names "dem…"; piped (80) every cell was "1…".
    text = rendered(render.comparison(comparison()), width)
    assert "…" not in text
    _header, rows = render.comparison_cells(comparison())
    for row in rows:
        line = next(line for line in text.splitlines() if row[0] in line)  # the run name, on one line
        for cell in row[1 + len(comparison().differing) :]:  # tasks and every metric, whole on that line
            assert f" {cell} " in line, (cell, line)


def test_the_comparison_says_what_its_peak_memory_is():
    # Found: on CPU peak_mem_gb was process RSS (~1.2 GB of libraries) and nothing said so.
    text = " ".join(rendered(render.comparison(comparison()), 200).split())
    assert "peak memory: training peak, process RSS on CPU (includes ~1 GB of libraries)" in text
    assert "peak RSS GB (CPU process)" in text  # the column itself says so too (Markdown, LaTeX, CSV)


def test_config_columns_may_wrap_but_lose_nothing():
    text = rendered(render.comparison(comparison()), 80)
    assert "photo" in text.split() and "{}" in text.split()  # wrapped at words, nothing dropped
    assert "…" not in text


def test_a_long_accuracy_matrix_keeps_every_cell():
    matrix = [[round(10 + t + j / 10, 1) for j in range(t + 1)] for t in range(20)]
    summary = {
        "seen_accuracy": [50.0 + t for t in range(20)],
        "last": 69.0,
        "avg": 59.5,
        "forgetting": 1.0,
        "bwt": -1.0,
    }
    text = rendered(render.accuracy_matrix(matrix, summary, "run: x"), 80)
    assert "…" not in text
    last_row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("19 "))
    assert all(f"{a:.1f}" in last_row for a in matrix[-1]) and "69.00" in last_row


def test_preset_list_wraps_descriptions_at_words():
    described = {
        "cifar100-inc10": "CIFAR-100, 10 tasks of 10 classes, batch 128. Paper FO baseline: Last 80.47, Avg 86.97.",
        "demo": "the embedded default.",
    }
    text = rendered(render.preset_list(described), 50)
    words = text.split()
    for word in described["cifar100-inc10"].split():
        assert word in words, word  # no word or number split across lines
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 50


def memory_report(**setting) -> SimpleNamespace:
    """A stand-in for memory.MemoryReport with one `fo` row (only the fields the table reads)."""
    row = SimpleNamespace(
        config="fo",
        peak_bytes=10_290_000_000,
        frozen_weights=600_000_000,
        trainable=16_000_000,
        gradients=16_000_000,
        optimizer_state=32_000_000,
        activations=9_600_000_000,
        reduction_vs_fo=None,
    )
    shape = {
        "model": "ViT-B-16",
        "adapter": "moe",
        "benchmark": "cifar100",
        "batch_size": 128,
        "prompts": 10,
        **setting,
    }
    return SimpleNamespace(**shape, image_size=224, device="meta", upper_bound=True, rows=(row,))


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ({}, True),
        ({"benchmark": "imgr", "batch_size": 64, "prompts": 20}, False),  # found: "10.29 vs paper 19.96"
        ({"batch_size": 64}, False),
        ({"model": "zocli-tiny"}, False),
    ],
)
def test_paper_memory_column_only_beside_the_setting_the_paper_measured(setting, shown):
    text = rendered(render_measure.memory(memory_report(**setting)), 200)
    assert ("paper GB" in text) is shown and ("19.96" in text) is shown
    # found: the paper's 6.93 GB beside zocli's 1.02 GB and nothing said why; elsewhere, nothing said why not
    assert ("differ by design" in text) is shown and ("paper figures not shown" in text) is not shown


def test_memory_picks_the_unit_that_fits_and_never_prints_minus_zero():
    # found: on the tiny model every cell read 0.00-0.02 GB and FO's own row "-0.0 %"
    report = memory_report(model="zocli-tiny")
    small = SimpleNamespace(**{**vars(report.rows[0]), "peak_bytes": 21_500_000, "reduction_vs_fo": 0.0})
    text = rendered(render_measure.memory(SimpleNamespace(**{**vars(report), "rows": (small,)})), 200)
    assert "peak MB" in text and "21.50" in text and "−0.0" not in text and "-0.0" not in text


def test_train_and_eval_print_one_table_with_zero_shot_beside_seen():
    # found: a zero-shot row over all 100 classes sat above seen-class rows ("16.0 -> 75.5"), and eval dropped it
    matrix = [[80.0], [60.0, 70.0]]
    summary = {"seen_accuracy": [80.0, 65.0], "last": 65.0, "avg": 72.5, "forgetting": 20.0, "bwt": -20.0}
    text = rendered(render.accuracy_matrix(matrix, summary, "run: x", [40.0, 30.0], 14.35), 120)
    header = next(line for line in text.splitlines() if "after task" in line)
    assert header.index("seen") < header.index("zero-shot")
    row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("1 "))
    assert "65.00" in row and "30.00" in row
    assert "zero-shot on all classes at once" in text and "14.35" in text
    assert "zero-shot: Last 30.00   Avg 35.00" in text


def test_latex_uses_math_minus_and_pm_and_no_python_literals():
    header = ["configuration", "n", "BWT"]
    rows = [["demo + fo", "2", "-1.50 ± 0.25"]]
    text = render.latex(header, rows, 1)
    assert "$-$1.50 $\\pm$ 0.25" in text and "demo + fo" in text
    assert "\\toprule" in text and "\\bottomrule" in text

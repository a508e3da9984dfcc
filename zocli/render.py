"""Rich tables and CSV rows for the CLI to print. Builds renderables only: printing stays in cli.py."""

from __future__ import annotations

from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text


# The study's table (GB, ViT-B/16, CIFAR-100 at batch 128), for side-by-side display.
PAPER_GB = {"moe": {"fo": 19.96, "dual": 2.17, "vision": 6.93, "language": 12.39},
            "lora": {"fo": 15.11, "dual": 1.73, "vision": 5.71, "language": 11.09}}


def accuracy_matrix(matrix: list[list[float]], summary: dict, title: str, zero_shot: dict | None = None) -> Group:
    """acc[t][j] with the seen-class accuracy per row, then Last / Avg / forgetting / BWT.

    `zero_shot` ({"acc": row, "seen": all-class accuracy}) adds the untouched model's row on top."""
    table = Table(title=title, title_justify="left")
    table.add_column("after task", justify="right")
    for j in range(len(matrix)):
        table.add_column(f"T{j}", justify="right")
    table.add_column("seen", justify="right", style="bold")
    if zero_shot and zero_shot.get("acc"):
        table.add_row("zero-shot", *(f"{a:.1f}" for a in zero_shot["acc"][:len(matrix)]),
                      f"{zero_shot['seen']:.2f}", style="dim", end_section=True)
    for t, row in enumerate(matrix):
        cells = [f"{a:.1f}" for a in row] + [""] * (len(matrix) - len(row))
        table.add_row(str(t), *cells, f"{summary['seen_accuracy'][t]:.2f}")
    line = (f"Last {summary['last']:.2f}   Avg {summary['avg']:.2f}   "
            f"forgetting {summary['forgetting']:.2f}   BWT {summary['bwt']:.2f}")
    if zero_shot and zero_shot.get("seen") is not None:
        line += f"   (zero-shot, all classes: {zero_shot['seen']:.2f})"
    return Group(table, Text(line))


def comparison_cells(comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a run comparison, shared by the table and the CSV."""
    header = ["run", *comparison.differing, "tasks", "last", "avg", "forgetting", "peak_mem_gb", "wall_s"]
    rows = [[Path(r.run).name, *(str(r.config.get(k)) for k in comparison.differing),
             f"{r.tasks_done}/{r.tasks_total}", _fmt(r.last, ".2f"), _fmt(r.avg, ".2f"), _fmt(r.forgetting, ".2f"),
             _fmt(None if r.peak_memory_bytes is None else r.peak_memory_bytes / 1e9, ".2f"),
             _fmt(r.wall_seconds, ".1f")]
            for r in comparison.rows]
    return header, rows


def comparison(comparison) -> Table:
    header, rows = comparison_cells(comparison)
    table = Table(title_justify="left")
    for name in header:
        table.add_column(name, justify="left" if name == "run" or name in comparison.differing else "right")
    for row in rows:
        table.add_row(*row)
    return table


def memory(report) -> Table:
    """The memory table, shaped like the paper's, with its figures alongside for ViT-B/16."""
    paper = PAPER_GB.get(report.adapter, {}) if report.model == "ViT-B-16" else {}
    bound = " (meta: upper bound)" if report.upper_bound else ""
    table = Table(title=f"GB · {report.model} {report.adapter} · {report.benchmark} · batch {report.batch_size} · "
                        f"{report.prompts} prompts · {report.device}{bound}", title_justify="left")
    for name in ("config", "peak", "vs FO", "weights", "adapters", "grads", "optim", "activ.", *(["paper"] if paper else [])):
        table.add_column(name, justify="left" if name == "config" else "right")
    for row in report.rows:
        cells = [row.config, _gb(row.peak_bytes), _fmt(row.reduction_vs_fo, "+.1f", suffix="%", negate=True),
                 _gb(row.frozen_weights), _gb(row.trainable), _gb(row.gradients), _gb(row.optimizer_state),
                 _gb(row.activations)]
        table.add_row(*cells, *([_fmt(paper.get(row.config), ".2f")] if paper else []))
    return table


def variance(report) -> Group:
    table = Table(title=f"{report.model} {report.adapter} · {report.benchmark} task {report.task} · "
                        f"{report.batches} batches × {report.draws} draws · q={report.queries} · {report.estimator}",
                  title_justify="left")
    for name in ("branch", "coords", "ε", "ZO var mean", "ZO median", "ZO q95", "FO var mean", "cos(ZO,FO)"):
        table.add_column(name, justify="left" if name == "branch" else "right")
    for b in report.branches:
        table.add_row(b.branch, str(b.coordinates), f"{b.eps:g}", f"{b.zo.mean:.3e}", f"{b.zo.median:.3e}",
                      f"{b.zo.quantiles['q95']:.3e}", f"{b.fo.mean:.3e}", f"{b.cosine_zo_fo:.4f}")
    ratio = report.ratio_vision_language
    line = f"vision / language ZO variance: mean {ratio['zo_mean']:.2f}×, median {ratio['zo_median']:.2f}×"
    return Group(table, Text(line), _step_changes(report))


def _step_changes(report) -> Table:
    """Mean loss change per step, per rule and branch (negative: the step lowered the batch loss)."""
    rules = list(report.branches[0].step_change)
    table = Table(title="loss change per step on its batch (this branch trained alone)", title_justify="left")
    table.add_column("rule")
    for b in report.branches:
        table.add_column(b.branch, justify="right")
    for rule in rules:
        table.add_row(rule, *(f"{b.step_change[rule]:+.2e}" for b in report.branches))
    return table


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f}"


def _fmt(value, spec: str, suffix: str = "", negate: bool = False) -> str:
    if value is None:
        return ""
    return format(-value if negate else value, spec) + suffix

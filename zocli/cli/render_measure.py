"""Rich tables of the study's measurements (`zocli memory`, `zocli probe-variance`), built on render's grid.
Builds renderables only: printing stays in cli/."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text

from zocli.cli.render import _fmt, _Whole, grid

# The study's table (GB, ViT-B/16, CIFAR-100 at batch 128, 10 prompts), shown only beside that setting.
PAPER_GB = {
    "moe": {"fo": 19.96, "dual": 2.17, "vision": 6.93, "language": 12.39},
    "lora": {"fo": 15.11, "dual": 1.73, "vision": 5.71, "language": 11.09},
}
PAPER_SETTING = {"model": "ViT-B-16", "benchmark": "cifar100", "batch_size": 128, "prompts": 10}

PAPER_WHY = (
    "paper figures differ by design: a tower with no FO unit runs under no_grad, and the language tower sees "
    "only the task's prompts while the vision tower sees every image token (README, Memory)"
)


def memory(report) -> Group:
    """The memory table, shaped like the paper's, in the unit that fits (MB or GB). The paper's figures sit
    beside the rows only when the setting matches its table; otherwise one line under the table says why not."""
    differ = [
        f"{key} {getattr(report, key)} (paper {value})"
        for key, value in PAPER_SETTING.items()
        if getattr(report, key) != value
    ]
    paper = PAPER_GB.get(report.adapter, {}) if not differ else {}
    bound = " (meta: upper bound)" if report.upper_bound else ""
    largest = max((row.peak_bytes for row in report.rows), default=0)
    unit, scale = ("GB", 1e9) if largest >= 1e9 else ("MB", 1e6)

    def size(n):
        return f"{n / scale:.2f}"

    header = [
        "config",
        f"peak {unit}",
        "vs FO",
        "weights",
        "adapters",
        "grads",
        "optim",
        "activ.",
        *(["paper GB"] if paper else []),
    ]
    rows = [
        [
            row.config,
            size(row.peak_bytes),
            _percent(None if row.reduction_vs_fo is None else -row.reduction_vs_fo),
            size(row.frozen_weights),
            size(row.trainable),
            size(row.gradients),
            size(row.optimizer_state),
            size(row.activations),
            *([_fmt(paper.get(row.config), ".2f") or "–"] if paper else []),
        ]
        for row in report.rows
    ]
    table = grid(
        header,
        rows,
        left=("config",),
        title=f"{unit} · {report.model} {report.adapter} · {report.benchmark} · "
        f"batch {report.batch_size} · {report.prompts} prompts · {report.device}{bound}",
    )
    if differ:
        why = "paper figures not shown: its table is ViT-B-16, cifar100, batch 128, 10 prompts; here " + ", ".join(
            differ
        )
    else:
        why = PAPER_WHY
    return Group(table, Text(why, style="dim"))


def _percent(value: float | None) -> str:
    """A signed percentage with one decimal; a change that rounds to zero reads 0.0 %, never −0.0 %."""
    if value is None:
        return ""
    text = f"{value:+.1f}"
    return ("0.0" if float(text) == 0 else text.replace("-", "−")) + " %"


def variance(report) -> Group:
    header = ["branch", "coords", "ε", "ZO var mean", "ZO median", "ZO q95", "FO var mean", "cos(ZO,FO)"]
    rows = [
        [
            b.branch,
            str(b.coordinates),
            f"{b.eps:g}",
            f"{b.zo.mean:.3e}",
            f"{b.zo.median:.3e}",
            f"{b.zo.quantiles['q95']:.3e}",
            f"{b.fo.mean:.3e}",
            f"{b.cosine_zo_fo:.4f}",
        ]
        for b in report.branches
    ]
    table = grid(
        header,
        rows,
        left=("branch",),
        title=f"{report.model} {report.adapter} · {report.benchmark} task "
        f"{report.task} · {report.batches} batches × {report.draws} draws · q={report.queries} · {report.estimator}",
    )
    ratio = report.ratio_vision_language
    line = f"vision / language ZO variance: mean {ratio['zo_mean']:.2f}×, median {ratio['zo_median']:.2f}×"
    return Group(table, Text(line), Text(""), variance_per_layer(report), Text(""), _step_changes(report))


def fidelity(report) -> Group:
    """Per precision and ZO block: d's relative error and cos(ĝ) against fp32 (and fp64 on a CPU)."""
    header = [
        "precision",
        "block",
        "ε",
        "rel. err d vs fp32",
        "cos ĝ vs fp32",
        "rel. err d vs fp64",
        "cos ĝ vs fp64",
        "verdict",
    ]
    rows = [
        [
            p.precision,
            b.block,
            f"{b.eps:g}",
            "reference" if p.precision == "fp32" else f"{b.rel_error:.2e}",
            "reference" if p.precision == "fp32" else f"{b.cosine:.5f}",
            _fmt(b.rel_error_fp64, ".2e"),
            _fmt(b.cosine_fp64, ".6f"),
            "pass" if p.passed else "FAIL",
        ]
        for p in report.precisions
        for b in p.blocks
    ]
    title = (
        f"finite-difference fidelity · {report.model} · {report.benchmark} · {report.device} · {report.batches} "
        f"batches × {report.directions} directions per block"
    )
    rule = (
        f"pass: relative error of d = L(θ+εz) − L(θ−εz) ≤ {report.max_rel_error:g} and cos(ĝ, ĝ_fp32) ≥ "
        f"{report.min_cosine:g} in every block; train refuses a --zo-precision that fails"
    )
    return Group(grid(header, rows, left=("precision", "block", "verdict"), title=title), Text(rule))


def variance_per_layer(report) -> _Whole:
    """Mean per-coordinate variance of each layer, ZO and FO, for each branch (the study's figure is per layer)."""
    branches = {b.branch: {int(k): v for k, v in b.layers.items()} for b in report.branches}
    layers = sorted({layer for by_layer in branches.values() for layer in by_layer})
    header = ["layer", *(f"{name} {kind}" for name in branches for kind in ("ZO", "FO"))]
    rows = [
        [
            str(layer),
            *(
                f"{by_layer[layer][key]:.3e}" if layer in by_layer else ""
                for by_layer in branches.values()
                for key in ("zo_mean", "fo_mean")
            ),
        ]
        for layer in layers
    ]
    return grid(header, rows, title="mean variance per layer")


def _step_changes(report) -> _Whole:
    """Mean loss change per step, per rule and branch (negative: the step lowered the batch loss)."""
    rules = list(report.branches[0].step_change)
    rows = [[rule, *(f"{b.step_change[rule]:+.2e}" for b in report.branches)] for rule in rules]
    return grid(
        ["rule", *(b.branch for b in report.branches)],
        rows,
        left=("rule",),
        title="loss change per step on its batch (this branch trained alone)",
    )

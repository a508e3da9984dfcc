"""Paper-ready figures (matplotlib is an optional extra: `pip install 'zocli[plot]'`). No printing here.

One shared style: the Okabe-Ito colour-blind-safe palette, 8-pt type readable at a single column's width
(3.3 in; `wide` figures span two columns, 6.9 in), every tick labelled, legends outside the data area,
values formatted as the tables are, and titles that name benchmark, model and protocol. The format
follows the file's extension (PNG at 300 dpi, PDF, SVG, ...).
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from pathlib import Path

from zocli.config import ConfigError
from zocli.errors import ZocliError

# What matplotlib's Agg backend writes, by file suffix; any other suffix fails only after the work is done.
FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".eps", ".ps", ".tif", ".tiff")
# Okabe & Ito (2008): distinguishable under every common colour-vision deficiency, and in greyscale by marker.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
SINGLE, DOUBLE = 3.3, 6.9  # column widths, inches
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "savefig.dpi": 300,
    "pdf.fonttype": 42,  # TrueType in PDF: editable text, accepted by publishers
    "svg.fonttype": "none",
}


class PlotUnavailable(ZocliError, RuntimeError):
    """matplotlib is not installed."""


def check_path(path: Path | None) -> None:
    """A usage error for a --plot file matplotlib cannot write, raised before any work starts."""
    if path is not None and Path(path).suffix.lower() not in FORMATS:
        raise ConfigError(
            f"--plot {path}: unknown image format {Path(path).suffix or '(none)'!r}; use one of {', '.join(FORMATS)}"
        )


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("plots need matplotlib: pip install 'zocli[plot]'") from None
    return plt


@contextmanager
def _figure(width: float, height: float, ncols: int = 1):
    plt = _pyplot()
    with plt.rc_context({**STYLE, "axes.prop_cycle": plt.cycler(color=PALETTE)}):
        fig, axes = plt.subplots(1, ncols, figsize=(width, height), layout="constrained")
        try:
            yield plt, fig, axes
        finally:
            plt.close(fig)


LAST_LAYOUT: dict = {}  # the last saved figure's legend and data-area boxes (display units), for the tests


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")  # legends outside the axes stay inside the file
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    LAST_LAYOUT.clear()
    LAST_LAYOUT.update(
        legends=[leg.get_window_extent(renderer).bounds for leg in legends],
        axes=[ax.get_window_extent(renderer).bounds for ax in fig.axes if ax.get_label() != "<colorbar>"],
    )
    return path


def overlaps(a: tuple, b: tuple) -> bool:
    """Whether two (x, y, width, height) boxes share any area."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _legend_below(fig, ax, ncol: int = 2):
    handles, labels = ax.get_legend_handles_labels()
    return fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)


def describe(config: dict) -> str:
    """Benchmark, model and protocol, as a figure's title names them."""
    bench = str(config.get("benchmark", "?"))
    return (
        f"{bench} inc{config.get('inc', '?')} · {config.get('model', '?')} ({config.get('pretrained', '?')}) "
        f"{config.get('adapter', '')} · class-incremental, seen-class softmax"
    )


def _common_title(configs: list[dict]) -> str:
    keys = ("benchmark", "inc", "model", "pretrained", "adapter")
    same = {k: configs[0].get(k) for k in keys if len({repr(c.get(k)) for c in configs}) == 1}
    return describe({k: same.get(k, "various") for k in keys})


def _task_axis(ax, tasks: int) -> None:
    ax.set_xticks(range(tasks))  # every task labelled
    ax.set_xlabel("after task")
    ax.set_ylabel("accuracy on seen classes (%)")


def accuracy_curves(comparison, path: Path, wide: bool = False) -> Path:
    """Accuracy on all seen classes after each task, one line per run; legend below the axes."""
    with _figure(DOUBLE if wide else SINGLE, 3.0) as (_plt, fig, ax):
        tasks = 0
        for i, row in enumerate(comparison.rows):
            label = Path(row.run).name + (f" (Avg {row.avg:.2f})" if row.avg is not None else "")
            ax.plot(range(len(row.seen_accuracy)), row.seen_accuracy, marker=MARKERS[i % len(MARKERS)], label=label)
            tasks = max(tasks, len(row.seen_accuracy))
        _task_axis(ax, tasks)
        ax.set_title(_common_title([r.config for r in comparison.rows]), loc="left")
        _legend_below(fig, ax, ncol=1)
        return _save(fig, path)


def seed_curves(grouped, path: Path, wide: bool = False, configs: list[dict] | None = None) -> Path:
    """Per seed group: mean accuracy on seen classes with a ± std band, named as the tables name it
    (naming.names); the zero-shot model on the same classes (seen-class softmax) dashed."""
    with _figure(DOUBLE if wide else SINGLE, 3.2) as (_plt, fig, ax):
        shots = {tuple(g.zero_shot_curve) for g in grouped.groups if g.zero_shot_curve}
        tasks = 0
        for i, g in enumerate(grouped.groups):
            xs = range(len(g.mean_curve))
            low = [m - s for m, s in zip(g.mean_curve, g.std_curve)]
            high = [m + s for m, s in zip(g.mean_curve, g.std_curve)]
            avg = g.stats["avg"].mean
            label = f"{g.name or 'all runs'} (n={len(g.seeds)}" + (f", Avg {avg:.2f})" if avg is not None else ")")
            (line,) = ax.plot(xs, g.mean_curve, marker=MARKERS[i % len(MARKERS)], label=label)
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
            if g.zero_shot_curve and len(shots) > 1:  # zero-shot differs between groups: one per group
                ax.plot(xs, g.zero_shot_curve, "--", color=line.get_color(), linewidth=0.8)
            tasks = max(tasks, len(g.mean_curve))
        if len(shots) == 1:
            shot = list(next(iter(shots)))
            ax.plot(range(len(shot)), shot, "--", color="grey", linewidth=0.8, label="zero-shot (seen classes)")
        _task_axis(ax, tasks)
        ax.set_title(_common_title(configs or [{}]) + "\nmean ± std over seeds", loc="left")
        _legend_below(fig, ax, ncol=1)
        return _save(fig, path)


def run_heatmap(result, path: Path) -> Path:
    """A run's accuracy matrix as `eval RUN` prints it (its config read from the run directory)."""
    from zocli.run.files import read_json

    config = read_json(Path(result.run_dir) / "config.json").get("config", {})
    return accuracy_heatmap(
        result.acc_matrix,
        path,
        title=f"{Path(result.run_dir).name}\n{describe(config)}",
        seen=(result.summary or {}).get("seen_accuracy"),
        zero_shot_row=getattr(result, "zero_shot_row", None),
        zero_shot_curve=result.zero_shot_curve,
        summary=result.summary,
    )


def accuracy_heatmap(
    matrix: list[list[float]],
    path: Path,
    title: str = "",
    seen: list[float] | None = None,
    zero_shot_row: list[float] | None = None,
    zero_shot_curve: list[float] | None = None,
    summary: dict | None = None,
) -> Path:
    """acc[t][j] (rows: after task t; columns: task j), with the untouched model's row on top (all-class
    softmax, labelled so), the seen-class accuracy and the zero-shot model's seen-class figure as the last
    columns, and Last / Avg under the title. Above the diagonal: blank, or with --eval-future the zero-shot
    accuracy on tasks not trained yet, set apart by a line along the diagonal. Cells read as the table's."""
    n = max(len(matrix), *(len(row) for row in matrix))
    extra = [name for name, values in (("seen", seen), ("zero-shot\n(seen)", zero_shot_curve)) if values]
    rows = ([zero_shot_row[:n]] if zero_shot_row else []) + [list(r) for r in matrix]
    top = 1 if zero_shot_row else 0
    cells = [[r[j] if j < len(r) else float("nan") for j in range(n)] for r in rows]
    for t, row in enumerate(cells):
        t_run = t - top
        row.append(float("nan") if t_run < 0 or not seen else seen[t_run])
        if zero_shot_curve:
            row.append(float("nan") if t_run < 0 else zero_shot_curve[t_run])
        if not seen:
            row.pop(n)
    width = min(DOUBLE, max(SINGLE, 1.2 + 0.42 * (n + len(extra))))
    with _figure(width, 0.9 + 0.3 * len(rows)) as (_plt, fig, ax):
        image = ax.imshow(cells, vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for t, row in enumerate(cells):
            for j, value in enumerate(row):
                if value == value:  # not NaN
                    ax.text(
                        j,
                        t,
                        f"{value:.{1 if j < n else 2}f}",  # as the table prints them: tasks .1, seen .2
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if value < 60 else "black",
                    )
        columns = [f"T{j}" for j in range(n)] + extra
        ax.set_xticks(range(len(columns)), columns)
        ax.set_yticks(range(len(rows)), [*(["zero-shot*"] if top else []), *(str(t) for t in range(len(matrix)))])
        ax.tick_params(axis="both", length=0)
        ax.grid(False)
        if extra:
            ax.axvline(n - 0.5, color="white", linewidth=2)
        if top:
            ax.axhline(0.5, color="white", linewidth=2)
        if any(len(row) > t + 1 for t, row in enumerate(matrix)):
            xs = [x for t in range(len(matrix)) for x in (t + 0.5, t + 0.5)]
            ys = [y + top for t in range(len(matrix)) for y in (t - 0.5, t + 0.5)]
            ax.plot(xs, ys, color="white", linewidth=1.5)
        ax.set_xlabel("task j")
        ax.set_ylabel("after task t")
        notes = []
        if summary:
            notes.append(f"Last {summary['last']:.2f} · Avg {summary['avg']:.2f}")
        if top:
            notes.append("*untouched model, softmax over all classes")
        ax.set_title("\n".join(part for part in (title, " · ".join(notes)) if part), loc="left")
        fig.colorbar(image, ax=ax, label="accuracy (%)", shrink=0.9)
        return _save(fig, path)


def variance_histogram(report, path: Path) -> Path:
    """Left: per-coordinate variance distributions, ZO solid and FO dashed, per branch (log10 x, log
    counts), the x-axis spanning the ZO distributions; coordinates with exactly zero variance (constant
    across draws) are counted in the legend, not drawn. Right: mean variance per layer."""
    edges = report.hist_edges_log10
    centers = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    with _figure(DOUBLE, 2.8, ncols=2) as (_plt, fig, (hist, per_layer)):
        zo_drawn: list[float] = []
        for i, branch in enumerate(report.branches):
            color = PALETTE[i]
            for dist, style, what in ((branch.zo, "-", f"ZO (ε={branch.eps:g})"), (branch.fo, "--", "FO")):
                zeros = f"; {dist.zero:,} exactly 0, not drawn" if dist.zero else ""
                hist.step(
                    centers,
                    dist.hist_counts,
                    where="mid",
                    color=color,
                    linestyle=style,
                    label=f"{branch.branch} {what}{zeros}",
                )
                if style == "-":
                    zo_drawn += [c for c, k in zip(centers, dist.hist_counts) if k]
            layers = sorted(int(k) for k in branch.layers)
            for key, style, what in (("zo_mean", "-", "ZO"), ("fo_mean", "--", "FO")):
                values = [(branch.layers.get(k) or branch.layers.get(str(k)))[key] for k in layers]
                per_layer.plot(layers, values, style, marker=MARKERS[i], color=color, label=f"{branch.branch} {what}")
            per_layer.set_xticks(layers)
        if zo_drawn:  # the ZO distributions are the point: the axis spans them (FO beyond is clipped)
            width = edges[1] - edges[0]
            hist.set_xlim(min(zo_drawn) - 3 * width, max(zo_drawn) + 3 * width)
        hist.set_yscale("log")
        hist.set_xlabel("log10 per-coordinate gradient variance")
        hist.set_ylabel("coordinates")
        per_layer.set_yscale("log")
        per_layer.set_xlabel("layer (1-based)")
        per_layer.set_ylabel("mean per-coordinate variance")
        fig.suptitle(
            f"{report.benchmark} task {report.task} · {report.model} {report.adapter} · "
            f"{report.estimator} q={report.queries}, {report.batches}×{report.draws} estimates",
            fontsize=8,
        )
        handles, labels = hist.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=2, frameon=False)
        return _save(fig, path)

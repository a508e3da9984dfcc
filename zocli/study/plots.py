"""PNG figures (matplotlib is an optional extra: `pip install 'zocli[plot]'`). No printing here."""

from __future__ import annotations

import itertools
from pathlib import Path

from zocli.config import ConfigError

# What matplotlib's Agg backend writes, by file suffix; any other suffix fails only after the work is done.
FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".webp", ".eps", ".ps", ".tif", ".tiff")


class PlotUnavailable(RuntimeError):
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


def variance_histogram(report, path: Path) -> Path:
    """Left: per-coordinate variance distributions, ZO solid and FO dashed, per branch (log10 x, log counts;
    exact zeros are counted in the report, not drawn). Right: mean variance per layer."""
    plt = _pyplot()
    edges = report.hist_edges_log10
    centers = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    fig, (hist, per_layer) = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn = []
    for branch, color in zip(report.branches, ("tab:red", "tab:blue")):
        for counts, style, what in (
            (branch.zo.hist_counts, "-", f"ZO (ε={branch.eps:g})"),
            (branch.fo.hist_counts, "--", "FO"),
        ):
            hist.step(centers, counts, where="mid", color=color, linestyle=style, label=f"{branch.branch} {what}")
            drawn += [c for c, n in zip(centers, counts) if n]
        layers = sorted(int(k) for k in branch.layers)
        for key, style, what in (("zo_mean", "-o", "ZO"), ("fo_mean", "--s", "FO")):
            values = [branch.layers[k][key] if k in branch.layers else branch.layers[str(k)][key] for k in layers]
            per_layer.plot(layers, values, style, color=color, label=f"{branch.branch} {what}")
        per_layer.set_xticks(layers)
    if drawn:  # only where there are coordinates: empty bins would stretch the axis
        width = edges[1] - edges[0]
        hist.set_xlim(min(drawn) - width, max(drawn) + width)
    hist.set_yscale("log")
    hist.set_xlabel("log10 per-coordinate gradient variance")
    hist.set_ylabel("coordinates")
    hist.legend(fontsize="small")
    per_layer.set_yscale("log")
    per_layer.set_xlabel("layer (1-based)")
    per_layer.set_ylabel("mean per-coordinate variance")
    per_layer.legend(fontsize="small")
    fig.suptitle(
        f"{report.model} {report.adapter} · {report.benchmark} task {report.task} · "
        f"q={report.queries}, {report.batches}×{report.draws} estimates"
    )
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def accuracy_curves(comparison, path: Path) -> Path:
    """Accuracy on all seen classes after each task, one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for row in comparison.rows:
        label = Path(row.run).name + (f" (Avg {row.avg:.2f})" if row.avg is not None else "")
        ax.plot(range(len(row.seen_accuracy)), row.seen_accuracy, marker="o", label=label)
    _task_axis(ax)
    ax.legend(fontsize="small")
    return _save(fig, plt, path)


def seed_curves(grouped, path: Path) -> Path:
    """Per seed group: the mean accuracy on seen classes after each task with a ± std band, labelled by
    the config values that differ; the zero-shot model on the same classes dashed, where known."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    shots = {tuple(g.zero_shot_curve) for g in grouped.groups if g.zero_shot_curve}
    for g in grouped.groups:
        tasks = range(len(g.mean_curve))
        low = [m - s for m, s in zip(g.mean_curve, g.std_curve)]
        high = [m + s for m, s in zip(g.mean_curve, g.std_curve)]
        name = ", ".join(f"{k}={v}" for k, v in g.config.items()) or "all runs"
        (line,) = ax.plot(tasks, g.mean_curve, marker="o", label=f"{name} (n={len(g.seeds)})")
        ax.fill_between(tasks, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        if g.zero_shot_curve and len(shots) > 1:  # zero-shot differs between groups: one per group
            ax.plot(tasks, g.zero_shot_curve, "--", color=line.get_color(), linewidth=1)
    if len(shots) == 1:
        shot = list(next(iter(shots)))
        ax.plot(range(len(shot)), shot, "--", color="grey", linewidth=1, label="zero-shot")
    _task_axis(ax)
    ax.legend(fontsize="small")
    return _save(fig, plt, path)


def _task_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # tasks are whole numbers
    ax.set_xlabel("after task")
    ax.set_ylabel("accuracy on seen classes (%)")


def accuracy_heatmap(matrix: list[list[float]], path: Path, title: str = "") -> Path:
    """acc[t][j]: rows = after task t, columns = task j. Above the diagonal: blank, or with --eval-future the
    zero-shot accuracy on tasks not trained yet, set apart from the trained ones by a line along the diagonal."""
    plt = _pyplot()
    n = max(len(matrix), *(len(row) for row in matrix))
    grid = [[row[j] if j < len(row) else float("nan") for j in range(n)] for row in matrix]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 + 0.6 * n), 1.0 + 0.5 * len(matrix)))
    image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    for t, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(
                j, t, f"{value:.0f}", ha="center", va="center", color="white" if value < 60 else "black", fontsize=8
            )
    ax.set_title(title)
    if any(len(row) > t + 1 for t, row in enumerate(matrix)):
        # a staircase along the right and lower edges of the diagonal cells: trained left of it, zero-shot right
        xs = [x for t in range(len(matrix)) for x in (t + 0.5, t + 0.5)]
        ys = [y for t in range(len(matrix)) for y in (t - 0.5, t + 0.5)]
        ax.plot(xs, ys, color="white", linewidth=2)
        ax.set_title(f"{title}\nabove the line: zero-shot, not trained yet".strip(), fontsize=9)
    ax.set_xlabel("task j")
    ax.set_ylabel("after task t")
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    return _save(fig, plt, path)

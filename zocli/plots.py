"""PNG figures (matplotlib is an optional extra: `pip install 'zocli[plot]'`). No printing here."""

from __future__ import annotations

from pathlib import Path


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable("plots need matplotlib: pip install 'zocli[plot]'") from None
    return plt


def variance_histogram(report, path: Path) -> Path:
    """The two branches' per-coordinate ZO variance distributions overlaid (FO dashed), log10 x-axis."""
    plt = _pyplot()
    edges = report.hist_edges_log10
    centers = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    fig, ax = plt.subplots(figsize=(7, 4))
    for branch, color in zip(report.branches, ("tab:red", "tab:blue")):
        ax.step(centers, branch.zo.hist_counts, where="mid", color=color, label=f"{branch.branch} ZO (ε={branch.eps:g})")
        ax.step(centers, branch.fo.hist_counts, where="mid", color=color, linestyle="--", alpha=0.6,
                label=f"{branch.branch} FO")
    ax.set_xlabel("log10 per-coordinate gradient variance")
    ax.set_ylabel("coordinates")
    ax.set_title(f"{report.model} {report.adapter} · {report.benchmark} task {report.task} · "
                 f"q={report.queries}, {report.batches}×{report.draws} estimates")
    ax.legend()
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

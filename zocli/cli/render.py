"""Rich tables and CSV rows for the CLI to print. Builds renderables only: printing stays in cli/.

Numbers and names are never folded or ellipsized to fit a narrow console: a table that cannot fit
grows past the console width instead (a terminal wraps the line, a pipe keeps it whole). Only
columns that hold free text (config values, descriptions) may wrap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from zocli.config import OPTIONS

WRAP_FLOOR = 8  # a wrapping column is never squeezed below this many characters


class _Whole:
    """A table that widens itself past the console rather than cut a number or a name."""

    def __init__(self, table: Table, needed: int):
        self.table, self.needed = table, needed

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        self.table.width = self.needed if options.max_width < self.needed else None
        yield self.table


def grid(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    left: Collection[str] = (),
    wrap: Collection[str] = (),
    bold: Collection[str] = (),
    title: str | None = None,
    lead: Sequence[str] | None = None,
) -> _Whole:
    """A table of string cells; only the columns named in `wrap` may wrap, the rest stay whole.
    `lead` is a reference row drawn dim above the others."""
    table = Table(title=title, title_justify="left")
    floors = []
    every = [*([lead] if lead else []), *rows]
    for i, name in enumerate(header):
        width = max([len(name), *(len(row[i]) for row in every)])
        wraps = name in wrap
        table.add_column(
            name,
            justify="left" if name in left or wraps else "right",
            no_wrap=not wraps,
            overflow="fold" if wraps else "ellipsis",
            min_width=None if wraps else width,
            style="bold" if name in bold else None,
        )
        floors.append(min(width, WRAP_FLOOR) if wraps else width)
    if lead:
        table.add_row(*lead, style="dim", end_section=True)
    for row in rows:
        table.add_row(*row)
    # cell padding (1 + 1) and one border per column, plus the closing border
    return _Whole(table, sum(floors) + 3 * len(floors) + 1)


def accuracy_matrix(
    matrix: list[list[float]],
    summary: dict,
    title: str,
    zero_shot_curve: list[float] | None = None,
    zero_shot_all: float | None = None,
) -> Group:
    """acc[t][j] with the seen-class accuracy per row, then Last / Avg / forgetting / BWT (and, for a
    complete matrix from --eval-future, whose cells above the diagonal are zero-shot, FWT / transfer /
    zero-shot retention). What `train` and `eval RUN` both print.

    Every figure in the table is measured with a softmax over the classes seen after that row's task:
    `zero_shot_curve` (the untouched model under that protocol) is a column beside "seen"; the
    all-class zero-shot figure is a different problem and is stated apart, under the table."""
    tasks = max(len(matrix), *(len(row) for row in matrix))
    curve = list(zero_shot_curve or [])
    shot = bool(curve)
    header = ["after task", *(f"T{j}" for j in range(tasks)), "seen", *(["zero-shot"] if shot else [])]
    rows = [
        [
            str(t),
            *(f"{a:.1f}" if j <= t else f"({a:.1f})" for j, a in enumerate(row)),
            *[""] * (tasks - len(row)),
            f"{summary['seen_accuracy'][t]:.2f}",
            *([f"{curve[t]:.2f}" if t < len(curve) else ""] if shot else []),
        ]
        for t, row in enumerate(matrix)
    ]
    table = grid(header, rows, bold=("seen",), title=title)
    line = (
        f"Last {summary['last']:.2f}   Avg {summary['avg']:.2f}   "
        f"forgetting {summary['forgetting']:.2f}   BWT {summary['bwt']:.2f}"
    )
    if shot and len(curve) >= len(matrix):
        line += f"   (zero-shot: Last {curve[len(matrix) - 1]:.2f}   Avg {sum(curve[: len(matrix)]) / len(matrix):.2f})"
    notes = ["seen, zero-shot: accuracy on the classes seen after that task, softmax over those classes"]
    if zero_shot_all is not None:
        notes.append(f"zero-shot on all classes at once (softmax over all, a harder problem): {zero_shot_all:.2f}")
    upper = [
        (label, summary[key])
        for key, label in (
            ("forward_transfer", "FWT"),
            ("transfer", "transfer"),
            ("zero_shot_retention", "zero-shot retention"),
        )
        if summary.get(key) is not None
    ]
    if upper:  # (cells) above the diagonal: zero-shot on tasks not trained yet
        notes.append(
            "(above the diagonal: zero-shot on tasks not trained yet, softmax over all classes)   "
            + "   ".join(f"{label} {value:.2f}{'%' if label.endswith('retention') else ''}" for label, value in upper)
        )
    return Group(table, Text(line), *(Text(n, style="dim") for n in notes))


def run_banner(event: dict) -> str:
    """One line as a run starts: where, on what, how much is trained and how, and how long a sequence."""
    n = event["parameters"]
    steps = event["steps"][event["first_task"] :]
    per_task = f"{steps[0]}" if len(set(steps)) == 1 else f"{min(steps, default=0)}-{max(steps, default=0)}"
    if not steps:  # every task committed, only the summary left to write
        todo = f"all {event['tasks']} tasks trained"
    elif not event["first_task"]:
        todo = f"{event['tasks']} tasks × {per_task} steps"
    else:
        todo = f"tasks {event['first_task']}-{event['tasks'] - 1} of {event['tasks']} × {per_task} steps"
    line = (
        f"run {event['run_dir']} · {event['device']} · {event['model']} ({event['pretrained']}) {event['adapter']} "
        f"· {event['benchmark']} · {todo} · trainable {n['trainable']:,} "
        f"(ZO {n['zo']:,}, FO {n['fo']:,})"
    )
    return "\n".join([line, *provenance_lines(event.get("provenance"))])


def provenance_lines(record: dict | None) -> list[str]:
    """The protocol in words, then what the numbers depend on: weights and data hashes, versions, device."""
    if not record:
        return []
    weights, data, versions, device = (record.get(k) or {} for k in ("weights", "data", "versions", "device"))
    sha = weights.get("sha256")
    stack = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    where = device.get("name") or "?"
    if device.get("cuda"):
        where += f" (CUDA {device['cuda']}{', driver ' + device['driver'] if device.get('driver') else ''})"
    return [
        f"protocol: {record.get('protocol')}",
        f"weights sha256 {sha[:16] if sha else 'none (random init)'} · data {data.get('source') or '?'} "
        f"revision {_short_revision(data.get('revision'))} · {stack} · {where}",
    ]


def _short_revision(revision: str | None) -> str:
    if not revision or revision.startswith("not recorded"):
        return "not recorded"
    return revision[: len("content sha256 ") + 16] if revision.startswith("content sha256 ") else revision[:16]


def peak_label(kinds) -> str:
    """The peak-memory column's header: CPU process RSS says so wherever it appears."""
    return "peak RSS GB (CPU process)" if "process_max_rss" in set(kinds) else "peak GB"


def comparison_cells(comparison) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a run comparison, shared by the table, Markdown, LaTeX and CSV: the run, the
    values that differ spelled as flags, then the metrics."""
    from zocli.study.naming import spell

    kinds = {r.peak_memory_kind for r in comparison.rows}
    header = [
        "run",
        *(f"--{k.replace('_', '-')}" for k in comparison.differing),
        "tasks",
        "Last",
        "Avg",
        "forgetting",
        peak_label(kinds),
        "wall s",
    ]
    rows = [
        [
            Path(r.run).name,
            *(spell(r.config.get(k)) for k in comparison.differing),
            f"{r.tasks_done}/{r.tasks_total}",
            _fmt(r.last, ".2f"),
            _fmt(r.avg, ".2f"),
            _fmt(r.forgetting, ".2f"),
            _fmt(None if r.peak_memory_bytes is None else r.peak_memory_bytes / 1e9, ".2f"),
            _fmt(r.wall_seconds, ".1f"),
        ]
        for r in comparison.rows
    ]
    return header, rows


def comparison(comparison) -> _Whole:
    """Run names and metrics stay whole at any width; the differing config values may wrap."""
    header, rows = comparison_cells(comparison)
    kinds = {r.peak_memory_kind for r in comparison.rows if r.peak_memory_kind}
    title = f"peak memory: training peak, {' / '.join(PEAK_LABELS[k] for k in sorted(kinds))}" if kinds else None
    return grid(header, rows, left=("run",), wrap=header[1 : 1 + len(comparison.differing)], title=title)


PEAK_LABELS = {
    "cuda_max_allocated": "CUDA max allocated",
    "process_max_rss": "process RSS on CPU (includes ~1 GB of libraries)",
}


def preset_list(described: dict[str, str]) -> Table:
    """Name, then the description wrapped at word boundaries under itself (never inside a number)."""
    table = Table.grid(padding=(0, 2))
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for name, text in described.items():
        table.add_row(name, text)
    return table


def preset_toml(resolved) -> str:
    """The resolved config as a preset file that loads back to the same config (`presets show > my.toml`).

    JSON scalars are valid TOML values; TOML has no null, so unset keys become comments, which say what
    an unset value means as --help does.
    """
    lines = [f"# resolved from: {' '.join(resolved.presets)}"]
    for key, value in resolved.config.as_dict().items():
        source = resolved.sources[key]
        note = "" if source == "default" else f"   # {source}"
        unset = f"# {key}: unset ({source}): {OPTIONS[key].shown_default}"
        lines.append(unset if value is None else f"{key} = {json.dumps(value)}{note}")
    return "\n".join(lines) + "\n"


def _fmt(value, spec: str, suffix: str = "", negate: bool = False) -> str:
    if value is None:
        return ""
    return format(-value if negate else value, spec) + suffix


# ----------------------------------------------------------------------------------------------
# statistics over seeds, and sweeps

GROUP_METRICS = (
    ("last", "Last", ".2f", 1),
    ("avg", "Avg", ".2f", 1),
    ("forgetting", "forgetting", ".2f", 1),
    ("bwt", "BWT", ".2f", 1),
    ("wall_seconds", "wall s", ".1f", 1),
    ("peak_memory_bytes", "peak GB", ".2f", 1e9),
)


def grouped_cells(grouped, kinds=()) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the seed-group table: the configuration's name (naming.names), then mean ± std
    per metric, and the paper's value if any. The same cells feed the terminal, Markdown and LaTeX."""
    paper = any(g.paper for g in grouped.groups)
    header = [
        "configuration",
        "n",
        *(peak_label(kinds) if key == "peak_memory_bytes" else label for key, label, _, _ in GROUP_METRICS),
        *(["paper Last / Avg"] if paper else []),
    ]
    rows = []
    for g in grouped.groups:
        cells = [g.name]
        cells.append(f"{len(g.seeds)}" if len(g.seeds) == len(g.runs) else f"{len(g.seeds)} of {len(g.runs)}")
        cells += [_mean_std(g.stats[key], spec, scale) for key, _, spec, scale in GROUP_METRICS]
        if paper:
            cells.append(" / ".join(_fmt(g.paper.get(k), ".2f") or "–" for k in ("last", "avg")) if g.paper else "")
        rows.append(cells)
    return header, rows


def _mean_std(stat, spec: str, scale: float) -> str:
    if stat.mean is None:
        return ""
    mean = format(stat.mean / scale, spec)
    return mean if stat.std is None else f"{mean} ± {format(stat.std / scale, spec)}"


def grouped_table(grouped, kinds=()) -> _Whole:
    header, rows = grouped_cells(grouped, kinds)
    return grid(header, rows, left=("configuration",), title="mean ± std over seeds (n: finished runs)")


def grouped_csv_rows(grouped) -> tuple[list[str], list[list[Any]]]:
    """Numbers as numbers: a mean, a std and an n column per metric; names and config values spelled as a
    user writes them (never True/False/None: an unset number is an empty cell)."""
    from zocli.study.naming import spell

    header = [
        "configuration",
        *grouped.differing,
        "runs",
        *(f"{key}_{part}" for key, *_ in GROUP_METRICS for part in ("mean", "std", "n")),
        "paper_last",
        "paper_avg",
    ]
    rows = [
        [
            g.name,
            *(spell(g.config.get(k)) for k in grouped.differing),
            len(g.runs),
            *(
                "" if v is None else v
                for key, *_ in GROUP_METRICS
                for v in (g.stats[key].mean, g.stats[key].std, g.stats[key].n)
            ),
            *("" if (g.paper or {}).get(k) is None else g.paper[k] for k in ("last", "avg")),
        ]
        for g in grouped.groups
    ]
    return header, rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows])


def latex(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 0) -> str:
    """A booktabs tabular (\\usepackage{booktabs}), the first `text_columns` left-aligned; in the number
    columns a minus sign is $-$ and ± is $\\pm$."""

    def escape(text: str, number: bool) -> str:
        text = "".join("\\" + c if c in "&%$#_{}" else c for c in text)
        text = text.replace("~", "\\textasciitilde{}").replace(" ± ", " $\\pm$ ")
        if number:
            text = re.sub(r"(?<![\w.])[-−](?=\d)", "$-$", text)
        return text

    lines = [
        f"\\begin{{tabular}}{{{'l' * text_columns}{'r' * (len(header) - text_columns)}}}",
        "\\toprule",
        " & ".join(escape(h, False) for h in header) + " \\\\",
        "\\midrule",
        *(" & ".join(escape(c, i >= text_columns) for i, c in enumerate(row)) + " \\\\" for row in rows),
        "\\bottomrule",
        "\\end{tabular}",
    ]
    return "\n".join(lines)


def sweep_state(state: dict) -> _Whole:
    """One row per run of a sweep: state, tasks done, attempts, error."""
    header = ["run", "state", "tasks", "attempts", "error"]
    rows = [
        [
            r["name"],
            r["state"],
            f"{r['tasks_done']}/{r['tasks_total']} tasks" if r.get("tasks_total") else f"{r['tasks_done']} tasks",
            str(r["attempts"]),
            r["error"] or "",
        ]
        for r in state["runs"]
    ]
    counts = ", ".join(f"{n} {kind}" for kind, n in state["counts"].items() if n)
    return grid(
        header, rows, left=("run", "state", "error"), wrap=("error",), title=f"sweep {state['sweep']}: {counts}"
    )

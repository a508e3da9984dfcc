"""`zocli eval` (one run re-evaluated, or several compared) and `zocli presets`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from zocli.cli import render
from zocli.cli._shared import ConfigFlags, Opt, app, config_options, err, errors, out, plot_to, plots_check


@app.command("eval")
@config_options("data_root", "device", "workers", "eval_batch_size", shown_default="the run's")
def eval_cmd(
    run_dirs: Annotated[
        list[str],
        typer.Argument(
            metavar="RUN_DIR", help="Run directories (or a quoted glob). One: re-evaluate; several: compare."
        ),
    ],
    task: Annotated[
        int | None, Opt("--task", metavar="K", help="Re-evaluate only the checkpoint after task K.")
    ] = None,
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print the result as JSON on stdout.")] = False,
    as_csv: Annotated[bool, Opt("--csv", metavar="", help="Comparison as CSV on stdout.")] = False,
    plot: Annotated[
        Path | None,
        Opt(
            "--plot",
            metavar="FILE.png",
            help="PNG: accuracy-matrix heatmap (one run), accuracy curves (several), mean curves ± std (seed groups).",
        ),
    ] = None,
    as_markdown: Annotated[
        bool, Opt("--markdown", metavar="", help="Comparison as a Markdown table on stdout.")
    ] = False,
    as_latex: Annotated[
        bool, Opt("--latex", metavar="", help="Comparison as a LaTeX (booktabs) tabular on stdout.")
    ] = False,
    by_run: Annotated[
        bool, Opt("--by-run", metavar="", help="One row per run even when seeds repeat (no mean ± std over seeds).")
    ] = False,
    allow_changed_inputs: Annotated[
        bool,
        Opt(
            "--allow-changed-inputs",
            metavar="",
            help="Evaluate even though an input the run recorded (class order, model config, data, weights) changed.",
        ),
    ] = False,
    show_tasks: Annotated[
        bool, Opt("--tasks", metavar="", help="Print each task's classes by name (one run) and exit.")
    ] = False,
    *,
    flags: ConfigFlags,
) -> None:
    """Re-evaluate one run from its checkpoints, or compare several runs (a sweep directory: its runs).

    Runs that differ only by seed form a group: mean ± std and n of each metric, and the paper's figures
    when a group is a published configuration."""
    overrides = {**flags, "data_root": flags["data_root"] or os.environ.get("ZOCLI_DATA")}
    with errors():
        paths = _expand(run_dirs)
        if show_tasks:
            _print_tasks(paths, as_json)
            return
        plots_check(plot)
        if len(paths) > 1 or as_csv or as_markdown or as_latex:
            _compare(
                paths,
                "json"
                if as_json
                else "csv"
                if as_csv
                else "markdown"
                if as_markdown
                else "latex"
                if as_latex
                else "table",
                plot,
                by_run,
            )
            return
        from zocli.run.preflight import check_run

        check_run(paths[0], task, overrides)
        from zocli.run.evaluate import reevaluate

        result = reevaluate(paths[0], task, overrides, allow_changed_inputs)
        for change in result.changed_inputs:
            err.print(
                f"note: {change['file']}: {change['what']} changed (recorded {change['recorded']}, now "
                f"{change['now']}); evaluated with it as it is now",
                highlight=False,
            )
        if plot is not None:
            plot_to(lambda plots: plots.run_heatmap(result, plot))
            err.print(f"plot: {plot}", highlight=False)
    if as_json:
        print(json.dumps(result.as_dict()))
    elif result.summary is not None:
        out.print(
            render.accuracy_matrix(
                result.acc_matrix,
                result.summary,
                f"run: {result.run_dir}",
                result.zero_shot_curve,
                result.zero_shot_seen,
            )
        )
    else:
        row = result.acc_matrix[0]
        out.print(f"after task {task}: " + "  ".join(f"T{j} {a:.2f}" for j, a in enumerate(row)))


def _print_tasks(paths: list[Path], as_json: bool) -> None:
    """Which classes make up which task: summary.json's list, or for an unfinished run config.json's record."""
    from zocli.run.files import read_json
    from zocli.run.rundir import RunDir

    for path in paths:
        run = RunDir.open(path)
        tasks = read_json(run.summary).get("tasks") if run.summary.is_file() else None
        if tasks is None:
            saved = read_json(run.config)
            record, cfg = saved.get("benchmark") or {}, saved["config"]
            names = [record["names"][c] for c in record.get("order", [])]
            first = cfg.get("base") or cfg["inc"]
            tasks = [names[:first]] + [names[i : i + cfg["inc"]] for i in range(first, len(names), cfg["inc"])]
        if as_json:
            print(json.dumps({"run_dir": str(path), "tasks": tasks}))
            continue
        out.print(f"run: {path}", highlight=False)
        for t, classes in enumerate(tasks):
            out.print(f"T{t} ({len(classes)}): {', '.join(classes)}", highlight=False)


def _expand(patterns: list[str]) -> list[Path]:
    """Paths as given, and quoted globs expanded here (a shell usually expands them first)."""
    import glob

    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        for match in map(Path, matches):  # a sweep directory stands for its runs
            paths.extend(_sweep_runs(match) if (match / "sweep.json").is_file() else [match])
    if not paths:
        err.print(f"error: no run directory matches {' '.join(patterns)}")
        raise typer.Exit(2)
    return paths


def _sweep_runs(root: Path) -> list[Path]:
    from zocli.run.rundir import is_run
    from zocli.sweep.directory import open_sweep

    sweep = open_sweep(root)
    return [sweep.run_dir(run.name) for run in sweep.runs if is_run(sweep.run_dir(run.name))]


def _compare(paths: list[Path], form: str, plot: Path | None, by_run: bool) -> None:
    from zocli.run.rundir import RunDir

    for path in paths:  # a missing or foreign directory is named before the heavy imports
        RunDir.open(path)
    from zocli.study.compare import compare, differences
    from zocli.study.stats import group

    comparison = compare(paths)
    grouped = group(comparison)
    seeds = grouped.repeated and not by_run
    kinds = {r.peak_memory_kind for r in comparison.rows if r.peak_memory_kind}
    for line in differences(comparison):
        err.print(f"warning: {line}", highlight=False)
    if plot is not None:
        configs = [r.config for r in comparison.rows]
        plot_to(
            lambda plots: (
                plots.seed_curves(grouped, plot, configs=configs) if seeds else plots.accuracy_curves(comparison, plot)
            )
        )
    header, rows = render.grouped_cells(grouped, kinds) if seeds else render.comparison_cells(comparison)
    if form == "json":
        print(json.dumps({**comparison.as_dict(), "groups": grouped.as_dict()["groups"]}))
    elif form == "csv":
        _print_csv(*(render.grouped_csv_rows(grouped) if seeds else (header, rows)))
    elif form == "markdown":
        print(render.markdown(header, rows))
    elif form == "latex":
        print(render.latex(header, rows, 1 if seeds else 1 + len(comparison.differing)))
    else:
        out.print(render.grouped_table(grouped, kinds) if seeds else render.comparison(comparison))
    if plot is not None:
        err.print(f"plot: {plot}", highlight=False)


def _print_csv(header, rows) -> None:
    import csv

    writer = csv.writer(sys.stdout)
    writer.writerow(header)
    writer.writerows(rows)


presets_app = typer.Typer(help="List the shipped presets, or show one resolved.", invoke_without_command=True)
app.add_typer(presets_app, name="presets")


@presets_app.callback()
def presets_list_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print {name: description} as JSON on stdout.")] = False,
) -> None:
    """One line per shipped preset: what it reproduces."""
    if ctx.invoked_subcommand is not None:
        return
    from zocli.resolve import PRESETS_DIR, list_presets

    shipped = list_presets()
    if not shipped:  # the package data did not install: an empty list would read as "no presets exist"
        err.print(f"[red]error:[/red] no presets found in {PRESETS_DIR}; reinstall zocli", highlight=False)
        raise typer.Exit(1)
    described = {name: _preset_description(path) for name, path in shipped.items()}
    if as_json:
        print(json.dumps(described))
        return
    if out.is_terminal:  # wrapped at words under each description; a pipe gets one line per preset
        out.print(render.preset_list(described), highlight=False)
        return
    width = max(map(len, described), default=0)
    for name, text in described.items():
        out.print(f"{name:<{width}}  {text}", highlight=False)


@presets_app.command("show")
def presets_show_cmd(
    names: Annotated[list[str], typer.Argument(metavar="NAME", help="Preset names or TOML files, applied in order.")],
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print the resolved config and sources as JSON.")] = False,
) -> None:
    """The config these presets resolve to (defaults < presets in order), with each value's source."""
    with errors():
        from zocli.resolve import resolve

        resolved = resolve(names, {})
    if as_json:
        print(json.dumps(resolved.as_dict()))
        return
    out.print(render.preset_toml(resolved), highlight=False, end="")


def _preset_description(path: Path) -> str:
    """The first header line of a preset, without its '# name:' prefix."""
    first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
    return first.lstrip("# ").split(": ", 1)[-1]

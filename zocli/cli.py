"""The `zocli` command line: parse, resolve the config, call one core function, render.

The only module that imports Typer, prints or exits. Exit codes: 0 ok, 1 runtime error (missing data,
weights unavailable, corrupt checkpoint, divergence), 2 usage error, 130 interrupted.
Heavy imports (torch, open_clip, datasets) happen inside commands so `--help` stays instant.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from . import __version__, render
from .config import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Zeroth-order / first-order continual learning of CLIP adapters.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line in logs
STATE = {"debug": False}

USAGE_ERRORS = (ConfigError,)


def _runtime_errors() -> tuple[type[BaseException], ...]:
    from .backbone import UnknownModel, WeightsUnavailable
    from .checkpoint import CheckpointError
    from .data import DataMissing, SourceError
    from .rundir import RunDirError
    from .step import DeviceUnavailable
    from .train import Diverged

    return (WeightsUnavailable, CheckpointError, DataMissing, SourceError, RunDirError, Diverged, UnknownModel,
            DeviceUnavailable)


@contextmanager
def _errors():
    """Expected failures become one line on stderr and an exit code; --debug shows the traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - classified just below
        if STATE["debug"]:
            raise
        code = 2 if isinstance(exc, USAGE_ERRORS) or type(exc).__name__ == "UnknownModel" else \
            1 if isinstance(exc, _runtime_errors()) else None
        if code is None:
            raise
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code) from None


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for expected errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    STATE["debug"] = debug
    if version:
        out.print(__version__)
        raise typer.Exit()


# ----------------------------------------------------------------------------------------------
# train

Opt = typer.Option


@app.command("train")
def train_cmd(
    preset: Annotated[Optional[list[str]], Opt("--preset", "-p", help="Preset name or TOML file; repeatable, applied in order.")] = None,
    out_dir: Annotated[Optional[Path], Opt("--out", "-o", help="Run directory (default runs/<benchmark>-<plan>-s<seed>).")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace a non-empty run directory.")] = False,
    resume: Annotated[Optional[Path], Opt("--resume", help="Continue RUN_DIR from its last commit point.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the summary as JSON on stdout.")] = False,
    benchmark: Annotated[Optional[str], Opt(help="cifar100 | tinyimg | imgr | digits.", rich_help_panel="Data")] = None,
    inc: Annotated[Optional[int], Opt(help="Classes per task.", rich_help_panel="Data")] = None,
    base: Annotated[Optional[int], Opt(help="Classes in the first task (default: --inc).", rich_help_panel="Data")] = None,
    prompt: Annotated[Optional[str], Opt(help="Prompt template with {} for the class name.", rich_help_panel="Data")] = None,
    data_root: Annotated[Optional[str], Opt(help="Prepared data root (env ZOCLI_DATA, default ~/.cache/zocli).", rich_help_panel="Data")] = None,
    model: Annotated[Optional[str], Opt(help="open_clip model (ViT-B-16 = ViT-B-16-quickgelu; zocli-tiny).", rich_help_panel="Model")] = None,
    pretrained: Annotated[Optional[str], Opt(help="openai | PATH | local-dir:DIR | none.", rich_help_panel="Model")] = None,
    adapter: Annotated[Optional[str], Opt(help="moe | lora.", rich_help_panel="Model")] = None,
    lora_rank: Annotated[Optional[int], Opt(rich_help_panel="Model")] = None,
    lora_alpha: Annotated[Optional[float], Opt(rich_help_panel="Model")] = None,
    epochs: Annotated[Optional[int], Opt(help="Epochs per task.", rich_help_panel="Optimisation")] = None,
    batch_size: Annotated[Optional[int], Opt(rich_help_panel="Optimisation")] = None,
    lr: Annotated[Optional[float], Opt(help="AdamW learning rate (FO); ZO uses λ·lr.", rich_help_panel="Optimisation")] = None,
    weight_decay: Annotated[Optional[float], Opt(rich_help_panel="Optimisation")] = None,
    warmup_steps: Annotated[Optional[int], Opt(rich_help_panel="Optimisation")] = None,
    max_steps: Annotated[Optional[int], Opt(help="Cap on steps per task (smoke runs).", rich_help_panel="Optimisation")] = None,
    vision: Annotated[Optional[str], Opt(help="fo | zo for the vision branch.", rich_help_panel="Zeroth order")] = None,
    language: Annotated[Optional[str], Opt(help="fo | zo for the language branch.", rich_help_panel="Zeroth order")] = None,
    layers: Annotated[Optional[str], Opt(help="all | hop-odd | hop-even | prefix | suffix (layers of ZO branches that are ZO).", rich_help_panel="Zeroth order")] = None,
    layers_n: Annotated[Optional[int], Opt(help="Layers in prefix/suffix (default half).", rich_help_panel="Zeroth order")] = None,
    mozo: Annotated[Optional[bool], Opt("--mozo/--no-mozo", help="MoZO: sign normalisation and eps_vision < eps_language.", rich_help_panel="Zeroth order")] = None,
    normalize: Annotated[Optional[str], Opt(help="none | sign.", rich_help_panel="Zeroth order")] = None,
    eps: Annotated[Optional[float], Opt(help="Perturbation scale ε.", rich_help_panel="Zeroth order")] = None,
    eps_vision: Annotated[Optional[float], Opt(rich_help_panel="Zeroth order")] = None,
    eps_language: Annotated[Optional[float], Opt(rich_help_panel="Zeroth order")] = None,
    estimator: Annotated[Optional[str], Opt(help="one-sided | two-sided.", rich_help_panel="Zeroth order")] = None,
    queries: Annotated[Optional[int], Opt(help="Directions q per estimate.", rich_help_panel="Zeroth order")] = None,
    conservative: Annotated[Optional[bool], Opt("--conservative/--aggressive", help="Keep the best of {θ, θ−ηu, θ+ηu}.", rich_help_panel="Zeroth order")] = None,
    zo_lr_scale: Annotated[Optional[float], Opt(help="λ: ZO learning rate = λ·lr.", rich_help_panel="Zeroth order")] = None,
    granularity: Annotated[Optional[str], Opt(help="branch | joint | layer.", rich_help_panel="Zeroth order")] = None,
    zo_chunk: Annotated[Optional[int], Opt(help="Images per ZO micro-batch.", rich_help_panel="Zeroth order")] = None,
    seed: Annotated[Optional[int], Opt(rich_help_panel="Execution")] = None,
    device: Annotated[Optional[str], Opt(help="auto | cpu | cuda | cuda:N.", rich_help_panel="Execution")] = None,
    workers: Annotated[Optional[int], Opt(help="Data-loading processes (default 0 on CPU, ≤8 on CUDA).", rich_help_panel="Execution")] = None,
    eval_batch_size: Annotated[Optional[int], Opt(rich_help_panel="Execution")] = None,
    save_every: Annotated[Optional[int], Opt(help="Also commit a resumable state every N steps inside a task.", rich_help_panel="Execution")] = None,
) -> None:
    """Train a class-incremental sequence: per task train, evaluate on all seen classes, checkpoint."""
    flags = {k: v for k, v in locals().items() if k not in ("preset", "out_dir", "overwrite", "as_json", "resume")}
    if flags["data_root"] is None and os.environ.get("ZOCLI_DATA"):
        flags["data_root"] = os.environ["ZOCLI_DATA"]
    with _errors(), _graceful_stop() as should_stop:
        from .rundir import Interrupted

        try:
            with _progress(enabled=not as_json) as on_event:
                result = _train_or_resume(flags, preset, out_dir, overwrite, resume, on_event, should_stop)
        except Interrupted as stop:
            err.print(str(stop), highlight=False)
            raise typer.Exit(130) from None
    if as_json:
        print(json.dumps(result.as_dict()))
    else:
        out.print(render.accuracy_matrix(result.acc_matrix, result.summary.as_dict(), f"run: {result.run_dir}"))


RESUMABLE_FLAGS = ("device", "workers", "data_root", "eval_batch_size", "save_every")


def _train_or_resume(flags, preset, out_dir, overwrite, resume, on_event, should_stop):
    # Every usage check runs before torch, open_clip and datasets are imported.
    if resume is not None:
        changed = [k for k, v in flags.items() if v is not None and k not in RESUMABLE_FLAGS]
        if changed or preset or out_dir or overwrite:
            what = ", ".join(f"--{k.replace('_', '-')}" for k in changed) or "--preset/--out/--overwrite"
            raise ConfigError(f"--resume continues a run with its saved config; {what} cannot change "
                              f"(only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE_FLAGS)} can)")
        from .train import resume as resume_run

        return resume_run(resume, {k: flags[k] for k in RESUMABLE_FLAGS}, on_event, should_stop)
    from .config import resolve

    resolved = resolve(preset or [], flags)
    _precheck(resolved.config)
    target = out_dir or Path("runs") / _default_name(resolved.config)
    from .train import run

    return run(resolved, target, overwrite=overwrite, on_event=on_event, should_stop=should_stop)


@contextmanager
def _graceful_stop():
    """First Ctrl-C / SIGTERM: finish the step, commit, exit 130. A second one stops at once."""
    import signal

    requested = {"stop": False}

    def handler(signum, frame):
        if requested["stop"]:
            raise KeyboardInterrupt
        requested["stop"] = True
        err.print("stopping after this step (again to abort now) ...")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: requested["stop"]
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _precheck(cfg) -> None:
    # Usage errors must surface before any expensive import or model build.
    from . import benchmarks

    benchmarks.split(benchmarks.get(cfg.benchmark), cfg.inc, cfg.base)


def _default_name(cfg) -> str:
    plan = "fo" if not cfg.zo_branches else "-".join(cfg.zo_branches) + f"-zo-{cfg.layers}"
    return f"{cfg.benchmark}-inc{cfg.inc}-{cfg.adapter}-{plan}{'-mozo' if cfg.mozo else ''}-s{cfg.seed}"


@contextmanager
def _progress(enabled: bool):
    """Rich progress on stderr, only on a terminal; yields the core's on_event callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[info]}"), console=err, transient=True,
                        disable=not (enabled and err.is_terminal))
    bars: dict[int, Any] = {}

    def on_event(event: dict) -> None:
        kind = event["event"]
        if kind == "task_start":
            bars[event["task"]] = progress.add_task(f"task {event['task']}", total=event["steps"], info="")
        elif kind == "step":
            progress.update(bars[event["task"]], advance=1, info=f"loss {event['loss']:.4f}")
        elif kind == "eval":
            progress.remove_task(bars.pop(event["task"]))
            if enabled:
                err.print(f"task {event['task']}: seen accuracy {event['seen_accuracy']:.2f}%")

    with progress:
        yield on_event


# ----------------------------------------------------------------------------------------------
# eval and prepare


@app.command("eval")
def eval_cmd(
    run_dirs: Annotated[list[str], typer.Argument(help="Run directories (or a quoted glob). One: re-evaluate; several: compare.")],
    task: Annotated[Optional[int], Opt("--task", help="Re-evaluate only the checkpoint after task K.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the result as JSON on stdout.")] = False,
    as_csv: Annotated[bool, Opt("--csv", help="Comparison as CSV on stdout.")] = False,
    plot: Annotated[Optional[Path], Opt("--plot", help="PNG: accuracy-matrix heatmap (one run) or accuracy curves (several).")] = None,
    data_root: Annotated[Optional[str], Opt(help="Prepared data root (default: the run's).")] = None,
    device: Annotated[Optional[str], Opt(help="auto | cpu | cuda | cuda:N (default: the run's).")] = None,
    workers: Annotated[Optional[int], Opt(help="Data-loading processes.")] = None,
    eval_batch_size: Annotated[Optional[int], Opt()] = None,
) -> None:
    """Re-evaluate one run from its checkpoints, or compare several runs side by side."""
    overrides = {"data_root": data_root or os.environ.get("ZOCLI_DATA"), "device": device, "workers": workers,
                 "eval_batch_size": eval_batch_size}
    paths = _expand(run_dirs)
    with _errors():
        if len(paths) > 1 or as_csv:
            _compare(paths, as_json, as_csv, plot)
            return
        from .evaluate import reevaluate

        result = reevaluate(paths[0], task, overrides)
        if plot is not None:
            _plot(lambda plots: plots.accuracy_heatmap(result.acc_matrix, plot, Path(result.run_dir).name))
    if as_json:
        print(json.dumps(result.as_dict()))
    elif result.summary is not None:
        out.print(render.accuracy_matrix(result.acc_matrix, result.summary, f"run: {result.run_dir}"))
    else:
        row = result.acc_matrix[0]
        out.print(f"after task {task}: " + "  ".join(f"T{j} {a:.2f}" for j, a in enumerate(row)))


def _expand(patterns: list[str]) -> list[Path]:
    """Paths as given, and quoted globs expanded here (a shell usually expands them first)."""
    import glob

    paths: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        paths.extend(Path(m) for m in matches)
    if not paths:
        err.print(f"error: no run directory matches {' '.join(patterns)}")
        raise typer.Exit(2)
    return paths


def _compare(paths: list[Path], as_json: bool, as_csv: bool, plot: Optional[Path]) -> None:
    from .compare import compare

    comparison = compare(paths)
    if plot is not None:
        _plot(lambda plots: plots.accuracy_curves(comparison, plot))
    if as_json:
        print(json.dumps(comparison.as_dict()))
    elif as_csv:
        _print_csv(comparison)
    else:
        out.print(render.comparison(comparison))


def _print_csv(comparison) -> None:
    import csv

    header, rows = render.comparison_cells(comparison)
    writer = csv.writer(sys.stdout)
    writer.writerow(header)
    writer.writerows(rows)


def _plot(draw) -> None:
    from . import plots

    try:
        draw(plots)
    except plots.PlotUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


@app.command("prepare")
def prepare_cmd(
    benchmark: Annotated[Optional[str], Opt(help="cifar100 | tinyimg | imgr | digits.")] = None,
    source: Annotated[Optional[Path], Opt(help="Import from a local folder instead of the Hugging Face hub.")] = None,
    data_root: Annotated[Optional[str], Opt(help="Where prepared data goes (env ZOCLI_DATA, default ~/.cache/zocli).")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Rebuild an existing prepared copy.")] = False,
    weights: Annotated[bool, Opt("--weights", help="Also download pretrained model weights.")] = False,
    model: Annotated[str, Opt(help="Model whose weights --weights downloads.")] = "ViT-B-16",
    pretrained: Annotated[str, Opt(help="open_clip pretrained tag for --weights.")] = "openai",
    as_json: Annotated[bool, Opt("--json", help="Print what was prepared as JSON on stdout.")] = False,
) -> None:
    """Build the normalized on-disk copy of a benchmark (and optionally fetch weights) so training runs offline."""
    if benchmark is None and not weights:
        err.print("error: nothing to prepare: pass --benchmark NAME and/or --weights")
        raise typer.Exit(2)
    root = Path(data_root or os.environ.get("ZOCLI_DATA") or "~/.cache/zocli").expanduser()
    report: dict[str, str] = {}
    with _errors():
        if benchmark is not None:
            from . import benchmarks, data

            bench = benchmarks.get(benchmark)
            note = None if as_json else (lambda line: err.print(line, highlight=False))
            report["data"] = str(data.prepare(bench, root, source, on_progress=note, overwrite=overwrite))
        if weights:
            from .backbone import download_weights

            report["weights"] = str(download_weights(model, pretrained))
    if as_json:
        print(json.dumps(report))
    else:
        for kind, path in report.items():
            out.print(f"{kind}: {path}")


# ----------------------------------------------------------------------------------------------
# not yet available


presets_app = typer.Typer(help="List the shipped presets, or show one resolved.", invoke_without_command=True)
app.add_typer(presets_app, name="presets")


@presets_app.callback()
def presets_list_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, Opt("--json", help="Print {name: description} as JSON on stdout.")] = False,
) -> None:
    """One line per shipped preset: what it reproduces."""
    if ctx.invoked_subcommand is not None:
        return
    from .config import list_presets

    described = {name: _preset_description(path) for name, path in list_presets().items()}
    if as_json:
        print(json.dumps(described))
        return
    width = max(map(len, described), default=0)
    for name, text in described.items():
        out.print(f"{name:<{width}}  {text}", highlight=False)


@presets_app.command("show")
def presets_show_cmd(
    names: Annotated[list[str], typer.Argument(help="Preset names or TOML files, applied in order.")],
    as_json: Annotated[bool, Opt("--json", help="Print the resolved config and sources as JSON.")] = False,
) -> None:
    """The config these presets resolve to (defaults < presets in order), with each value's source."""
    with _errors():
        from .config import resolve

        resolved = resolve(names, {})
    if as_json:
        print(json.dumps(resolved.as_dict()))
        return
    for key, value in resolved.config.as_dict().items():
        source = resolved.sources[key]
        out.print(f"{key} = {json.dumps(value)}" + ("" if source == "default" else f"   # {source}"), highlight=False)


def _preset_description(path: Path) -> str:
    """The first header line of a preset, without its '# name:' prefix."""
    first = next((line for line in path.read_text().splitlines() if line.startswith("#")), "#")
    return first.lstrip("# ").split(": ", 1)[-1]


@app.command("probe-variance")
def probe_variance_cmd(
    run_dir: Annotated[Optional[Path], Opt("--run", help="Probe a run's checkpoint (with --task K) instead of a fresh model.")] = None,
    task: Annotated[Optional[int], Opt("--task", help="Checkpoint after task K, and the task whose batches are drawn (default: last / 0).")] = None,
    preset: Annotated[Optional[list[str]], Opt("--preset", "-p", help="Fresh model: presets to resolve.")] = None,
    benchmark: Annotated[Optional[str], Opt()] = None,
    inc: Annotated[Optional[int], Opt()] = None,
    model: Annotated[Optional[str], Opt()] = None,
    pretrained: Annotated[Optional[str], Opt()] = None,
    adapter: Annotated[Optional[str], Opt()] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    batches: Annotated[int, Opt(min=1, help="Batches N to draw from the task.")] = 4,
    draws: Annotated[int, Opt(min=2, help="ZO estimates per batch.")] = 8,
    queries: Annotated[int, Opt(min=1, help="Directions Q averaged in each estimate.")] = 1,
    eps: Annotated[Optional[float], Opt()] = None,
    eps_vision: Annotated[Optional[float], Opt()] = None,
    eps_language: Annotated[Optional[float], Opt()] = None,
    estimator: Annotated[Optional[str], Opt(help="one-sided | two-sided.")] = None,
    seed: Annotated[Optional[int], Opt()] = None,
    data_root: Annotated[Optional[str], Opt()] = None,
    device: Annotated[Optional[str], Opt()] = None,
    plot: Annotated[Optional[Path], Opt("--plot", help="Write the variance distributions to this PNG.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Per-branch and per-layer variance of ZO gradient estimates, against FO gradients."""
    measuring = {"eps": eps, "eps_vision": eps_vision, "eps_language": eps_language, "estimator": estimator,
                 "seed": seed, "batch_size": batch_size, "device": device,
                 "data_root": data_root or os.environ.get("ZOCLI_DATA")}
    with _errors():
        from .probe import probe_variance

        if run_dir is not None:
            from .evaluate import open_run, restore

            run, session, tasks = open_run(run_dir, task, measuring)
            restore(run, session, tasks[-1])
            probe_task = tasks[-1] if task is not None else 0
        else:
            from .config import resolve
            from .session import open_session

            flags = {"benchmark": benchmark, "inc": inc, "model": model, "pretrained": pretrained,
                     "adapter": adapter, **measuring}
            cfg = resolve(preset or [], flags).config
            _precheck(cfg)
            session, probe_task = open_session(cfg), task or 0
        report = probe_variance(session, probe_task, batches, draws, queries)
        if plot is not None:
            _plot(lambda plots: plots.variance_histogram(report, plot))
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(render.variance(report))
    if plot is not None:
        out.print(f"plot: {plot}")


@app.command("memory")
def memory_cmd(
    preset: Annotated[Optional[list[str]], Opt("--preset", "-p", help="Take model/benchmark/batch from presets.")] = None,
    model: Annotated[Optional[str], Opt(help="open_clip model (default ViT-B-16).")] = None,
    adapter: Annotated[Optional[str], Opt(help="moe | lora.")] = None,
    benchmark: Annotated[Optional[str], Opt(help="Sets prompts per task and image size.")] = None,
    inc: Annotated[Optional[int], Opt(help="Classes (prompts) per task.")] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    zo_chunk: Annotated[Optional[int], Opt(help="Images per ZO micro-batch.")] = None,
    configs: Annotated[str, Opt(help="Comma list: fo, dual, vision, language, each optionally -hop-odd/-hop-even/-prefix/-suffix, +mozo.")] = ",".join(("fo", "dual", "vision", "language", "dual-hop-odd", "dual-hop-even", "dual-prefix", "dual-suffix")),
    device: Annotated[str, Opt(help="meta (upper bound, instant) | cpu (exact tracker) | cuda.")] = "meta",
    as_json: Annotated[bool, Opt("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Peak memory of one training step per FO/ZO configuration, with a breakdown (no weights or data needed)."""
    flags = {"model": model, "adapter": adapter, "benchmark": benchmark, "inc": inc, "batch_size": batch_size,
             "zo_chunk": zo_chunk}
    with _errors():
        from .config import resolve
        from .memory import measure

        cfg = resolve(preset or [], flags).config
        _precheck(cfg)
        if device.startswith("cuda"):
            from .step import resolve_device

            resolve_device(device)
        report = measure(cfg, [c.strip() for c in configs.split(",") if c.strip()], device)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(render.memory(report))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

"""`zocli train`: a fresh run, or `--resume` of one, with progress on stderr and a graceful stop."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from zocli.cli import render
from zocli.cli._shared import CfgOpt, Opt, app, err, errors, out, precheck
from zocli.cli.signals import graceful_stop
from zocli.config import ConfigError

D, M, O, Z, X, T = "Data", "Model", "Optimisation", "Zeroth order", "Execution", "Tracking"  # help panels


@app.command("train")
def train_cmd(
    preset: Annotated[
        list[str] | None,
        Opt(
            "--preset",
            "-p",
            metavar="NAME|FILE",
            help="Preset name or TOML file; repeatable, applied in order (defaults < presets < flags).",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        Opt(
            "--out",
            "-o",
            metavar="DIR",
            help="Run directory. \\[default: runs/<benchmark>-inc<N>-<adapter>-<plan>-s<seed>]",
        ),
    ] = None,
    overwrite: Annotated[
        bool, Opt("--overwrite", metavar="", help="Replace a non-empty run directory (only a zocli run).")
    ] = False,
    resume: Annotated[
        Path | None, Opt("--resume", metavar="RUN_DIR", help="Continue RUN_DIR from its last commit point.")
    ] = None,
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print the summary as JSON on stdout.")] = False,
    benchmark: Annotated[
        str | None,
        CfgOpt(
            "benchmark",
            "Benchmark (aliases tinyimagenet, imagenet-r), or your data prepared with `zocli prepare --benchmark folder:DIR|hf:ID`.",
            panel=D,
        ),
    ] = None,
    class_order: Annotated[
        str | None,
        CfgOpt(
            "class_order",
            "Class order: FILE (a JSON list of class ids or indices) or seed:N (a seeded permutation).",
            panel=D,
        ),
    ] = None,
    inc: Annotated[int | None, CfgOpt("inc", "Classes per task.", panel=D)] = None,
    base: Annotated[int | None, CfgOpt("base", "Classes in the first task.", panel=D)] = None,
    prompt: Annotated[str | None, CfgOpt("prompt", "Prompt template, {} is the class name.", panel=D)] = None,
    data_root: Annotated[str | None, CfgOpt("data_root", "Where prepared data lives.", panel=D)] = None,
    model: Annotated[
        str | None,
        CfgOpt("model", "open_clip ViT model (ViT-B-16 means ViT-B-16-quickgelu; zocli-tiny for tests).", panel=M),
    ] = None,
    pretrained: Annotated[
        str | None,
        CfgOpt("pretrained", "Weights: an open_clip tag (from the local cache), PATH, local-dir:DIR or none.", panel=M),
    ] = None,
    adapter: Annotated[
        str | None,
        CfgOpt("adapter", "Adapter in every block: MoE (2 experts, top-2, bottleneck 64) or LoRA.", panel=M),
    ] = None,
    lora_rank: Annotated[int | None, CfgOpt("lora_rank", "LoRA rank r.", panel=M)] = None,
    lora_alpha: Annotated[float | None, CfgOpt("lora_alpha", "LoRA scale α (the update is α/r · BA).", panel=M)] = None,
    epochs: Annotated[int | None, CfgOpt("epochs", "Epochs per task.", panel=O)] = None,
    batch_size: Annotated[int | None, CfgOpt("batch_size", "Training images per step.", panel=O)] = None,
    lr: Annotated[float | None, CfgOpt("lr", "AdamW learning rate of FO units; ZO units move λ·lr.", panel=O)] = None,
    weight_decay: Annotated[float | None, CfgOpt("weight_decay", "AdamW weight decay.", panel=O)] = None,
    warmup_steps: Annotated[
        int | None, CfgOpt("warmup_steps", "Linear warm-up steps, then cosine to 0; restarted every task.", panel=O)
    ] = None,
    max_steps: Annotated[int | None, CfgOpt("max_steps", "Cap on steps per task (smoke runs).", panel=O)] = None,
    vision: Annotated[
        str | None,
        CfgOpt("vision", "How the vision branch's adapters train (frozen: a control, no update).", panel=Z),
    ] = None,
    language: Annotated[
        str | None,
        CfgOpt("language", "How the language branch's adapters train (frozen: a control, no update).", panel=Z),
    ] = None,
    layers: Annotated[
        str | None, CfgOpt("layers", "Which layers of a ZO branch are ZO (1-based; the rest stay FO).", panel=Z)
    ] = None,
    layers_n: Annotated[int | None, CfgOpt("layers_n", "Layers in a prefix/suffix scheme.", panel=Z)] = None,
    mozo: Annotated[
        bool | None,
        CfgOpt("mozo", "MoZO: --normalize sign and --eps-vision 5e-4 (each overridable).", "--mozo/--no-mozo", panel=Z),
    ] = None,
    normalize: Annotated[
        str | None, CfgOpt("normalize", "ZO update direction: the estimate, or its element-wise sign.", panel=Z)
    ] = None,
    eps: Annotated[float | None, CfgOpt("eps", "Perturbation scale ε of both branches.", panel=Z)] = None,
    eps_vision: Annotated[float | None, CfgOpt("eps_vision", "ε of the vision branch.", panel=Z)] = None,
    eps_language: Annotated[float | None, CfgOpt("eps_language", "ε of the language branch.", panel=Z)] = None,
    estimator: Annotated[
        str | None,
        CfgOpt("estimator", "Finite difference: [L(θ+εz) − L(θ−εz)]/2ε or the paper's [L(θ+εz) − L(θ)]/ε.", panel=Z),
    ] = None,
    queries: Annotated[int | None, CfgOpt("queries", "Directions q averaged per estimate.", panel=Z)] = None,
    conservative: Annotated[
        bool | None,
        CfgOpt(
            "conservative",
            "Keep the best of {θ, θ−ηu, θ+ηu} on the step's batch, or always step.",
            "--conservative/--aggressive",
            panel=Z,
        ),
    ] = None,
    zo_rule: Annotated[
        str | None,
        CfgOpt(
            "zo_rule",
            "How ĝ becomes the ZO step (noise, random-search: controls without a finite difference).",
            panel=Z,
        ),
    ] = None,
    zo_lr: Annotated[
        float | None, CfgOpt("zo_lr", "Absolute peak ZO learning rate (same schedule as lr); overrides λ.", panel=Z)
    ] = None,
    zo_lr_scale: Annotated[
        float | None, CfgOpt("zo_lr_scale", "λ: ZO learning rate = λ·lr when --zo-lr is unset.", panel=Z)
    ] = None,
    probe_every: Annotated[
        int | None,
        CfgOpt("probe_every", "Every N steps log cos(ZO update, exact gradient of the ZO units); 0: off.", panel=Z),
    ] = None,
    granularity: Annotated[
        str | None,
        CfgOpt("granularity", "Finite differences per step: one per ZO branch, one joint, or one per layer.", panel=Z),
    ] = None,
    zo_chunk: Annotated[
        int | None, CfgOpt("zo_chunk", "Images per ZO forward micro-batch (bounds activation memory).", panel=Z)
    ] = None,
    seed: Annotated[
        int | None, CfgOpt("seed", "Seed of adapter init, data order, crops and ZO directions.", panel=X)
    ] = None,
    precision: Annotated[
        str | None,
        CfgOpt("precision", "Backbone matmuls of FO passes and evaluation (tf32 is fp32 on a CPU).", panel=X),
    ] = None,
    zo_precision: Annotated[
        str | None,
        CfgOpt(
            "zo_precision",
            "Backbone matmuls of ZO forwards; auto: the fastest that passes the fidelity check on the first batch.",
            panel=X,
        ),
    ] = None,
    device: Annotated[str | None, CfgOpt("device", "auto (CUDA when present), cpu, cuda or cuda:N.", panel=X)] = None,
    workers: Annotated[int | None, CfgOpt("workers", "Data-loading processes.", panel=X)] = None,
    input_pipeline: Annotated[
        str | None,
        CfgOpt(
            "input_pipeline",
            "Crop and resize in CPU workers, or on the device in batches (small-image benchmarks); auto: device on CUDA when it can.",
            panel=X,
        ),
    ] = None,
    eval_batch_size: Annotated[int | None, CfgOpt("eval_batch_size", "Images per evaluation batch.", panel=X)] = None,
    save_every: Annotated[
        int | None,
        CfgOpt("save_every", "Also commit a resumable state every N steps inside a task (0: task ends only).", panel=X),
    ] = None,
    eval_future: Annotated[
        bool | None,
        CfgOpt(
            "eval_future",
            "After every task also evaluate the tasks not trained yet (zero-shot): the full accuracy matrix.",
            "--eval-future/--no-eval-future",
            panel=X,
        ),
    ] = None,
    report_to: Annotated[
        str | None,
        CfgOpt(
            "report_to",
            "Trackers, comma-separated: tensorboard, wandb (offline unless WANDB_MODE is set); output in the run directory.",
            panel=T,
        ),
    ] = None,
    log_every: Annotated[
        int | None,
        CfgOpt(
            "log_every",
            "Every N steps a record (loss, learning rates, ZO acceptance and update norm, step time, images/s) to metrics.jsonl and the trackers; 0: off.",
            panel=T,
        ),
    ] = None,
) -> None:
    """Train a class-incremental sequence: per task train, evaluate on all seen classes, checkpoint."""
    flags = {k: v for k, v in locals().items() if k not in ("preset", "out_dir", "overwrite", "as_json", "resume")}
    if flags["data_root"] is None and os.environ.get("ZOCLI_DATA"):
        flags["data_root"] = os.environ["ZOCLI_DATA"]
    where: dict = {}  # the run directory and its --save-every, once known: what a resume hint names
    with errors(), graceful_stop(lambda: _abort(where)) as should_stop:
        from zocli.run.rundir import Interrupted

        try:
            with _progress(enabled=True) as on_event:  # stderr: --json only takes stdout
                result = _train_or_resume(flags, preset, out_dir, overwrite, resume, on_event, should_stop, where)
        except Interrupted as stop:
            err.print(str(stop), highlight=False)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:  # a Ctrl-C before the stop handler was in place
            err.print(_aborted(where), highlight=False)
            raise typer.Exit(130) from None
    if as_json:
        print(json.dumps(result.as_dict()))
    else:
        out.print(
            render.accuracy_matrix(
                result.acc_matrix,
                result.summary.as_dict(),
                f"run: {result.run_dir}",
                result.zero_shot_curve,
                result.zero_shot_seen,
            )
        )


RESUMABLE_FLAGS = ("device", "workers", "data_root", "eval_batch_size", "save_every", "report_to", "log_every")


def _train_or_resume(flags, preset, out_dir, overwrite, resume, on_event, should_stop, where):
    # Every usage check runs before torch, open_clip and datasets are imported.
    from zocli.config import Config
    from zocli.run.tracking import check_available

    if resume is not None:
        changed = [k for k, v in flags.items() if v is not None and k not in RESUMABLE_FLAGS]
        if changed or preset or out_dir or overwrite:
            what = ", ".join(f"--{k.replace('_', '-')}" for k in changed) or "--preset/--out/--overwrite"
            raise ConfigError(
                f"--resume continues a run with its saved config; {what} cannot change "
                f"(only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE_FLAGS)} can)"
            )
        from zocli.run.preflight import check_run

        check_run(resume, overrides={k: flags[k] for k in RESUMABLE_FLAGS})
        check_available(Config(report_to=flags["report_to"] or "").trackers)
        on_event({"event": "starting", "what": "resuming", "run_dir": str(resume)})
        from zocli.run.train import resume as resume_run

        where["run"], where["save_every"] = resume, flags.get("save_every") or _saved_every(resume)
        return resume_run(resume, {k: flags[k] for k in RESUMABLE_FLAGS}, on_event, should_stop)
    from zocli.config import resolve

    resolved = resolve(preset or [], flags)
    precheck(resolved.config)
    check_available(resolved.config.trackers)
    target = out_dir or Path("runs") / _default_name(resolved.config)
    from zocli.run.preflight import check_fresh_run

    check_fresh_run(resolved.config, target, overwrite)
    on_event({"event": "starting", "what": "training into", "run_dir": str(target)})
    from zocli.run.train import run

    where["run"], where["save_every"] = target, resolved.config.save_every
    return run(resolved, target, overwrite=overwrite, on_event=on_event, should_stop=should_stop)


def _aborted(where: dict) -> str:
    hint = f"; resume from the last commit with: zocli train --resume {where['run']}" if "run" in where else ""
    if "run" in where and not where.get("save_every"):  # no mid-task commit point: the task restarts
        hint += " (without --save-every the interrupted task will be redone from its start)"
    return f"aborted{hint}"


def _saved_every(run: Path) -> int:
    try:
        return int(json.loads((run / "config.json").read_text())["config"].get("save_every") or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _abort(where: dict) -> None:
    """The second Ctrl-C: exit 130 at once, with no commit; the last commit point stands.

    Exiting from the handler, not raising KeyboardInterrupt: an exception raised while a finalizer
    runs is printed and swallowed by Python, and training went on.
    """
    # Straight to fd 2: the signal may land inside rich's print of the first Ctrl-C's message, whose
    # buffer is written only when that print returns, which it never will.
    os.write(2, (_aborted(where) + "\n").encode())
    os._exit(130)


def _default_name(cfg) -> str:
    """e.g. testbed-inc10-moe-vision-zo-all-adam-s0, cifar100-inc10-moe-fo-s1, ...-vision-frozen-hop-odd-s0."""
    modes = [f"{b}-{getattr(cfg, b)}" for b in ("vision", "language") if getattr(cfg, b) != "fo"]
    plan = "-".join(modes) + f"-{cfg.layers}" if modes else "fo"
    rule = f"-{cfg.zo_rule_name}" if cfg.zo_branches else ""
    from zocli.data.catalogue import short_name

    mozo = "-mozo" if cfg.mozo else ""
    return f"{short_name(cfg.benchmark)}-inc{cfg.inc}-{cfg.adapter}-{plan}{rule}{mozo}-s{cfg.seed}"


@contextmanager
def _progress(enabled: bool):
    """Progress on stderr, yielding the core's on_event callback: a banner and one line per task with the
    ETA (with --json too: it only takes stdout); on a terminal also a line while loading, and bars (this
    task, the whole run) with ETAs."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
        transient=True,
        disable=not (enabled and err.is_terminal),
    )
    bars: dict[Any, Any] = {}
    run: dict[str, Any] = {}

    def on_event(event: dict) -> None:
        kind = event["event"]
        if kind == "starting":  # a terminal-only, transient line: an error after it stays one line
            bars["starting"] = progress.add_task(
                f"{event['what']} {event['run_dir']}: loading torch, the data and the model ...", total=None, info=""
            )
        elif kind == "run_start":
            if "starting" in bars:
                progress.remove_task(bars.pop("starting"))
            run.update(event, began=time.perf_counter(), done=0, todo=sum(event["steps"][event["first_task"] :]))
            if enabled:
                err.print(render.run_banner(event), highlight=False)
            bars["run"] = progress.add_task("run", total=run["todo"], info="")
        elif kind == "task_start":
            counter = f"task {event['task']} · {event['task'] + 1}/{run.get('tasks', '?')}"
            bars[event["task"]] = progress.add_task(counter, total=event["steps"], completed=event["start"], info="")
        elif kind == "step":
            progress.update(bars[event["task"]], advance=1, info=f"loss {event['loss']:.4f}")
            if "run" in bars:
                progress.update(bars["run"], advance=1)
                run["done"] += 1
        elif kind == "notes":
            for note in event["notes"]:
                err.print(f"note: {note}", highlight=False)
        elif kind == "zero_shot" and enabled:
            err.print(f"zero-shot accuracy on all classes: {event['seen_accuracy']:.2f}%")
        elif kind == "eval":
            progress.remove_task(bars.pop(event["task"]))
            if enabled:
                err.print(
                    f"task {event['task']} ({event['task'] + 1}/{run.get('tasks', '?')}): seen accuracy "
                    f"{event['seen_accuracy']:.2f}%{_timing(run)}",
                    highlight=False,
                )

    with progress:
        yield on_event


def _timing(run: dict) -> str:
    """' · 0:01:05 elapsed, ETA 0:04:20' from the steps done so far (evaluations count as step time)."""
    if not run.get("done"):
        return ""
    elapsed = time.perf_counter() - run["began"]
    left = elapsed * (run["todo"] - run["done"]) / run["done"]
    clock = lambda seconds: f"{int(seconds) // 3600}:{int(seconds) % 3600 // 60:02d}:{int(seconds) % 60:02d}"  # noqa: E731
    return f" · {clock(elapsed)} elapsed, ETA {clock(left)}"

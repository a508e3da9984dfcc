"""`zocli train` (with resume and graceful stop) and `zocli prepare`."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import render
from ..config import ConfigError
from ._shared import CfgOpt, Opt, app, err, errors, out, precheck

D, M, O, Z, X, T = "Data", "Model", "Optimisation", "Zeroth order", "Execution", "Tracking"  # help panels


@app.command("train")
def train_cmd(
    preset: Annotated[Optional[list[str]], Opt("--preset", "-p", metavar="NAME|FILE", help="Preset name or TOML file; repeatable, applied in order (defaults < presets < flags).")] = None,
    out_dir: Annotated[Optional[Path], Opt("--out", "-o", metavar="DIR", help="Run directory. \\[default: runs/<benchmark>-inc<N>-<adapter>-<plan>-s<seed>]")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", metavar="", help="Replace a non-empty run directory (only a zocli run).")] = False,
    resume: Annotated[Optional[Path], Opt("--resume", metavar="RUN_DIR", help="Continue RUN_DIR from its last commit point.")] = None,
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print the summary as JSON on stdout.")] = False,
    benchmark: Annotated[Optional[str], CfgOpt("benchmark", "Benchmark (aliases tinyimagenet, imagenet-r), or your data prepared with `zocli prepare --benchmark folder:DIR|hf:ID`.", panel=D)] = None,
    class_order: Annotated[Optional[str], CfgOpt("class_order", "Class order: FILE (a JSON list of class ids or indices) or seed:N (a seeded permutation).", panel=D)] = None,
    inc: Annotated[Optional[int], CfgOpt("inc", "Classes per task.", panel=D)] = None,
    base: Annotated[Optional[int], CfgOpt("base", "Classes in the first task.", panel=D)] = None,
    prompt: Annotated[Optional[str], CfgOpt("prompt", "Prompt template, {} is the class name.", panel=D)] = None,
    data_root: Annotated[Optional[str], CfgOpt("data_root", "Where prepared data lives.", panel=D)] = None,
    model: Annotated[Optional[str], CfgOpt("model", "open_clip ViT model (ViT-B-16 means ViT-B-16-quickgelu; zocli-tiny for tests).", panel=M)] = None,
    pretrained: Annotated[Optional[str], CfgOpt("pretrained", "Weights: an open_clip tag (from the local cache), PATH, local-dir:DIR or none.", panel=M)] = None,
    adapter: Annotated[Optional[str], CfgOpt("adapter", "Adapter in every block: MoE (2 experts, top-2, bottleneck 64) or LoRA.", panel=M)] = None,
    lora_rank: Annotated[Optional[int], CfgOpt("lora_rank", "LoRA rank r.", panel=M)] = None,
    lora_alpha: Annotated[Optional[float], CfgOpt("lora_alpha", "LoRA scale α (the update is α/r · BA).", panel=M)] = None,
    epochs: Annotated[Optional[int], CfgOpt("epochs", "Epochs per task.", panel=O)] = None,
    batch_size: Annotated[Optional[int], CfgOpt("batch_size", "Training images per step.", panel=O)] = None,
    lr: Annotated[Optional[float], CfgOpt("lr", "AdamW learning rate of FO units; ZO units move λ·lr.", panel=O)] = None,
    weight_decay: Annotated[Optional[float], CfgOpt("weight_decay", "AdamW weight decay.", panel=O)] = None,
    warmup_steps: Annotated[Optional[int], CfgOpt("warmup_steps", "Linear warm-up steps, then cosine to 0; restarted every task.", panel=O)] = None,
    max_steps: Annotated[Optional[int], CfgOpt("max_steps", "Cap on steps per task (smoke runs).", panel=O)] = None,
    vision: Annotated[Optional[str], CfgOpt("vision", "How the vision branch's adapters train (frozen: a control, no update).", panel=Z)] = None,
    language: Annotated[Optional[str], CfgOpt("language", "How the language branch's adapters train (frozen: a control, no update).", panel=Z)] = None,
    layers: Annotated[Optional[str], CfgOpt("layers", "Which layers of a ZO branch are ZO (1-based; the rest stay FO).", panel=Z)] = None,
    layers_n: Annotated[Optional[int], CfgOpt("layers_n", "Layers in a prefix/suffix scheme.", panel=Z)] = None,
    mozo: Annotated[Optional[bool], CfgOpt("mozo", "MoZO: --normalize sign and --eps-vision 5e-4 (each overridable).", "--mozo/--no-mozo", panel=Z)] = None,
    normalize: Annotated[Optional[str], CfgOpt("normalize", "ZO update direction: the estimate, or its element-wise sign.", panel=Z)] = None,
    eps: Annotated[Optional[float], CfgOpt("eps", "Perturbation scale ε of both branches.", panel=Z)] = None,
    eps_vision: Annotated[Optional[float], CfgOpt("eps_vision", "ε of the vision branch.", panel=Z)] = None,
    eps_language: Annotated[Optional[float], CfgOpt("eps_language", "ε of the language branch.", panel=Z)] = None,
    estimator: Annotated[Optional[str], CfgOpt("estimator", "Finite difference: [L(θ+εz) − L(θ−εz)]/2ε or the paper's [L(θ+εz) − L(θ)]/ε.", panel=Z)] = None,
    queries: Annotated[Optional[int], CfgOpt("queries", "Directions q averaged per estimate.", panel=Z)] = None,
    conservative: Annotated[Optional[bool], CfgOpt("conservative", "Keep the best of {θ, θ−ηu, θ+ηu} on the step's batch, or always step.", "--conservative/--aggressive", panel=Z)] = None,
    zo_rule: Annotated[Optional[str], CfgOpt("zo_rule", "How ĝ becomes the ZO step (noise, random-search: controls without a finite difference).", panel=Z)] = None,
    zo_lr: Annotated[Optional[float], CfgOpt("zo_lr", "Absolute peak ZO learning rate (same schedule as lr); overrides λ.", panel=Z)] = None,
    zo_lr_scale: Annotated[Optional[float], CfgOpt("zo_lr_scale", "λ: ZO learning rate = λ·lr when --zo-lr is unset.", panel=Z)] = None,
    probe_every: Annotated[Optional[int], CfgOpt("probe_every", "Every N steps log cos(ZO update, exact gradient of the ZO units); 0: off.", panel=Z)] = None,
    granularity: Annotated[Optional[str], CfgOpt("granularity", "Finite differences per step: one per ZO branch, one joint, or one per layer.", panel=Z)] = None,
    zo_chunk: Annotated[Optional[int], CfgOpt("zo_chunk", "Images per ZO forward micro-batch (bounds activation memory).", panel=Z)] = None,
    seed: Annotated[Optional[int], CfgOpt("seed", "Seed of adapter init, data order, crops and ZO directions.", panel=X)] = None,
    precision: Annotated[Optional[str], CfgOpt("precision", "Backbone matmuls of FO passes and evaluation (tf32 is fp32 on a CPU).", panel=X)] = None,
    zo_precision: Annotated[Optional[str], CfgOpt("zo_precision", "Backbone matmuls of ZO forwards; auto: the fastest that passes the fidelity check on the first batch.", panel=X)] = None,
    device: Annotated[Optional[str], CfgOpt("device", "auto (CUDA when present), cpu, cuda or cuda:N.", panel=X)] = None,
    workers: Annotated[Optional[int], CfgOpt("workers", "Data-loading processes.", panel=X)] = None,
    input_pipeline: Annotated[Optional[str], CfgOpt("input_pipeline", "Crop and resize in CPU workers, or on the device in batches (small-image benchmarks); auto: device on CUDA when it can.", panel=X)] = None,
    eval_batch_size: Annotated[Optional[int], CfgOpt("eval_batch_size", "Images per evaluation batch.", panel=X)] = None,
    save_every: Annotated[Optional[int], CfgOpt("save_every", "Also commit a resumable state every N steps inside a task (0: task ends only).", panel=X)] = None,
    eval_future: Annotated[Optional[bool], CfgOpt("eval_future", "After every task also evaluate the tasks not trained yet (zero-shot): the full accuracy matrix.", "--eval-future/--no-eval-future", panel=X)] = None,
    report_to: Annotated[Optional[str], CfgOpt("report_to", "Trackers, comma-separated: tensorboard, wandb (offline unless WANDB_MODE is set); output in the run directory.", panel=T)] = None,
    log_every: Annotated[Optional[int], CfgOpt("log_every", "Every N steps a record (loss, learning rates, ZO acceptance and update norm, step time, images/s) to metrics.jsonl and the trackers; 0: off.", panel=T)] = None,
) -> None:
    """Train a class-incremental sequence: per task train, evaluate on all seen classes, checkpoint."""
    flags = {k: v for k, v in locals().items() if k not in ("preset", "out_dir", "overwrite", "as_json", "resume")}
    if flags["data_root"] is None and os.environ.get("ZOCLI_DATA"):
        flags["data_root"] = os.environ["ZOCLI_DATA"]
    where: dict[str, Path] = {}  # the run directory, once known: what a resume hint names
    with errors(), _graceful_stop(lambda: _abort(where)) as should_stop:
        from ..rundir import Interrupted

        try:
            with _progress(enabled=not as_json) as on_event:
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
        zero_shot = {"acc": result.zero_shot, "seen": result.zero_shot_seen}
        out.print(render.accuracy_matrix(result.acc_matrix, result.summary.as_dict(), f"run: {result.run_dir}",
                                         zero_shot))


RESUMABLE_FLAGS = ("device", "workers", "data_root", "eval_batch_size", "save_every", "report_to", "log_every")


def _train_or_resume(flags, preset, out_dir, overwrite, resume, on_event, should_stop, where):
    # Every usage check runs before torch, open_clip and datasets are imported.
    from ..config import Config
    from ..tracking import check_available

    if resume is not None:
        changed = [k for k, v in flags.items() if v is not None and k not in RESUMABLE_FLAGS]
        if changed or preset or out_dir or overwrite:
            what = ", ".join(f"--{k.replace('_', '-')}" for k in changed) or "--preset/--out/--overwrite"
            raise ConfigError(f"--resume continues a run with its saved config; {what} cannot change "
                              f"(only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE_FLAGS)} can)")
        from ..preflight import check_run

        check_run(resume, overrides={k: flags[k] for k in RESUMABLE_FLAGS})
        check_available(Config(report_to=flags["report_to"] or "").trackers)
        on_event({"event": "starting", "what": "resuming", "run_dir": str(resume)})
        from ..train import resume as resume_run

        where["run"] = resume
        return resume_run(resume, {k: flags[k] for k in RESUMABLE_FLAGS}, on_event, should_stop)
    from ..config import resolve

    resolved = resolve(preset or [], flags)
    precheck(resolved.config)
    check_available(resolved.config.trackers)
    target = out_dir or Path("runs") / _default_name(resolved.config)
    from ..preflight import check_fresh_run

    check_fresh_run(resolved.config, target, overwrite)
    on_event({"event": "starting", "what": "training into", "run_dir": str(target)})
    from ..train import run

    where["run"] = target
    return run(resolved, target, overwrite=overwrite, on_event=on_event, should_stop=should_stop)


def _aborted(where: dict[str, Path]) -> str:
    hint = f"; resume from the last commit with: zocli train --resume {where['run']}" if "run" in where else ""
    return f"aborted{hint}"


def _abort(where: dict[str, Path]) -> None:
    """The second Ctrl-C: exit 130 at once, with no commit; the last commit point stands.

    Exiting from the handler, not raising KeyboardInterrupt: an exception raised while a finalizer
    runs is printed and swallowed by Python, and training went on.
    """
    # Straight to fd 2: the signal may land inside rich's print of the first Ctrl-C's message, whose
    # buffer is written only when that print returns, which it never will.
    os.write(2, (_aborted(where) + "\n").encode())
    os._exit(130)


@contextmanager
def _graceful_stop(abort):
    """First Ctrl-C / SIGTERM: finish the step, commit, exit 130. A second one calls `abort` at once."""
    import signal

    requested = {"stop": False}

    def handler(signum, frame):
        if requested["stop"]:
            abort()
            return
        requested["stop"] = True
        err.print("stopping after this step (again to abort now) ...")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: requested["stop"]
    finally:
        for sig, old in previous.items():
            # After a stop the process is on its way out: a late second Ctrl-C, arriving once the commit is
            # done, would otherwise print a KeyboardInterrupt traceback from the interpreter's shutdown.
            set_handler(sig, signal.SIG_IGN if requested["stop"] else old)


def set_handler(sig, handler) -> None:
    """signal.signal, tolerating a signal that arrived just before: CPython checks pending signals first and
    raises "Signal N ignored due to race condition" when one is pending under SIG_IGN — which is ignoring
    it, as asked. The pending flag is cleared by that check, so the second call sets the handler."""
    import signal

    try:
        signal.signal(sig, handler)
    except OSError:
        signal.signal(sig, handler)


def _default_name(cfg) -> str:
    """e.g. testbed-inc10-moe-vision-zo-all-adam-s0, cifar100-inc10-moe-fo-s1, ...-vision-frozen-hop-odd-s0."""
    modes = [f"{b}-{getattr(cfg, b)}" for b in ("vision", "language") if getattr(cfg, b) != "fo"]
    plan = "-".join(modes) + f"-{cfg.layers}" if modes else "fo"
    rule = f"-{cfg.zo_rule_name}" if cfg.zo_branches else ""
    from ..benchmarks import short_name

    mozo = "-mozo" if cfg.mozo else ""
    return f"{short_name(cfg.benchmark)}-inc{cfg.inc}-{cfg.adapter}-{plan}{rule}{mozo}-s{cfg.seed}"


@contextmanager
def _progress(enabled: bool):
    """Progress on stderr, yielding the core's on_event callback: a banner and one line per task unless
    --json; on a terminal also a line while loading, and bars (this task, the whole run) with ETAs."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err,
                        transient=True, disable=not (enabled and err.is_terminal))
    bars: dict[Any, Any] = {}
    run: dict[str, Any] = {}

    def on_event(event: dict) -> None:
        kind = event["event"]
        if kind == "starting":  # a terminal-only, transient line: an error after it stays one line
            bars["starting"] = progress.add_task(f"{event['what']} {event['run_dir']}: loading torch, the data and "
                                                 f"the model ...", total=None, info="")
        elif kind == "run_start":
            if "starting" in bars:
                progress.remove_task(bars.pop("starting"))
            run.update(event, began=time.perf_counter(), done=0, todo=sum(event["steps"][event["first_task"]:]))
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
                err.print(f"task {event['task']} ({event['task'] + 1}/{run.get('tasks', '?')}): seen accuracy "
                          f"{event['seen_accuracy']:.2f}%{_timing(run)}", highlight=False)

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


# ----------------------------------------------------------------------------------------------
# eval and prepare


@app.command("prepare")
def prepare_cmd(
    benchmark: Annotated[Optional[str], CfgOpt("benchmark", "Benchmark to prepare: a shipped one, folder:DIR (train/ and test/ class folders, or class folders split 80/20) or hf:ID (a Hugging Face dataset id, or a local path datasets.load_dataset reads).")] = None,
    source: Annotated[Optional[Path], Opt(metavar="DIR", help="Import from a local folder instead of the Hugging Face hub.")] = None,
    image_column: Annotated[Optional[str], Opt(metavar="NAME", help="For hf:ID, the image column. \\[default: its only Image column]")] = None,
    label_column: Annotated[Optional[str], Opt(metavar="NAME", help="For hf:ID, the label column. \\[default: its only ClassLabel column, or label]")] = None,
    train_split: Annotated[str, Opt(metavar="NAME", help="For hf:ID, the training split.")] = "train",
    test_split: Annotated[Optional[str], Opt(metavar="NAME", help="For hf:ID, the test split. \\[default: test, validation, valid or val; without one the training split is split 80/20 per class]")] = None,
    names: Annotated[Optional[Path], Opt(metavar="FILE", help="For folder:DIR and hf:ID, prompt names: JSON {class: name} or a list in sorted class order. \\[default: class names, underscores as spaces]")] = None,
    data_root: Annotated[Optional[str], CfgOpt("data_root", "Where prepared data goes.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", metavar="", help="Rebuild an existing prepared copy.")] = False,
    allow_partial: Annotated[bool, Opt("--allow-partial", metavar="", help="Accept a --source lacking some classes (with a warning); tasks left without images refuse to train.")] = False,
    weights: Annotated[bool, Opt("--weights", metavar="", help="Also download pretrained model weights.")] = False,
    model: Annotated[str, Opt(metavar="TEXT", help="Model whose weights --weights downloads.")] = "ViT-B-16",
    pretrained: Annotated[str, Opt(metavar="TAG", help="open_clip pretrained tag for --weights.")] = "openai",
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print what was prepared as JSON on stdout.")] = False,
) -> None:
    """Build the normalized on-disk copy of a benchmark (and optionally fetch weights) so training runs offline."""
    if benchmark is None and not weights:
        err.print("error: nothing to prepare: pass --benchmark NAME and/or --weights")
        raise typer.Exit(2)
    root = Path(data_root or os.environ.get("ZOCLI_DATA") or "~/.cache/zocli").expanduser()
    report: dict[str, str] = {}
    with errors():
        if benchmark is not None:
            from .. import benchmarks

            name = benchmarks.canonical_name(_absolute(benchmark))
            user = {"image_column": image_column, "label_column": label_column, "test_split": test_split,
                    "names": names, "train_split": None if train_split == "train" else train_split}
            _check_prepare_flags(name, source, allow_partial, user)
            from .. import data

            note = None if as_json else (lambda line: err.print(line, highlight=False))
            existing = None if overwrite else data.prepared_sizes(name, root)
            if existing is not None:  # kept as it is: say so, or a new --source looks imported
                report["existing"] = True
                counts = " + ".join(f"{n} {split}" for split, n in existing.items())
                err.print(f"{name} is already prepared at {data.dataset_dir(root, name)} ({counts} images)"
                          f"{'; --source was not read' if source else ''}; --overwrite rebuilds it", highlight=False)
            if benchmarks.is_user(name):
                from ..userdata import SourceOptions, prepare

                options = SourceOptions(image_column, label_column, train_split, test_split, names)
                report["data"] = str(prepare(name, root, options, on_progress=note, overwrite=overwrite))
            else:
                report["data"] = str(data.prepare(benchmarks.get(name), root, source, on_progress=note,
                                                  overwrite=overwrite, allow_partial=allow_partial))
        if weights:
            from ..backbone import download_weights

            report["weights"] = str(download_weights(model, pretrained))
    if as_json:
        print(json.dumps(report))
    else:
        for kind, path in report.items():
            out.print(f"{kind}: {path}")


def _absolute(benchmark: str) -> str:
    """folder:/hf: paths made absolute as `train` records them (config.resolve), so both name one copy."""
    from ..config import resolve

    return resolve([], {"benchmark": benchmark}).config.benchmark


def _check_prepare_flags(name: str, source, allow_partial: bool, user: dict) -> None:
    from ..benchmarks import is_user

    given = [f"--{k.replace('_', '-')}" for k, v in user.items() if v is not None]
    if is_user(name) and (source is not None or allow_partial):
        raise ConfigError(f"--source and --allow-partial apply to the shipped benchmarks; {name} names its data itself")
    if not is_user(name) and given:
        raise ConfigError(f"{', '.join(given)} apply to folder:DIR and hf:ID benchmarks, not {name}")
    if name.startswith("folder:") and set(given) - {"--names"}:
        raise ConfigError(f"{', '.join(sorted(set(given) - {'--names'}))} apply to hf:ID only")


# ----------------------------------------------------------------------------------------------
# not yet available

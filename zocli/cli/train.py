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
from zocli.cli._shared import ConfigFlags, Opt, app, config_options, err, errors, out, precheck
from zocli.cli.signals import graceful_stop
from zocli.config import PLACE_KEYS, ConfigError


@app.command("train")
@config_options()
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
            help="Run directory. \\[default: runs/ and a name from benchmark, inc, adapter, plan and seed, "
            "such as runs/testbed-inc10-moe-fo-s0]",
        ),
    ] = None,
    overwrite: Annotated[
        bool, Opt("--overwrite", metavar="", help="Replace a non-empty run directory (only a zocli run).")
    ] = False,
    resume: Annotated[
        Path | None, Opt("--resume", metavar="RUN_DIR", help="Continue RUN_DIR from its last commit point.")
    ] = None,
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print the summary as JSON on stdout.")] = False,
    allow_changed_inputs: Annotated[
        bool,
        Opt(
            "--allow-changed-inputs",
            metavar="",
            help="With --resume: continue even though an input the run recorded (class order, model config, "
            "data, weights) changed; the run logs it.",
        ),
    ] = False,
    *,
    flags: ConfigFlags,
) -> None:
    """Train a class-incremental sequence: per task train, evaluate on all seen classes, checkpoint.

    A flag whose default is unset (--base, --eps-vision, ...) takes `none` to unset what a preset set."""
    if flags["data_root"] is None and os.environ.get("ZOCLI_DATA"):
        flags["data_root"] = os.environ["ZOCLI_DATA"]
    where: dict = {}  # the run directory and its --save-every, once known: what a resume hint names
    from zocli.run.slurm import torchrun_env

    os.environ.update(torchrun_env(os.environ))  # `srun --ntasks N zocli train`: the ranks as torchrun names them
    leader = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 prints progress and results
    as_json = as_json or not leader
    with errors(), graceful_stop(lambda: _abort(where)) as should_stop:
        from zocli.run.rundir import Interrupted

        try:
            with _progress(enabled=leader) as on_event:  # stderr: --json only takes stdout
                result = _train_or_resume(
                    flags, preset, out_dir, overwrite, resume, on_event, should_stop, where, allow_changed_inputs
                )
        except Interrupted as stop:
            err.print(str(stop), highlight=False)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:  # a Ctrl-C before the stop handler was in place
            err.print(_aborted(where), highlight=False)
            raise typer.Exit(130) from None
    if isinstance(result, int):  # --nproc: the ranks ran, and printed, in their own processes
        raise typer.Exit(result)
    if not leader:
        return
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


def _train_or_resume(flags, preset, out_dir, overwrite, resume, on_event, should_stop, where, allow_changed=False):
    # Every usage check runs before torch, open_clip and datasets are imported.
    from zocli.config import Config

    out_dir, resume = _user_path(out_dir, "--out"), _user_path(resume, "--resume")
    if flags["data_root"]:  # from --data-root or ZOCLI_DATA: recorded absolute, so a resume from elsewhere finds it
        flags["data_root"] = str(_user_path(Path(flags["data_root"]), "--data-root").resolve())
    from zocli.run.tracking import check_available

    if resume is not None:
        changed = [k for k, v in flags.items() if v is not None and k not in PLACE_KEYS]
        if changed or preset or out_dir or overwrite:
            what = ", ".join(f"--{k.replace('_', '-')}" for k in changed) or "--preset/--out/--overwrite"
            raise ConfigError(
                f"--resume continues a run with its saved config; {what} cannot change "
                f"(only {', '.join('--' + k.replace('_', '-') for k in PLACE_KEYS)} can)"
            )
        from zocli.run.preflight import check_run

        check_run(resume, overrides={k: flags[k] for k in PLACE_KEYS})
        check_available(Config(report_to=flags["report_to"] or "").trackers)
        if _launches(flags["nproc"] or _saved_nproc(resume)):
            return _launch(flags["nproc"] or _saved_nproc(resume))
        on_event({"event": "starting", "what": "resuming", "run_dir": str(resume)})
        from zocli.run.train import resume as resume_run

        where["run"], where["save_every"] = resume, flags.get("save_every") or _saved_every(resume)
        return resume_run(resume, {k: flags[k] for k in PLACE_KEYS}, on_event, should_stop, allow_changed)
    from zocli.config import resolve

    if allow_changed:
        raise ConfigError("--allow-changed-inputs applies to --resume (and eval): a fresh run records its inputs")
    resolved = resolve(preset or [], flags)
    precheck(resolved.config)
    check_available(resolved.config.trackers)
    target = out_dir or Path("runs") / _default_name(resolved.config)
    from zocli.run.preflight import check_fresh_run

    check_fresh_run(resolved.config, target, overwrite)
    if _launches(resolved.config.nproc):
        return _launch(resolved.config.nproc)
    on_event({"event": "starting", "what": "training into", "run_dir": str(target)})
    from zocli.run.train import run

    where["run"], where["save_every"] = target, resolved.config.save_every
    return run(resolved, target, overwrite=overwrite, on_event=on_event, should_stop=should_stop)


def _launches(nproc: int) -> bool:
    """Whether this process starts the ranks itself (`--nproc N`, N > 1, outside torchrun)."""
    from zocli.run.distributed import under_launcher

    return nproc > 1 and not under_launcher()


def _launch(nproc: int) -> int:
    """The same command line on `nproc` ranks through torchrun's launcher; its exit code."""
    import sys

    from zocli.run.distributed import launch

    return launch(nproc, sys.argv[1:])


def _saved_nproc(run_root: Path) -> int:
    """The ranks a run was started with, where a resume gives no --nproc (as a resume keeps --device)."""
    from zocli.run.rundir import RunDir

    return int(RunDir.open(run_root).saved()["config"].get("nproc", 1))


def _user_path(path: Path | None, flag: str) -> Path | None:
    """A directory as the user meant it: `~` expanded (also when quoted), never '' (the current directory)."""
    if path is None:
        return None
    if str(path) in ("", "."):
        from zocli.run.files import RunDirError

        raise RunDirError(f"{flag} {str(path)!r} is the current directory; give a run directory (e.g. runs/NAME)")
    return path.expanduser()


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

    def clock(seconds):
        return f"{int(seconds) // 3600}:{int(seconds) % 3600 // 60:02d}:{int(seconds) % 60:02d}"

    return f" · {clock(elapsed)} elapsed, ETA {clock(left)}"

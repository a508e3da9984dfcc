"""`zocli train`: a whole class-incremental sequence — for each task train (`zocli.run.task`), evaluate, checkpoint.

The core takes a resolved config and returns a `RunResult`; progress reaches the caller through
`on_event(dict)`, the same events that are appended to metrics.jsonl (plus per-step ones).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from zocli import __version__
from zocli.config import Config, ConfigError
from zocli.flags import given
from zocli.method.plan import describe, zo_units
from zocli.method.step import make_blocks, zo_notes
from zocli.resolve import Resolved, saved_config
from zocli.run import checkpoint, distributed, inputs, peaks, provenance
from zocli.run.evaluate import evaluate_row, evaluate_untouched, restore
from zocli.run.fidelity import choose_zo_precision
from zocli.run.fidelity import notes as fidelity_notes
from zocli.run.files import RunDirError, read_json
from zocli.run.metrics import Summary, seen_accuracy, summarize
from zocli.run.rundir import Interrupted, RunDir
from zocli.run.session import Session, open_session, overview
from zocli.run.task import Event, get_rng, set_rng, train_task
from zocli.run.tracking import Tracking, tee


@dataclass
class Progress:
    """What a run has measured so far: recorded in the manifest at every commit, restored by a resume."""

    zero_shot: dict | None = None  # {"acc", "task_sizes", "seen_accuracy", "test_loss"} of the untouched model
    acc_matrix: list[list[float]] = field(default_factory=list)
    task_sizes: list[int] = field(default_factory=list)
    peaks: list[dict[str, int]] = field(default_factory=list)  # per task: training and evaluation peak bytes


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    acc_matrix: list[list[float]]
    task_sizes: list[int]
    summary: Summary
    wall_seconds: float
    peak_memory: dict[str, Any]
    zero_shot: list[float] | None = None  # the untouched model on every task's test set, before task 0
    zero_shot_seen: float | None = None  # ... and on the union of all test sets (all classes)
    zero_shot_curve: list[float] | None = None  # ... after each task t on tasks 0..t, softmax over the seen classes
    tasks: list[list[str]] | None = None  # each task's classes by name
    provenance: dict[str, Any] | None = None  # config.json's protocol and provenance record

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "acc_matrix": self.acc_matrix,
            "task_sizes": self.task_sizes,
            **self.summary.as_dict(),
            "zero_shot": self.zero_shot,
            "zero_shot_seen": self.zero_shot_seen,
            "zero_shot_curve": self.zero_shot_curve,
            "tasks": self.tasks,
            "provenance": self.provenance,
            "wall_seconds": round(self.wall_seconds, 2),
            "peak_memory": self.peak_memory,
        }


def run(
    resolved: Resolved,
    out: Path,
    overwrite: bool = False,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """Train every task of the sequence into a fresh run directory `out`."""
    cfg = resolved.config
    if distributed.leads():
        RunDir.check_available(out, overwrite)  # fail fast, before the session's expensive build
    model_config = inputs.pin_model_config(cfg)  # the model JSON read once: what is built is what is recorded
    session = open_session(distributed.setup(cfg))
    # Everything config.json holds is computed before the directory is touched: a bad value found
    # here (a --layers-n too large for the model, or a ZO precision that fails the fidelity check on
    # the first batch) must not leave a half-created run behind.
    resolved, fidelity = choose_zo_precision(session, resolved)
    resolved = distributed.recorded(resolved)
    session = replace(session, cfg=resolved.config)  # with the ZO precision the check chose
    cfg = session.cfg
    notes = fidelity_notes(fidelity, cfg.zo_precision) + _zo_notes(session)
    identity = {
        **resolved.as_dict(),
        "zocli_version": __version__,
        "environment": provenance.environment(),
        "zo_plan": _plan(session),
        "zo_rule": cfg.zo_rule_name,
        "zo_notes": notes,
        "benchmark": _benchmark_record(session),
        "inputs": inputs.record(session, model_config),  # what eval and --resume verify (DESIGN §8)
        "zo_fidelity": fidelity.as_dict() if fidelity is not None else None,
        "provenance": provenance.record(session),
    }
    with distributed.created(out, identity, overwrite) as run_dir:
        if notes and on_event is not None:
            on_event({"event": "notes", "notes": notes})
        torch.manual_seed(cfg.seed)  # gating noise and dropout of FO passes; seeded once per run
        return _train_from(session, Progress(), run_dir, 0, None, on_event, should_stop)


def resume(
    run_root: Path,
    overrides: dict[str, Any] | None = None,
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    allow_changed_inputs: bool = False,
) -> RunResult:
    """Continue a run from its last commit point: the end of a task, or a mid-task state.

    A finished run is reported as recorded, without the lock (a read-only copy reports too). The inputs
    the run recorded are verified (zocli.run.inputs) before anything is written."""
    opened = RunDir.open(run_root)
    if opened.summary.is_file():  # written last: the run is complete, report it unchanged
        return _recorded(opened)
    cfg = replace(_saved_config(opened), **given(overrides or {}))
    changes = inputs.verify(opened.saved(), cfg, allow_changed_inputs)
    with distributed.opened(run_root) as run_dir:  # validated and locked (by rank 0) before anything is touched
        run_dir.clean_partial_writes()
        if run_dir.summary.is_file():  # finished meanwhile
            return _recorded(run_dir)
        session = open_session(distributed.setup(cfg))
        manifest = checkpoint.read_manifest(run_dir)
        done = manifest["tasks_done"]
        # before task 0's commit, the manifest holds at most the zero-shot row and the log length after it
        committed = (
            checkpoint.committed_results(run_dir, manifest)
            if done
            else {"metrics_bytes": int(manifest.get("metrics_bytes", 0))}
        )
        progress = Progress(manifest.get("zero_shot"))
        torch.manual_seed(cfg.seed)
        if done:
            restore(run_dir, session, done - 1)
            progress.acc_matrix, progress.task_sizes = committed["acc_matrix"], committed["task_sizes"]
            progress.peaks = list(manifest.get("peaks", []))
            set_rng(committed["rng"])
        state = checkpoint.load_state(run_dir)
        state = state if state is not None and state.task == done else None  # older states are stale
        run_dir.truncate_log(state.metrics_bytes if state else committed["metrics_bytes"])
        if changes:  # --allow-changed-inputs: the run records what it continued with
            run_dir.log({"event": "inputs_changed", "changes": [c.as_dict() for c in changes]})
        elapsed = committed.get("wall_seconds", 0.0)
        return _train_from(session, progress, run_dir, done, state, on_event, should_stop, elapsed)


def _provenance(run_dir: RunDir) -> dict | None:
    """The provenance config.json records: rank 0 wrote it, and only rank 0 reports it."""
    return read_json(run_dir.config).get("provenance") if distributed.leads() else None


def _saved_config(run_dir: RunDir) -> Config:
    try:
        return saved_config(run_dir.saved()["config"])
    except (TypeError, ConfigError) as exc:  # unknown or missing keys, bad values: the file was edited
        raise RunDirError(f"{run_dir.config}: the saved config is not valid ({exc})") from None


def _recorded(run_dir: RunDir) -> RunResult:
    """The result a finished run recorded in summary.json."""
    recorded = read_json(run_dir.summary)
    try:
        return RunResult(
            run_dir.root,
            recorded["acc_matrix"],
            recorded["task_sizes"],
            summarize(recorded["acc_matrix"], recorded["task_sizes"], recorded.get("zero_shot")),
            float(recorded["wall_seconds"]),
            recorded["peak_memory"],
            recorded.get("zero_shot"),
            recorded.get("zero_shot_seen"),
            recorded.get("zero_shot_curve"),
            recorded.get("tasks"),
            recorded.get("provenance"),
        )
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise RunDirError(
            f"{run_dir.summary}: damaged ({type(exc).__name__}: {exc}); delete it to resume "
            f"the run from its last commit"
        ) from None


def _train_from(
    session: Session,
    progress: Progress,
    run_dir: RunDir,
    first_task: int,
    state: checkpoint.TrainState | None,
    on_event,
    should_stop,
    elapsed: float = 0.0,
) -> RunResult:
    tracking = Tracking(session.cfg, run_dir.root)  # --report-to: the trackers hear every event
    listen = tee(on_event, tracking) if distributed.leads() else tee(on_event)  # one rank reports
    stop = distributed.agreed(should_stop)
    try:
        return _train_tasks(session, progress, run_dir, first_task, state, listen, stop, elapsed)
    finally:
        tracking.close()


def _train_tasks(
    session: Session,
    progress: Progress,
    run_dir: RunDir,
    first_task: int,
    state: checkpoint.TrainState | None,
    emit,
    should_stop,
    elapsed: float,
) -> RunResult:
    stop = should_stop or (lambda: False)
    described = {"provenance": _provenance(run_dir)}  # the banner's second line
    emit(
        {"event": "run_start", "run_dir": str(run_dir.root), "first_task": first_task, **overview(session), **described}
    )
    began = time.perf_counter() - elapsed
    if progress.zero_shot is None:
        _evaluate_zero_shot(session, progress, run_dir, emit)
    for task in range(first_task, session.split.n_tasks):
        peaks.reset_peak(session.device)
        run_dir.log(train_task(session, run_dir, task, state, emit, stop))
        state = None
        train_bytes = peaks.peak(session.device)
        peaks.reset_peak(session.device)  # evaluation (batch --eval-batch-size) must not pass for training's peak
        _evaluate_and_commit(session, progress, run_dir, task, emit, time.perf_counter() - began, train_bytes)
        if stop() and task + 1 < session.split.n_tasks:  # asked during evaluation: the task commit is the stop
            raise Interrupted(run_dir.root)
    zero_shot = progress.zero_shot or {}
    summary = summarize(progress.acc_matrix, progress.task_sizes, zero_shot.get("acc"))
    result = RunResult(
        run_dir.root,
        progress.acc_matrix,
        progress.task_sizes,
        summary,
        time.perf_counter() - began,
        peaks.peak_memory(session.device, progress.peaks),
        zero_shot.get("acc"),
        zero_shot.get("seen_accuracy"),
        zero_shot.get("seen_curve"),
        provenance.task_classes(session),
        _provenance(run_dir),
    )
    run_dir.write_json(run_dir.summary, result.as_dict())
    return result


def _evaluate_zero_shot(session: Session, progress: Progress, run_dir: RunDir, emit) -> None:
    """The untouched model (adapters at init are exactly zero-shot CLIP) on every task's test set,
    softmax over all classes: the row every method is compared with; and its seen-class curve, the
    figure comparable with each A_t. Recorded in the manifest, so a resumed run reports it without
    measuring again."""
    accuracy = evaluate_untouched(session)
    progress.zero_shot = {
        "acc": list(accuracy.row),
        "task_sizes": list(accuracy.sizes),
        "seen_accuracy": round(seen_accuracy(accuracy.row, accuracy.sizes), 2),
        "seen_curve": list(accuracy.seen_curve),
        "test_loss": accuracy.loss,
    }
    event = {"event": "zero_shot", **progress.zero_shot}
    run_dir.log(event)
    checkpoint.record(run_dir, {"zero_shot": progress.zero_shot, "metrics_bytes": run_dir.log_size()})
    emit(event)


def _evaluate_and_commit(
    session: Session, progress: Progress, run_dir: RunDir, task: int, emit, elapsed: float, train_bytes: int
) -> None:
    accuracy = evaluate_row(session, task)
    progress.peaks.append({"task": task, "train_bytes": train_bytes, "eval_bytes": peaks.peak(session.device)})
    progress.acc_matrix.append(list(accuracy.row))
    progress.task_sizes = list(accuracy.sizes)
    so_far = summarize(progress.acc_matrix, progress.task_sizes)
    event = {
        "event": "eval",
        "task": task,
        "acc": list(accuracy.row),
        "task_sizes": list(accuracy.sizes),
        "seen_accuracy": so_far.seen_accuracy[-1],
        "avg": so_far.avg,
        "test_loss": accuracy.loss,
        **progress.peaks[-1],
    }
    run_dir.log(event)
    results = {
        "acc_matrix": progress.acc_matrix,
        "task_sizes": progress.task_sizes,
        "peaks": progress.peaks,
        "metrics_bytes": run_dir.log_size(),
        "wall_seconds": round(elapsed, 3),
        "rng": checkpoint.encode_rng(get_rng()),
    }
    checkpoint.save_task(run_dir, task, session.model.units.state_dict(), _checkpoint_meta(session, task), results)
    checkpoint.drop_state(run_dir)  # the task commit supersedes any mid-task state
    emit(event)


def _checkpoint_meta(session: Session, task: int) -> dict[str, Any]:
    cfg = session.cfg
    return {
        "config": cfg.as_dict(),
        "classes_seen": session.split.seen(task),
        "class_order": list(session.bench.order),
        "zo_plan": _plan(session),
        "zo_rule": cfg.zo_rule_name,
        "backbone": session.model.clip.__class__.__name__,
    }


def _benchmark_record(session: Session) -> dict[str, Any]:
    """What the run trained on: the spec, its classes in label order and the class order (config.json)."""
    bench = session.bench
    return {"spec": bench.name, "classes": list(bench.classes), "names": list(bench.names), "order": list(bench.order)}


def _zo_notes(session: Session) -> list[str]:
    units = zo_units(session.cfg, session.model.depth())
    return zo_notes(session.cfg, len(make_blocks(session.model, units, session.cfg)))


def _plan(session: Session) -> dict[str, list[int]]:
    depth = session.model.depth()
    return describe(zo_units(session.cfg, depth), depth)

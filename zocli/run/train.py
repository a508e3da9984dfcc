"""`zocli train`: a whole class-incremental sequence — for each task train, evaluate, checkpoint.

The core takes a resolved config and returns a `RunResult`; progress reaches the caller through
`on_event(dict)`, the same events that are appended to metrics.jsonl (plus per-step ones).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from zocli import __version__
from zocli.config import Config, ConfigError
from zocli.errors import ZocliError
from zocli.flags import given
from zocli.method.plan import describe, zo_units
from zocli.method.step import Stepper, make_blocks, zo_notes
from zocli.resolve import Resolved, saved_config
from zocli.rng import derive_seed
from zocli.run import checkpoint, distributed, inputs, peaks, provenance
from zocli.run.evaluate import evaluate_row, evaluate_untouched, restore
from zocli.run.fidelity import choose_zo_precision
from zocli.run.fidelity import notes as fidelity_notes
from zocli.run.metrics import Summary, seen_accuracy, summarize
from zocli.run.rundir import Interrupted, RunDir, RunDirError, read_json
from zocli.run.session import Session, open_session, overview, task_batches
from zocli.run.tracking import Tracking, tee

Event = dict[str, Any]


class Diverged(ZocliError, RuntimeError):
    """A non-finite loss or parameter: the task stops, the last committed checkpoint stays intact."""


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
            _set_rng(committed["rng"])
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
        "rng": checkpoint.encode_rng(_get_rng()),
    }
    checkpoint.save_task(run_dir, task, session.model.units.state_dict(), _checkpoint_meta(session, task), results)
    checkpoint.drop_state(run_dir)  # the task commit supersedes any mid-task state
    emit(event)


def train_task(
    session: Session,
    run_dir: RunDir,
    task: int,
    state: checkpoint.TrainState | None,
    emit: Callable[[Event], None],
    stop: Callable[[], bool],
) -> Event:
    """Train the adapters on one task's classes (from `state` if resuming); returns its statistics."""
    cfg, model = session.cfg, session.model
    stepper = Stepper(model, cfg, distributed.ranks(cfg))
    start, history = _restore_state(session, run_dir, stepper, state)
    batches = task_batches(session, task, (cfg.seed, task), start, cfg.max_steps)
    total = start + len(batches)
    interval = cfg.log_interval_for(total)
    classes = batches.last - batches.first
    emit({"event": "task_start", "task": task, "steps": total, "start": start, "classes": classes})
    model.train()
    for step, (images, labels, tokens) in enumerate(batches, start=start):
        began = time.perf_counter()
        probe = cfg.probe_every > 0 and (step + 1) % cfg.probe_every == 0
        lr = lr_at(step, total, cfg.warmup_steps, cfg.lr)
        stats = stepper.step(images, labels, tokens, lr, derive_seed(cfg.seed, "zo", task, step), probe)
        _check_finite(stats, task, step)
        history.append({**asdict(stats), "seconds": time.perf_counter() - began, "images": len(labels)})
        emit({"event": "step", "task": task, "step": step, "steps": total, "loss": stats.loss})
        done = step + 1
        if interval and done % interval == 0:
            record = _step_record(task, step, total, history[-interval:], lr, stepper)
            run_dir.log(record)
            emit(record)
        if done < total and (stop() or (cfg.save_every and done % cfg.save_every == 0)):
            _commit_state(run_dir, task, done, stepper, history)
            if stop():
                raise Interrupted(run_dir.root)
    return _task_stats(task, history, stepper)


def _restore_state(
    session: Session, run_dir: RunDir, stepper: Stepper, state: checkpoint.TrainState | None
) -> tuple[int, list]:
    if state is None:
        return 0, []
    checkpoint.check_keys(run_dir.state_file, state.adapters, session.model.units.state_dict())
    session.model.units.load_state_dict(state.adapters)
    if stepper.optimizer is not None and state.optimizer is not None:
        stepper.optimizer.load_state_dict(state.optimizer)
    if stepper.adam is not None and state.zo_state is not None:
        stepper.adam.load_state_dict(state.zo_state)
    _set_rng(state.rng)
    return state.step, list(state.history)


def _commit_state(run_dir: RunDir, task: int, step: int, stepper: Stepper, history: list) -> None:
    optimizer = stepper.optimizer.state_dict() if stepper.optimizer is not None else None
    zo_state = stepper.adam.state_dict() if stepper.adam is not None else None
    checkpoint.save_state(
        run_dir,
        checkpoint.TrainState(
            task, step, stepper.model.units.state_dict(), optimizer, _get_rng(), history, run_dir.log_size(), zo_state
        ),
    )


def _get_rng() -> dict[str, torch.Tensor]:
    """The global RNG states that gating noise and dropout draw from."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return rng


def _set_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["cpu"])
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        if f"cuda.{i}" in rng:
            torch.cuda.set_rng_state(rng[f"cuda.{i}"], i)


def _check_finite(stats, task: int, step: int) -> None:
    # No device sync of its own: parameters move only by the FO optimizer (from gradients of norm
    # fo_grad_norm) and the ZO update (of norm zo_update_norm), so finite norms keep them finite.
    bad = not all(math.isfinite(v) for v in (stats.loss, stats.fo_grad_norm, stats.zo_update_norm))
    if bad:
        raise Diverged(
            f"task {task} step {step}: non-finite {'loss' if not math.isfinite(stats.loss) else 'update'}; "
            f"the last committed checkpoint is intact — lower --lr or --zo-lr-scale in a new run"
        )


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up for `warmup` steps, then cosine to 0 at `total` (MoE-Adapters4CL's cosine_lr)."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * base


def _task_stats(task: int, history: list[dict], stepper: Stepper) -> Event:
    def mean(key):
        return round(sum(h[key] for h in history) / len(history), 6) if history else None

    deltas = [h["zo_loss_delta"] for h in history if h.get("zo_loss_delta") is not None]
    cosines = [h["zo_cosine"] for h in history if h.get("zo_cosine") is not None]
    return {
        "event": "train",
        "task": task,
        "steps": len(history),
        "loss_first": history[0]["loss"] if history else None,
        "loss_last": history[-1]["loss"] if history else None,
        "loss_kind": history[0].get("loss_kind") if history else None,  # compare only like with like; the
        # comparable quantity across configurations is the eval events' `test_loss`
        "zo_rule": stepper.cfg.zo_rule_name if stepper.blocks else None,
        "acceptance_rate": mean("moved") if stepper.blocks and stepper.settings.keeps_best else None,
        # ZO progress: Σ over measured steps of L(after) − L(before) the ZO update, on the step's batch
        # (every step when conservative; probe steps otherwise), and cos(update, −exact gradient)
        "zo_loss_delta": round(sum(deltas), 6) if deltas else None,
        "zo_loss_delta_steps": len(deltas),
        "zo_cosine": round(sum(cosines) / len(cosines), 6) if cosines else None,
        "zo_cosine_steps": len(cosines),
        "zo_update_norm": mean("zo_update_norm"),
        "fo_grad_norm": mean("fo_grad_norm"),
        "forwards_per_step": mean("forwards"),
        "step_seconds": mean("seconds"),
        "ranks": distributed.world(),
    }


def _step_record(task: int, step: int, total: int, window: list[dict], lr: float, stepper: Stepper) -> Event:
    """--log-every: the last N steps in one record (means over the window; learning rates at this step)."""

    def mean(key):
        return round(sum(h[key] for h in window) / len(window), 6)

    zo, fo = bool(stepper.blocks), stepper.optimizer is not None
    seconds = sum(h["seconds"] for h in window)
    images = sum(h.get("images", stepper.cfg.batch_size) for h in window)
    return {
        "event": "train_step",
        "task": task,
        "step": step,
        "steps": total,
        "loss": mean("loss"),
        "loss_kind": window[-1].get("loss_kind"),
        "lr": lr if fo else None,
        "zo_lr": stepper.cfg.zo_lr_at(lr) if zo else None,
        "zo_acceptance": mean("moved") if zo and stepper.settings.keeps_best else None,
        "zo_update_norm": mean("zo_update_norm") if zo else None,
        "fo_grad_norm": mean("fo_grad_norm") if fo else None,
        "step_seconds": round(seconds / len(window), 6),
        "images_per_second": round(images / seconds, 2),
    }


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

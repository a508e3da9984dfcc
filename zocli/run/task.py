"""One task's training: the steps over its batches, the mid-task commit points between them
(`--save-every`, a stop) and the statistics the task reports.

A commit point holds the global RNG states (`get_rng`, `set_rng`) beside the adapters and optimisers, so
a resumed task draws the gating noise and dropout that an uninterrupted one would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from zocli.errors import ZocliError
from zocli.method.step import Stepper
from zocli.rng import derive_seed
from zocli.run import checkpoint, distributed
from zocli.run.rundir import Interrupted, RunDir
from zocli.run.session import Session, task_batches

Event = dict[str, Any]


class Diverged(ZocliError, RuntimeError):
    """A non-finite loss or parameter: the task stops, the last committed checkpoint stays intact."""


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
    set_rng(state.rng)
    return state.step, list(state.history)


def _commit_state(run_dir: RunDir, task: int, step: int, stepper: Stepper, history: list) -> None:
    optimizer = stepper.optimizer.state_dict() if stepper.optimizer is not None else None
    zo_state = stepper.adam.state_dict() if stepper.adam is not None else None
    checkpoint.save_state(
        run_dir,
        checkpoint.TrainState(
            task, step, stepper.model.units.state_dict(), optimizer, get_rng(), history, run_dir.log_size(), zo_state
        ),
    )


def get_rng() -> dict[str, torch.Tensor]:
    """The global RNG states that gating noise and dropout draw from."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return rng


def set_rng(rng: dict[str, torch.Tensor]) -> None:
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

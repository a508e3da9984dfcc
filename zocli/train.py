"""`zocli train`: a whole class-incremental sequence — for each task train, evaluate, checkpoint.

The core takes a resolved config and returns a `RunResult`; progress reaches the caller through
`on_event(dict)`, the same events that are appended to metrics.jsonl (plus per-step ones).
"""

from __future__ import annotations

import math
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__, checkpoint
from .config import Resolved
from .evaluate import evaluate_seen
from .loader import select, train_loader
from .metrics import Summary, summarize
from .plan import describe
from .rng import derive_seed
from .rundir import RunDir, write_json
from .session import Session, open_session
from .step import Stepper

Event = dict[str, Any]


class Diverged(RuntimeError):
    """A non-finite loss or parameter: the task stops, the last committed checkpoint stays intact."""


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    acc_matrix: list[list[float]]
    task_sizes: list[int]
    summary: Summary
    wall_seconds: float
    peak_memory: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "acc_matrix": self.acc_matrix, "task_sizes": self.task_sizes,
                **self.summary.as_dict(), "wall_seconds": round(self.wall_seconds, 2),
                "peak_memory": self.peak_memory}


def run(resolved: Resolved, out: Path, overwrite: bool = False, on_event: Callable[[Event], None] | None = None
        ) -> RunResult:
    """Train every task of the sequence into a fresh run directory `out`."""
    cfg, emit = resolved.config, on_event or (lambda event: None)
    start = time.perf_counter()
    session = open_session(cfg)
    torch.manual_seed(cfg.seed)  # gating noise and dropout of FO passes; seeded once per run
    run_dir = RunDir.create(out, overwrite)
    write_json(run_dir.config, {**resolved.as_dict(), "zocli_version": __version__, "environment": _environment(),
                                "zo_plan": describe(Stepper(session.model, cfg).units, session.model.depth())})
    peaks = []
    for task in range(session.split.n_tasks):
        peaks.append(_run_task(session, run_dir, task, emit))
    summary = summarize(session.acc_matrix, session.task_sizes)
    result = RunResult(run_dir.root, session.acc_matrix, session.task_sizes, summary,
                       time.perf_counter() - start, _peak_memory(session.device, peaks))
    write_json(run_dir.summary, result.as_dict())
    return result


def _run_task(session: Session, run_dir: RunDir, task: int, emit: Callable[[Event], None]) -> int | None:
    if session.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(session.device)
    train_stats = train_task(session, task, emit)
    run_dir.log(train_stats)
    accuracy = evaluate_seen(session.model, session.test, session.test_labels, session.split, task,
                             session.tokens, session.device, session.cfg.eval_batch_size, session.workers)
    session.acc_matrix.append(list(accuracy.row))
    session.task_sizes = list(accuracy.sizes)
    event = {"event": "eval", "task": task, "acc": list(accuracy.row), "task_sizes": list(accuracy.sizes),
             "seen_accuracy": round(summarize(session.acc_matrix, session.task_sizes).seen_accuracy[-1], 2)}
    run_dir.log(event)
    emit(event)
    checkpoint.save_task(run_dir, task, session.model.units.state_dict(), _checkpoint_meta(session, task))
    return torch.cuda.max_memory_allocated(session.device) if session.device.type == "cuda" else None


def train_task(session: Session, task: int, emit: Callable[[Event], None]) -> Event:
    """Train the adapters on one task's classes; returns the task's step statistics."""
    cfg, model = session.cfg, session.model
    first, last = session.split.bounds(task)
    rows = select(session.train_labels, session.train.position, first, last)
    loader = train_loader(session.train, rows, cfg.batch_size, cfg.epochs, (cfg.seed, task), session.workers,
                          max_steps=cfg.max_steps, pin=session.device.type == "cuda")
    total, stepper, tokens = len(loader), Stepper(model, cfg), session.tokens[first:last]
    emit({"event": "task_start", "task": task, "steps": total, "classes": last - first})
    model.train()
    history = []
    for step, (images, labels) in enumerate(loader):
        began = time.perf_counter()
        images = images.to(session.device, non_blocking=True)
        labels = (labels - first).to(session.device)  # local labels: CE over this task's classes only
        stats = stepper.step(images, labels, tokens, lr_at(step, total, cfg.warmup_steps, cfg.lr),
                             derive_seed(cfg.seed, "zo", task, step))
        if not math.isfinite(stats.loss):
            raise Diverged(f"task {task} step {step}: loss is {stats.loss}; lower --lr or --zo-lr-scale "
                           f"(checkpoints up to task {task - 1} are intact)")
        history.append((stats, time.perf_counter() - began))
        emit({"event": "step", "task": task, "step": step, "steps": total, "loss": stats.loss})
    return _task_stats(task, history, stepper)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up for `warmup` steps, then cosine to 0 at `total` (MoE-Adapters4CL's cosine_lr)."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * base


def _task_stats(task: int, history: list, stepper: Stepper) -> Event:
    stats = [s for s, _ in history]
    mean = lambda values: round(sum(values) / len(values), 6) if values else None  # noqa: E731
    return {
        "event": "train", "task": task, "steps": len(stats),
        "loss_first": stats[0].loss if stats else None, "loss_last": stats[-1].loss if stats else None,
        "acceptance_rate": mean([s.moved for s in stats]) if stepper.blocks and stepper.settings.conservative
        else None,
        "zo_update_norm": mean([s.zo_update_norm for s in stats]),
        "fo_grad_norm": mean([s.fo_grad_norm for s in stats]),
        "forwards_per_step": mean([s.forwards for s in stats]),
        "step_seconds": mean([t for _, t in history]),
    }


def _checkpoint_meta(session: Session, task: int) -> dict[str, Any]:
    cfg = session.cfg
    return {"config": cfg.as_dict(), "classes_seen": session.split.seen(task), "class_order": list(session.bench.order),
            "zo_plan": describe(Stepper(session.model, cfg).units, session.model.depth()),
            "backbone": session.model.clip.__class__.__name__}


def _peak_memory(device: torch.device, peaks: list[int | None]) -> dict[str, Any]:
    if device.type == "cuda":
        return {"kind": "cuda_max_allocated", "bytes": max(p or 0 for p in peaks)}
    return {"kind": "process_max_rss", "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _environment() -> dict[str, Any]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}

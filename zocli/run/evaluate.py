"""Evaluation on all seen classes (DESIGN §5, §7), and re-evaluation of a run from its checkpoints.

After task t: softmax over every seen class, no task id, on the union of the seen test sets; text
features for the seen prompts are computed once per evaluation. Deterministic (center crop, no noise).
With `--eval-future` the tasks not trained yet are evaluated too, zero-shot, with a softmax over all
classes (as the untouched model's zero-shot row): the accuracy matrix's upper triangle (metrics.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from zocli.config import ConfigError
from zocli.data import catalogue
from zocli.data.loader import select
from zocli.flags import given
from zocli.method.objective import deterministic
from zocli.method.precision import at_least_fp32, matmuls
from zocli.resolve import saved_config
from zocli.run import distributed, inputs
from zocli.run.checkpoint import CheckpointError, load_task, read_manifest
from zocli.run.metrics import summarize
from zocli.run.rundir import RunDir
from zocli.run.session import Session, eval_batches, open_session

# What a checkpoint pins: the model and protocol its adapters were trained for.
MODEL_KEYS = (
    "benchmark",
    "class_order",
    "inc",
    "base",
    "prompt",
    "model",
    "pretrained",
    "adapter",
    "lora_rank",
    "lora_alpha",
)


@dataclass(frozen=True)
class TaskAccuracy:
    row: tuple[float, ...]  # percent accuracy on each seen task's test set, tasks 0..t
    sizes: tuple[int, ...]  # test images per seen task
    loss: float = 0.0  # mean cross-entropy over the seen classes on the seen test sets: comparable across runs
    # evaluate_untouched only: after each task t, accuracy on tasks 0..t with a softmax over the classes seen
    # by then — the protocol of the trained rows, so the zero-shot figure beside each A_t is comparable
    seen_curve: tuple[float, ...] = ()


def evaluate_seen(session: Session, task: int) -> TaskAccuracy:
    """Accuracy row after training `task`, on the test sets of tasks 0..task (softmax over the seen classes)."""
    return _evaluate(session, range(task + 1), session.split.seen(task))


def evaluate_future(session: Session, task: int) -> TaskAccuracy:
    """Zero-shot accuracy after training `task` on the test sets of the later tasks (softmax over all classes)."""
    split = session.split
    return _evaluate(session, range(task + 1, split.n_tasks), split.seen(split.n_tasks - 1))


def evaluate_row(session: Session, task: int) -> TaskAccuracy:
    """The accuracy-matrix row after `task`: the seen tasks, and with --eval-future every later one too."""
    seen = evaluate_seen(session, task)
    if not session.cfg.eval_future or task + 1 == session.split.n_tasks:
        return seen
    future = evaluate_future(session, task)
    return TaskAccuracy(seen.row + future.row, seen.sizes + future.sizes, seen.loss)  # loss: the seen classes'


def evaluate_untouched(session: Session) -> TaskAccuracy:
    """The model as it is (before task 0: zero-shot CLIP) on every task's test set, softmax over all classes,
    and in the same pass its seen-class curve (`seen_curve`: A_t under the trained rows' protocol)."""
    return _evaluate(session, range(session.split.n_tasks), session.split.seen(session.split.n_tasks - 1), True)


@torch.no_grad()
def _evaluate(session: Session, tasks: range, classes: int, curve: bool = False) -> TaskAccuracy:
    """Accuracy (percent) on each of `tasks`' test sets, classifying among the first `classes` positions;
    with `curve`, also after each task t the accuracy on tasks 0..t among the classes seen by then."""
    model, test, split, device = session.model, session.test, session.split, session.device
    if not tasks:
        return TaskAccuracy((), (), 0.0)
    rows = select(session.test_labels, test.position, split.bounds(tasks.start)[0], split.bounds(tasks.stop - 1)[1])
    bounds = torch.tensor([split.bounds(j)[1] for j in tasks])  # class-position end of each task
    correct = torch.zeros(len(tasks), dtype=torch.long)
    total = torch.zeros(len(tasks), dtype=torch.long)
    # several ranks: each takes every W-th batch (the same batches as one process), then the counts and
    # the per-batch loss sums are summed over the ranks and the losses added in batch order, as here
    rows, n_batches, batch = distributed.share_rows(rows, session.cfg.eval_batch_size)
    losses = torch.zeros(n_batches, dtype=torch.float64)
    ends = [split.bounds(j)[1] for j in tasks] if curve else []
    prefix_correct = torch.zeros(len(ends), dtype=torch.long)  # (T,) correct among the first ends[t] classes
    prefix_total = torch.zeros(len(ends), dtype=torch.long)
    precision = session.cfg.precision
    with deterministic(model):
        with matmuls(precision, device):
            text = at_least_fp32(model.encode("language", session.tokens[:classes].to(device)))  # (classes, E)
        loader = eval_batches(session, rows, session.cfg.eval_batch_size)
        for images, positions in loader:
            with matmuls(precision, device):
                image = at_least_fp32(model.encode("vision", images.to(device, non_blocking=True)))  # (B, E)
            logits = model.logits(image, text)  # (B, classes), fp32
            losses[batch] = float(F.cross_entropy(logits.float(), positions.to(device), reduction="sum"))
            batch += distributed.world()
            predicted = logits.argmax(dim=-1).cpu()  # (B,)
            owner = torch.bucketize(positions, bounds, right=True)  # (B,) index in `tasks` of each true class
            correct += torch.bincount(owner, weights=(predicted == positions).long(), minlength=len(tasks)).long()
            total += torch.bincount(owner, minlength=len(tasks))
            for t, end in enumerate(ends):
                inside = positions < end  # (B,) the images of tasks 0..t
                hit = logits[:, :end].argmax(dim=-1).cpu() == positions
                prefix_correct[t] += int((hit & inside).sum())
                prefix_total[t] += int(inside.sum())
    distributed.sum_counts_(correct, total, losses, prefix_correct, prefix_total)
    loss_sum = 0.0
    for value in losses.tolist():
        loss_sum += value
    row = tuple(round(100.0 * c / max(n, 1), 4) for c, n in zip(correct.tolist(), total.tolist()))
    seen_curve = tuple(round(100.0 * c / max(n, 1), 2) for c, n in zip(prefix_correct.tolist(), prefix_total.tolist()))
    return TaskAccuracy(row, tuple(total.tolist()), round(loss_sum / max(int(total.sum()), 1), 6), seen_curve)


@dataclass(frozen=True)
class RunEvaluation:
    run_dir: str
    tasks: tuple[int, ...]  # the rows re-evaluated
    acc_matrix: list[list[float]]  # one row per re-evaluated task
    task_sizes: list[int]
    summary: dict | None  # Last/Avg/forgetting/BWT (and the upper triangle's figures) when every task was re-evaluated
    changed_inputs: tuple[dict, ...] = ()  # with --allow-changed-inputs: what differed from the run's record
    zero_shot_seen: float | None = None  # the untouched model, all classes (measured once, by train)
    zero_shot_curve: list[float] | None = None  # ... after each task on the seen classes (seen-class softmax)
    zero_shot_row: list[float] | None = None  # ... on each task's test set, softmax over all classes

    def as_dict(self) -> dict:
        return {
            "run_dir": self.run_dir,
            "tasks": list(self.tasks),
            "acc_matrix": self.acc_matrix,
            "task_sizes": self.task_sizes,
            **(self.summary or {}),
            **({"changed_inputs": list(self.changed_inputs)} if self.changed_inputs else {}),
            "zero_shot_seen": self.zero_shot_seen,
            "zero_shot_curve": self.zero_shot_curve,
            "zero_shot": self.zero_shot_row,
        }


def open_run(
    run_root: Path, task: int | None = None, overrides: dict | None = None, allow_changed_inputs: bool = False
) -> tuple[RunDir, Session, tuple[int, ...], list]:
    """A run's session rebuilt from the config in its checkpoint metadata, the committed tasks, and the
    inputs found changed (only with `allow_changed_inputs`; otherwise a change raises InputChanged).

    `overrides` may change where things run and how they are measured, never the model itself.
    """
    run = RunDir.open(run_root)
    done = read_manifest(run)["tasks_done"]
    if done == 0:
        raise CheckpointError(f"{run.checkpoints}: no task has been committed yet")
    if task is not None and not 0 <= task < done:
        raise ConfigError(f"--task {task} is out of range: {run.root} has tasks 0..{done - 1}")
    tasks = tuple(range(done)) if task is None else (task,)
    _, meta = load_task(run, tasks[0])
    try:
        saved = saved_config(meta["config"])
        catalogue.canonical_name(saved.benchmark)  # a benchmark zocli knows: else exit 2 would blame the user
    except (KeyError, TypeError, ConfigError) as exc:  # metadata edited, or written by another version
        raise CheckpointError(f"{run.task_file(tasks[0])}: its metadata holds no valid config ({exc})") from None
    safe = {k: v for k, v in given(overrides or {}).items() if k not in MODEL_KEYS}
    cfg = replace(saved, **safe)
    changes = inputs.verify(run.saved(), cfg, allow_changed_inputs, meta.get("class_order"))
    return run, open_session(cfg), tasks, changes


def restore(run: RunDir, session: Session, task: int) -> None:
    """Load the adapters committed after `task` into the session's model (strict: hash, keys, shapes,
    and the model/adapter config the checkpoint was trained with)."""
    tensors, meta = load_task(run, task, session.model.units.state_dict())
    saved = meta.get("config", {}) if isinstance(meta.get("config"), dict) else {}
    wanted = session.cfg.as_dict()
    differ = [k for k in MODEL_KEYS if saved.get(k) != wanted[k]]
    if differ:
        raise CheckpointError(
            f"{run.task_file(task)}: trained with a different {', '.join(differ)} "
            f"({', '.join(f'{k}={saved.get(k)!r}' for k in differ)}) than this run uses"
        )
    session.model.units.load_state_dict(tensors)


def reevaluate(
    run_root: Path, task: int | None = None, overrides: dict | None = None, allow_changed_inputs: bool = False
) -> RunEvaluation:
    """Rebuild the model from the run's checkpoints alone and evaluate them again (writing nothing)."""
    run, session, tasks, changes = open_run(run_root, task, overrides, allow_changed_inputs)
    matrix, sizes = [], []
    for t in tasks:
        restore(run, session, t)
        accuracy = evaluate_row(session, t)
        matrix.append(list(accuracy.row))
        sizes = list(accuracy.sizes)
    zero_shot = read_manifest(run).get("zero_shot") or {}  # measured once, by train
    summary = summarize(matrix, sizes, zero_shot.get("acc")).as_dict() if task is None else None
    return RunEvaluation(
        str(run.root),
        tasks,
        matrix,
        sizes,
        summary,
        tuple(c.as_dict() for c in changes),
        zero_shot.get("seen_accuracy"),
        zero_shot.get("seen_curve"),
        zero_shot.get("acc"),
    )

"""Evaluation on all seen classes (DESIGN §5, §7), and re-evaluation of a run from its checkpoints.

After task t: softmax over every seen class, no task id, on the union of the seen test sets; text
features for the seen prompts are computed once per evaluation. Deterministic (center crop, no noise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attach import AdaptedCLIP
from .benchmarks import Split
from .loader import TaskImages, eval_loader, select
from .objective import deterministic


@dataclass(frozen=True)
class TaskAccuracy:
    row: tuple[float, ...]  # percent accuracy on each seen task's test set, tasks 0..t
    sizes: tuple[int, ...]  # test images per seen task


@torch.no_grad()
def evaluate_seen(model: AdaptedCLIP, test: TaskImages, labels: list[int], split: Split, task: int,
                  tokens: torch.Tensor, device: torch.device, batch_size: int, workers: int) -> TaskAccuracy:
    """Accuracy row after training `task`: tokens (C, T) are the prompts of every class, in order."""
    seen = split.seen(task)
    rows = select(labels, test.position, 0, seen)
    bounds = torch.tensor([split.bounds(j)[1] for j in range(task + 1)])  # class-position end of each task
    correct = torch.zeros(task + 1, dtype=torch.long)
    total = torch.zeros(task + 1, dtype=torch.long)
    with deterministic(model):
        text = model.encode("language", tokens[:seen].to(device))  # (seen, E)
        for images, positions in eval_loader(test, rows, batch_size, workers, pin=device.type == "cuda"):
            image = model.encode("vision", images.to(device, non_blocking=True))  # (B, E)
            predicted = model.logits(image, text).argmax(dim=-1).cpu()  # (B,)
            owner = torch.bucketize(positions, bounds, right=True)  # (B,) task of each true class
            correct += torch.bincount(owner, weights=(predicted == positions).long(), minlength=task + 1).long()
            total += torch.bincount(owner, minlength=task + 1)
    row = tuple(round(100.0 * c / max(n, 1), 4) for c, n in zip(correct.tolist(), total.tolist()))
    return TaskAccuracy(row, tuple(total.tolist()))

"""Class-incremental metrics over an accuracy matrix (DESIGN §7). Pure functions, no torch.

acc[t][j] is the accuracy (percent) on task j's test set after training task t, for j <= t.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    last: float  # A_{T-1}: accuracy on all seen classes after the final task
    avg: float  # mean of A_0..A_{T-1} ("average incremental accuracy", includes task 0)
    forgetting: float  # mean over j < T-1 of (best earlier acc on j) - final acc on j
    bwt: float  # backward transfer: mean over j < T-1 of final acc on j - acc on j right after j
    seen_accuracy: tuple[float, ...]  # A_t for every t, sample-weighted over the seen test sets

    def as_dict(self) -> dict:
        return {
            "last": self.last,
            "avg": self.avg,
            "forgetting": self.forgetting,
            "bwt": self.bwt,
            "seen_accuracy": list(self.seen_accuracy),
        }


def seen_accuracy(row: Sequence[float], task_sizes: Sequence[int]) -> float:
    """A_t: the union accuracy of one matrix row, weighting each task by its test-set size."""
    sizes = task_sizes[: len(row)]
    return sum(a * n for a, n in zip(row, sizes)) / sum(sizes)


def summarize(acc_matrix: Sequence[Sequence[float]], task_sizes: Sequence[int]) -> Summary:
    """Last, Avg, forgetting and BWT (percent, two decimals) of a lower-triangular accuracy matrix."""
    _check_matrix(acc_matrix, task_sizes)
    seen = [seen_accuracy(row, task_sizes) for row in acc_matrix]
    final, old = acc_matrix[-1], range(len(acc_matrix) - 1)
    forgetting = [max(acc_matrix[t][j] for t in range(j, len(acc_matrix) - 1)) - final[j] for j in old]
    bwt = [final[j] - acc_matrix[j][j] for j in old]
    return Summary(
        last=round(seen[-1], 2),
        avg=round(sum(seen) / len(seen), 2),
        forgetting=round(_mean(forgetting), 2),
        bwt=round(_mean(bwt), 2),
        seen_accuracy=tuple(round(a, 2) for a in seen),
    )


def _mean(values: Sequence[float]) -> float:
    # A single task has nothing to forget: report 0 rather than NaN so JSON stays valid.
    return sum(values) / len(values) if values else 0.0


def _check_matrix(acc_matrix: Sequence[Sequence[float]], task_sizes: Sequence[int]) -> None:
    if not acc_matrix:
        raise ValueError("accuracy matrix is empty")
    for t, row in enumerate(acc_matrix):
        if len(row) != t + 1:
            raise ValueError(f"row {t} of the accuracy matrix has {len(row)} entries, expected {t + 1}")
    if len(task_sizes) < len(acc_matrix) or any(n <= 0 for n in task_sizes):
        raise ValueError("task_sizes must give a positive test-set size for every task in the matrix")

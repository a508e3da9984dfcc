"""Class-incremental metrics over an accuracy matrix (DESIGN §7). Pure functions, no torch.

acc[t][j] is the accuracy (percent) on task j's test set after training task t. For j <= t (the lower
triangle) it is measured with a softmax over the classes seen so far; with `--eval-future` the rows are
complete, and for j > t (the upper triangle) it is the zero-shot accuracy on task j's classes, which
were not trained yet, with a softmax over all classes, exactly as the untouched model's zero-shot row
zs[j] is measured. From the upper triangle (tasks j >= 1, as far as the rows go):

- forward transfer  FWT = mean_j (acc[j-1][j] - zs[j]): how training tasks 0..j-1 changed the zero-shot
  accuracy on task j just before it is trained (GEM's FWT, with the untouched model as the baseline);
- transfer          = mean_j (mean_{t<j} acc[t][j]): the zero-shot accuracy on classes not trained yet,
  averaged over the steps before each task is trained (ZSCL's "Transfer");
- zero-shot retention = 100 * sum_j (mean_{t<j} acc[t][j]) / sum_j zs[j]: the percentage of the untouched
  model's zero-shot accuracy on not-yet-trained tasks that the trained model keeps (100 = all of it).
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
    # From the upper triangle (--eval-future) only; None otherwise. Definitions in the module docstring.
    forward_transfer: float | None = None  # mean over j >= 1 of acc[j-1][j] - zs[j]
    transfer: float | None = None  # mean over j >= 1 of the mean over t < j of acc[t][j]
    zero_shot_retention: float | None = None  # 100 * sum_j mean_{t<j} acc[t][j] / sum_j zs[j]

    def as_dict(self) -> dict:
        upper = {
            k: getattr(self, k)
            for k in ("forward_transfer", "transfer", "zero_shot_retention")
            if getattr(self, k) is not None
        }
        return {
            "last": self.last,
            "avg": self.avg,
            "forgetting": self.forgetting,
            "bwt": self.bwt,
            "seen_accuracy": list(self.seen_accuracy),
            **upper,
        }


def seen_accuracy(row: Sequence[float], task_sizes: Sequence[int]) -> float:
    """A_t: the union accuracy of one matrix row, weighting each task by its test-set size."""
    sizes = task_sizes[: len(row)]
    return sum(a * n for a, n in zip(row, sizes)) / sum(sizes)


def summarize(
    acc_matrix: Sequence[Sequence[float]], task_sizes: Sequence[int], zero_shot: Sequence[float] | None = None
) -> Summary:
    """Last, Avg, forgetting and BWT (percent, two decimals) of the lower triangle; with complete rows also
    transfer and, given the untouched model's row `zero_shot`, forward transfer and zero-shot retention."""
    _check_matrix(acc_matrix, task_sizes)
    seen = [seen_accuracy(row[: t + 1], task_sizes) for t, row in enumerate(acc_matrix)]
    final, old = acc_matrix[-1], range(len(acc_matrix) - 1)
    forgetting = [max(acc_matrix[t][j] for t in range(j, len(acc_matrix) - 1)) - final[j] for j in old]
    bwt = [final[j] - acc_matrix[j][j] for j in old]
    return Summary(
        last=round(seen[-1], 2),
        avg=round(sum(seen) / len(seen), 2),
        forgetting=round(_mean(forgetting), 2),
        bwt=round(_mean(bwt), 2),
        seen_accuracy=tuple(round(a, 2) for a in seen),
        **_upper(acc_matrix, zero_shot),
    )


def _upper(acc_matrix: Sequence[Sequence[float]], zero_shot: Sequence[float] | None) -> dict:
    """forward_transfer, transfer and zero_shot_retention of complete rows; {} without an upper triangle."""
    rows, tasks = len(acc_matrix), len(acc_matrix[0])
    later = range(1, min(rows + 1, tasks))  # tasks j >= 1 with at least one row t < j measured
    if tasks == 1 or not later:
        return {}
    unseen = [sum(acc_matrix[t][j] for t in range(min(j, rows))) / min(j, rows) for j in later]
    out = {"transfer": round(_mean(unseen), 2)}
    if zero_shot is not None and len(zero_shot) >= tasks:
        fwt = [acc_matrix[j - 1][j] - zero_shot[j] for j in later]
        out["forward_transfer"] = round(_mean(fwt), 2)
        baseline = sum(zero_shot[j] for j in later)
        out["zero_shot_retention"] = round(100.0 * sum(unseen) / baseline, 2) if baseline > 0 else None
    return out


def _mean(values: Sequence[float]) -> float:
    # A single task has nothing to forget: report 0 rather than NaN so JSON stays valid.
    return sum(values) / len(values) if values else 0.0


def _check_matrix(acc_matrix: Sequence[Sequence[float]], task_sizes: Sequence[int]) -> None:
    if not acc_matrix:
        raise ValueError("accuracy matrix is empty")
    full = any(len(row) > t + 1 for t, row in enumerate(acc_matrix))  # --eval-future: every task in every row
    for t, row in enumerate(acc_matrix):
        expected = len(task_sizes) if full else t + 1
        if len(row) != expected:
            raise ValueError(f"row {t} of the accuracy matrix has {len(row)} entries, expected {expected}")
    if len(task_sizes) < len(acc_matrix) or any(n <= 0 for n in task_sizes):
        raise ValueError("task_sizes must give a positive test-set size for every task in the matrix")

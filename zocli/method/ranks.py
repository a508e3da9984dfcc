"""This process's share of a step when one run spans W processes (DESIGN §11).

No torch.distributed here: the two collectives a step needs (an in-place sum over the ranks, and a
gather of batch rows) are injected by `zocli.run.distributed`, so the method layer never imports the
run layer. With the default `SOLO` every step runs exactly the single-process code.

- Direction parallelism (`directions`): every rank holds the same batch, the same θ and the same step
  seed; the loss evaluations of a step come in two phases (2q per ZO block, then the three conservative
  candidates), each dealt round-robin (`deal`); each rank measures its own, and one sum per phase
  of a vector of loss scalars (each slot non-zero on one rank only, so the sum is exact) gives every rank
  all of them. Every rank then computes the same ĝ and the same update: no parameter traffic.
- Data parallelism (`data`): the FO pass runs on this rank's contiguous rows of the batch, and the FO
  gradients are summed over the ranks before the AdamW step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    size: int = 1
    directions: bool = False  # deal the ZO loss evaluations among the ranks
    data: bool = False  # shard the FO pass's batch rows among the ranks
    sum_: Callable[[torch.Tensor], None] | None = None  # in place: the tensor becomes its sum over the ranks
    gather: Callable[[torch.Tensor, Sequence[int]], torch.Tensor] | None = None  # rows of every rank, in order

    @property
    def splits_evaluations(self) -> bool:
        return self.size > 1 and self.directions

    @property
    def shards_rows(self) -> bool:
        return self.size > 1 and self.data

    def deal(self, n: int, first: int = 0) -> frozenset[int]:
        """The evaluations of an n-evaluation phase this rank measures: round-robin from rank `first`
        (evaluation i is rank (first + i) mod W's), so each block's 2q evaluations, which cost the same,
        split evenly however unequal the towers are."""
        return frozenset(i for i in range(n) if (first + i) % self.size == self.rank)

    def share(self, measured: dict[int, float], n: int) -> list[float]:
        """All n loss values of a phase, from each rank's own: one all-reduce of n float64 scalars (a
        Python float is a float64, so nothing is rounded; every slot is non-zero on one rank only)."""
        values = torch.zeros(n, dtype=torch.float64)
        for index, value in measured.items():
            values[index] = value
        self.sum_(values)
        return values.tolist()

    def counts(self, n: int) -> list[int]:
        """Rows per rank of an n-row batch: contiguous, the first n % size ranks one more."""
        return [n // self.size + (r < n % self.size) for r in range(self.size)]

    def rows(self, n: int) -> slice:
        counts = self.counts(n)
        start = sum(counts[: self.rank])
        return slice(start, start + counts[self.rank])

    def sum_tensors_(self, tensors: Sequence[torch.Tensor]) -> None:
        """Sum tensors over the ranks in place, in one collective (flattened into one buffer)."""
        if not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self.sum_(flat)
        for t, piece in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(piece.view_as(t))


SOLO = Ranks()

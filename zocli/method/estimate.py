"""The finite-difference estimate of one ZO block (DESIGN §6): q seeded directions z, ĝ = d/ε · z with
d = [L(θ+εz) − L(θ−εz)]/2 (two-sided) or L(θ+εz) − L(θ) (one-sided), averaged over the directions.

`estimate_flat` measures every loss itself; `measure_own` makes the same moves and measures only the
losses one rank owns (DESIGN §11), and `accumulate_` then builds the same ĝ from everyone's values.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from zocli.method.blocks import Block, direction, move_
from zocli.rng import derive_seed


@dataclass(frozen=True)
class ZOSettings:
    two_sided: bool = True
    queries: int = 1
    sign: bool = False  # MoZO: element-wise sign of ĝ, before the rule
    conservative: bool = True
    rule: str = "sgd"  # sgd | adam (use ĝ) | noise | random-search (controls: no finite difference)
    skip_irrelevant: bool = True  # skip estimates that cannot change the step (see `irrelevant_estimate`)

    @property
    def keeps_best(self) -> bool:
        """Whether the step evaluates {θ, θ − ηu, θ + ηu} and keeps the best (noise never does)."""
        return self.rule == "random-search" or (self.conservative and self.rule != "noise")

    def estimates(self, n_blocks: int) -> bool:
        """Whether finite differences are measured at all this configuration."""
        return self.rule in ("sgd", "adam") and not (self.skip_irrelevant and self.irrelevant_estimate(n_blocks))

    def irrelevant_estimate(self, n_blocks: int) -> bool:
        """sign + conservative + q = 1 + one block: u = sign(d)·sign(z), and the candidates
        {θ, θ ∓ η·sign(z)} are the same set whichever sign d has — the step is random search."""
        return self.rule == "sgd" and self.sign and self.conservative and self.queries == 1 and n_blocks == 1


def estimate_flat(
    block: Block, loss: Callable[[], float], seed: int, settings: ZOSettings
) -> tuple[torch.Tensor, float]:
    """ĝ (N,) for `block`: the mean over q seeded directions of (d / ε) · z; and the loss at θ, measured
    (one-sided) or the mean of the ±εz losses (two-sided, equal up to O(ε²)). One draw, three moves and one
    accumulation per query."""
    base = None if settings.two_sided else loss()
    grad, seen = None, []
    for query in range(settings.queries):
        z = direction(block, derive_seed(seed, block.name, query))  # (N,), alive for this query only
        move_(block, z, +1.0)
        plus = loss()
        if settings.two_sided:
            move_(block, z, -2.0)
            minus = loss()
            move_(block, z, +1.0)
            d, seen = (plus - minus) / 2.0, seen + [plus, minus]
        else:
            move_(block, z, -1.0)
            d = plus - base
        grad = accumulate_(block, grad, z, d, settings.queries)
    return grad, (base if base is not None else sum(seen) / len(seen))


def accumulate_(block: Block, grad: torch.Tensor | None, z: torch.Tensor, d: float, q: int) -> torch.Tensor:
    """ĝ += d/(ε·q) · z; the first query's z becomes ĝ in place: no zeros, no extra pass."""
    for start, stop, eps in block.runs:
        if grad is None:
            z[start:stop].mul_(d / (eps * q))
        else:
            grad[start:stop].add_(z[start:stop], alpha=d / (eps * q))
    return z if grad is None else grad  # (N,)


def measure_own(
    block: Block,
    loss: Callable[[], float],
    seed: int,
    settings: ZOSettings,
    index: Sequence[int],
    mine: Collection[int],
    measured: dict[int, float],
) -> list[torch.Tensor]:
    """One block's estimate moves, measuring into `measured` the losses this rank owns (the block's
    evaluation i is the step's `index[i]`). Returns the block's q directions."""

    def measure(i: int) -> None:
        if index[i] in mine:
            measured[index[i]] = loss()

    two, zs = settings.two_sided, []
    if not two:
        measure(0)
    for query in range(settings.queries):
        # the direction's seed is derive_seed(step seed, block, query): the same on every rank, never drawn per rank
        zs.append(direction(block, derive_seed(seed, block.name, query)))
        move_(block, zs[-1], +1.0)
        measure(2 * query if two else 1 + query)
        if two:
            move_(block, zs[-1], -2.0)
            measure(2 * query + 1)
            move_(block, zs[-1], +1.0)
        else:
            move_(block, zs[-1], -1.0)
    return zs


def round_trip_(block: Block, z: torch.Tensor, settings: ZOSettings) -> None:
    """The parameter arithmetic of `estimate_flat` without its forwards: +εz, −2εz, +εz is not exact in
    floating point, and a skipped estimate must leave θ bit-identical to a measured one."""
    for scale in (1.0, -2.0, 1.0) if settings.two_sided else (1.0, -1.0):
        move_(block, z, scale)

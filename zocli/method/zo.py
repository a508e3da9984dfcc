"""The hybrid FO/ZO step (DESIGN §6): backprop for FO units, finite differences for ZO units
(`estimate`, over the `blocks`).

One step on a fixed batch:
  1. FO forward + backward at θ (the objective leaves grads on FO units only);
  2. ZO estimate at the same θ: per block, q seeded directions z, ĝ = d/ε · z with
     d = [L(θ+εz) − L(θ−εz)]/2 (two-sided) or L(θ+εz) − L(θ) (one-sided);
  3. FO optimizer step;
  4. ZO update: the rule turns ĝ (or sign(ĝ), MoZO) into a direction u — `sgd`: u = ĝ; `adam`: Adam
     moments of ĝ, u = m̂/(√v̂+δ) — and θ ← θ − η·u, or conservatively the best of {θ, θ − η·u, θ + η·u}
     on the same batch (ties keep θ), reached by setting parameters directly.

Two controls measure no finite difference: `noise` moves every coordinate by ±η along a fresh random
sign vector (the size of a sign or early Adam step, no information), and `random-search` keeps the best
of {θ, θ ± η·sign(z)} (what sign + conservative + q = 1 + one block reduces to, whatever d is).

Every ZO loss goes through `Objective.loss_fn`; under `--nproc` the ranks share each phase's losses
(DESIGN §11).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from zocli.method.blocks import Block, direction
from zocli.method.estimate import ZOSettings, accumulate_, estimate_flat, measure_own, round_trip_
from zocli.method.plan import Unit
from zocli.method.ranks import SOLO, Ranks
from zocli.rng import derive_seed


class Objective(Protocol):
    """The loss of one fixed batch, as the step needs it."""

    def fo_backward(self) -> float | None:
        """Training-mode loss at θ with grads into FO units; None when there are no FO units."""

    def loss_fn(self, units: Collection[Unit]) -> Callable[[], float]:
        """A deterministic no-grad loss at the current θ that re-runs only what `units` can change."""

    def reset(self, units: Collection[Unit] | None = None) -> None:
        """The parameters of `units` (all when None) moved outside a loss closure, or were left rounded
        by one: drop the features cached for their towers."""

    def gradient(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The exact gradient of the deterministic loss at θ with respect to `params` (a probe)."""


@dataclass(frozen=True)
class StepStats:
    loss: float  # FO training loss, or the ZO loss at θ when nothing is FO
    fo_grad_norm: float
    zo_update_norm: float  # ‖η·u‖ actually applied (0 when the conservative step kept θ)
    moved: bool  # False when the conservative step kept θ
    forwards: int  # loss evaluations this step (the FO pass counts one)
    zo_loss_delta: float | None = None  # L(after) − L(before) of the ZO update on this batch, when measured
    zo_cosine: float | None = None  # cos(applied ZO update, −exact gradient of the ZO units), on probe steps
    # what `loss` is: "train_mode" (the FO pass: dropout and gating noise on) or "deterministic" (eval mode,
    # from the ZO forwards when nothing is FO); they differ, so compare losses of one kind only
    loss_kind: str = "train_mode"


class ZOAdam:
    """Adam moments over the ZO estimates of a fixed parameter list (no weight decay).

    The direction is m̂ / (√v̂ + 1e-8); the caller moves the parameters, so conservative candidates are
    θ ± η·direction and no optimizer `step()` is ever called twice. State: two copies of the ZO units.
    """

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, params: Sequence[torch.Tensor], blocks: Sequence[Block] | None = None):
        """`params` shaped like what `direction` receives; `blocks`: see `for_blocks`."""
        self.t, self.blocks = 0, blocks
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @classmethod
    def for_blocks(cls, blocks: Sequence[Block]) -> ZOAdam:
        """Moments as one (N,) tensor per block, as `hybrid_step` hands them over; a checkpoint still
        holds one m and one v per parameter (the format predates flat blocks)."""
        flats = [torch.zeros(b.size, device=b.params[0].device, dtype=b.params[0].dtype) for b in blocks]
        return cls(flats, tuple(blocks))

    def direction(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        (b1, b2), self.t = self.BETAS, self.t + 1
        out = []
        for m, v, g in zip(self.m, self.v, grads):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            out.append((m / (1 - b1**self.t)) / ((v / (1 - b2**self.t)).sqrt_().add_(self.EPS)))
        return out

    def _per_param(self, moments: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.blocks is None:
            return moments
        return [view for block, m in zip(self.blocks, moments) for view in block.split(m)]

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"t": torch.tensor(self.t)}
        state.update({f"m.{i}": m for i, m in enumerate(self._per_param(self.m))})
        state.update({f"v.{i}": v for i, v in enumerate(self._per_param(self.v))})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.t = int(state["t"])
        for i, (m, v) in enumerate(zip(self._per_param(self.m), self._per_param(self.v))):
            m.copy_(state[f"m.{i}"])
            v.copy_(state[f"v.{i}"])


def _zo_directions(
    counter: _Counter, blocks: Sequence[Block], seed: int, settings: ZOSettings, ranks: Ranks
) -> tuple[list[torch.Tensor], list[float]]:
    """Each block's ĝ (sign(ĝ) under MoZO), or for the controls and for estimates that cannot matter
    sign(z) of the estimate's own first direction; and the ZO losses at θ the estimates measured. The
    objective forgets each block's tower features after its moves, so what it still holds is exact at θ."""
    estimates = settings.estimates(len(blocks))
    if estimates and ranks.splits_evaluations:
        return _estimate_dealt(counter, blocks, seed, settings, ranks)
    grads, losses = [], []
    for block in blocks:
        if estimates:
            grad, loss = estimate_flat(block, counter.loss_fn(block.units), seed, settings)
            grads.append(grad.sign_() if settings.sign else grad)
            losses.append(loss)
        else:
            grads.append(_unmeasured_direction(block, seed, settings, len(blocks)))
        counter.reset(block.units)  # ±εz left θ rounded: features cached for its tower no longer hold
    return grads, losses


def _unmeasured_direction(block: Block, seed: int, settings: ZOSettings, n_blocks: int) -> torch.Tensor:
    z = direction(block, derive_seed(seed, block.name, 0))
    if settings.irrelevant_estimate(n_blocks):
        round_trip_(block, z, settings)  # θ rounds exactly as under the skipped ±εz forwards
    return z.sign_()


def _estimate_dealt(
    counter: _Counter, blocks: Sequence[Block], seed: int, settings: ZOSettings, ranks: Ranks
) -> tuple[list[torch.Tensor], list[float]]:
    """`estimate_flat` of every block with the step's estimate evaluations dealt among the ranks
    (`Ranks.deal`): every rank makes every move (±εz rounds θ, and the next query's losses are measured
    at that rounded θ) and measures its own losses; after the last block one exchange gives it all of
    them, and it accumulates each ĝ from the same z, in the same order, with the same values as one
    process: bit for bit its ĝ. Returns each block's ĝ and its loss at θ."""
    q, two = settings.queries, settings.two_sided
    per_block = 2 * q if two else q + 1
    n = per_block * len(blocks)
    mine, measured = ranks.deal(n, counter.count + counter.others), {}
    drawn = []
    for b, block in enumerate(blocks):
        loss = counter.loss_fn(block.units)
        drawn.append(measure_own(block, loss, seed, settings, range(b * per_block, n), mine, measured))
        counter.reset(block.units)  # ±εz left θ rounded: features cached for its tower no longer hold
    values = ranks.share(measured, n)
    counter.others += n - len(measured)
    grads, losses = [], []
    for b, (block, zs) in enumerate(zip(blocks, drawn)):
        block_losses, grad = values[b * per_block : (b + 1) * per_block], None  # every rank's, in order
        for query, z in enumerate(zs):
            grad = accumulate_(block, grad, z, _difference(block_losses, query, two), q)
        grads.append(grad.sign_() if settings.sign else grad)
        losses.append(sum(block_losses) / per_block if two else block_losses[0])
    return grads, losses


def _difference(block_losses: Sequence[float], query: int, two_sided: bool) -> float:
    """d of one query from its block's losses in evaluation order (as `estimate_flat` measures them)."""
    if two_sided:
        return (block_losses[2 * query] - block_losses[2 * query + 1]) / 2.0
    return block_losses[1 + query] - block_losses[0]


def hybrid_step(
    objective: Objective,
    blocks: Sequence[Block],
    fo_optimizer: torch.optim.Optimizer | None,
    zo_lr: float,
    settings: ZOSettings,
    seed: int,
    adam: ZOAdam | None = None,
    probe: bool = False,
    ranks: Ranks = SOLO,
) -> StepStats:
    """One step of DESIGN §6 on the objective's batch; `seed` names this step's directions.

    `adam` holds the moments when settings.rule is "adam" (`ZOAdam.for_blocks`); `probe` also measures the
    cosine between the applied ZO update and the exact gradient of the ZO units (one forward + backward);
    `ranks`: this process's share of the loss evaluations (DESIGN §11; `forwards` counts every rank's)."""
    counter = _Counter(objective)
    fo_loss = counter.fo_backward()
    fo_grad_norm = _grad_norm(fo_optimizer)  # a tensor: read with the ZO norm, in one host sync
    updates, zo_losses = _zo_directions(counter, blocks, seed, settings, ranks)  # updates: (N,) per block
    if adam is not None:
        updates = adam.direction(updates)
    if fo_optimizer is not None:
        fo_optimizer.step()
        fo_optimizer.zero_grad(set_to_none=True)
        objective.reset()
    zo = _apply_zo(counter, blocks, updates, zo_lr, settings, probe, ranks) if blocks else _ZOResult()
    loss = fo_loss if fo_loss is not None else (sum(zo_losses) / len(zo_losses) if zo_losses else zo.before)
    if loss is None:  # nothing measured a loss (every unit frozen, or an unprobed noise step): measure it
        loss = counter.loss_fn(())()
    fo_grad_norm, zo_norm = _floats(fo_grad_norm, _norm_of(updates) if zo.moved else None)
    return StepStats(
        loss,
        fo_grad_norm,
        zo_lr * zo_norm,
        zo.moved,
        counter.count + counter.others,
        zo.delta,
        zo.cosine,
        "train_mode" if fo_loss is not None else "deterministic",
    )


@dataclass(frozen=True)
class _ZOResult:
    moved: bool = False
    before: float | None = None  # loss at θ after the FO step, before the ZO update
    delta: float | None = None
    cosine: float | None = None


def _apply_zo(
    objective: _Counter,
    blocks: Sequence[Block],
    updates: list[torch.Tensor],
    lr: float,
    settings: ZOSettings,
    probe: bool,
    ranks: Ranks = SOLO,
) -> _ZOResult:
    """Move the ZO units by −η·u (or keep the best candidate); measure what the move did where it is free
    (conservative) or asked for (`probe`)."""
    units = tuple(u for block in blocks for u in block.units)
    # L(θ) from every tower's features the objective still holds at θ (the estimates' set-up: dual ZO
    # re-runs only the text tower here); the candidates re-run what the ZO units change
    at_theta, loss = objective.loss_fn(()), objective.loss_fn(units)
    gradient = objective.gradient([p for block in blocks for p in block.params]) if probe else None
    targets, steps = _targets(blocks, updates)
    theta = [t.detach().clone() for t in targets]
    if settings.keeps_best and ranks.splits_evaluations:  # the three candidates dealt among the ranks
        # the round-robin goes on from the step's earlier evaluations
        mine, measured = ranks.deal(3, objective.count + objective.others), {}
        for i, k in enumerate((0.0, -1.0, 1.0)):
            if i in mine:
                if k:
                    _set_candidate_(targets, theta, steps, k * lr)
                measured[i] = loss() if k else at_theta()
        losses = dict(zip((0.0, -1.0, 1.0), ranks.share(measured, 3)))
        objective.others += 3 - len(measured)
        best = min(losses, key=losses.get)  # as below; every rank then sets the same candidate
        _set_candidate_(targets, theta, steps, best * lr)
        moved, before, delta = best != 0.0, losses[0.0], losses[best] - losses[0.0]
    elif settings.keeps_best:
        losses = {0.0: at_theta()}  # where the parameters are
        for k in (-1.0, 1.0):
            _set_candidate_(targets, theta, steps, k * lr)
            losses[k] = loss()
        best = min(losses, key=losses.get)  # dict order makes ties go to θ, then θ − ηu
        if best != 1.0:  # θ + ηu is where the parameters already are
            _set_candidate_(targets, theta, steps, best * lr)
        moved, before, delta = best != 0.0, losses[0.0], losses[best] - losses[0.0]
    else:
        before = at_theta() if probe else None
        _set_candidate_(targets, theta, steps, -lr)
        moved, delta = True, (loss() - before if probe else None)
    objective.reset(units)
    cosine = (
        _cosine([(t - th).flatten() for t, th in zip(targets, theta)], [-g.flatten() for g in gradient])
        if probe
        else None
    )
    return _ZOResult(moved, before, delta, cosine)


def _targets(blocks: Sequence[Block], updates: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """What the update writes to, paired with its piece of u: a flat block's buffer whole, else each tensor."""
    pairs = [([b.flat], [u]) if b.is_flat() else (list(b.params), b.split(u)) for b, u in zip(blocks, updates)]
    return [t for ts, _ in pairs for t in ts], [u for _, us in pairs for u in us]


def _set_candidate_(params, theta, updates, step: float) -> None:
    for p, t, u in zip(params, theta, updates):
        torch.add(t, u, alpha=step, out=p)  # one pass; the same rounding as p.copy_(t).add_(u, alpha=step)


def scalar(value: torch.Tensor) -> float:
    """A loss tensor as a Python float; meta tensors (memory estimates) carry no value and read as 0."""
    return 0.0 if value.is_meta else float(value.detach())


def _grad_norm(optimizer: torch.optim.Optimizer | None) -> torch.Tensor | None:
    if optimizer is None:
        return None
    return _norm_of([p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None])


def _cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float | None:
    dot = sum((x.double() * y.double()).sum() for x, y in zip(a, b))
    norm_a, norm_b = _floats(_norm_of(a), _norm_of(b))
    return scalar(dot) / (norm_a * norm_b) if norm_a * norm_b > 0 else None


def _norm_of(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """‖tensors‖₂ accumulated in float64, as a 0-d tensor on their device (no host sync)."""
    if not tensors:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t, dtype=torch.float64) for t in tensors]))


def _floats(*values: torch.Tensor | None) -> list[float]:
    """0-d tensors as floats with one host sync between them; None (nothing measured) and meta read as 0."""
    present = [v for v in values if v is not None and not v.is_meta]
    read = iter(torch.stack([v.to(present[0].device) for v in present]).tolist() if present else [])
    return [next(read) if v is not None and not v.is_meta else 0.0 for v in values]


class _Counter:
    """Counts loss evaluations, the cost unit reported as forwards per step."""

    def __init__(self, objective: Objective):
        self.objective, self.count = objective, 0
        self.others = 0  # evaluations of this step that other ranks made (direction parallelism)

    def fo_backward(self) -> float | None:
        loss = self.objective.fo_backward()
        self.count += loss is not None
        return loss

    def loss_fn(self, units: Collection[Unit]) -> Callable[[], float]:
        inner = self.objective.loss_fn(units)

        def counted() -> float:
            self.count += 1
            return inner()

        return counted

    def reset(self, units: Collection[Unit] | None = None) -> None:
        self.objective.reset(units)

    def gradient(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.objective.gradient(params)

"""The hybrid FO/ZO step (DESIGN §6): backprop for FO units, finite differences for ZO units.

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

Directions are regenerated from seeds with a private generator; the global RNG is never touched.
Every ZO loss goes through `Objective.loss_fn`, so a multi-GPU reduction would live in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .plan import Unit
from .rng import derive_seed


class Objective(Protocol):
    """The loss of one fixed batch, as the step needs it."""

    def fo_backward(self) -> float | None:
        """Training-mode loss at θ with grads into FO units; None when there are no FO units."""

    def loss_fn(self, units: Collection[Unit]) -> Callable[[], float]:
        """A deterministic no-grad loss at the current θ that re-runs only what `units` can change."""

    def reset(self) -> None:
        """Parameters changed outside perturbations: drop cached features."""

    def gradient(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The exact gradient of the deterministic loss at θ with respect to `params` (a probe)."""


@dataclass(frozen=True)
class Block:
    """ZO parameters perturbed together by one finite difference."""

    name: str  # "vision", "language", "joint" or "vision.3"
    units: tuple[Unit, ...]
    params: tuple[torch.Tensor, ...]
    eps: tuple[float, ...]  # per parameter: a joint block mixes the branches' ε


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

    def __init__(self, params: Sequence[torch.Tensor]):
        self.t = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def direction(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        (b1, b2), self.t = self.BETAS, self.t + 1
        out = []
        for m, v, g in zip(self.m, self.v, grads):
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            out.append((m / (1 - b1 ** self.t)) / ((v / (1 - b2 ** self.t)).sqrt_().add_(self.EPS)))
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"t": torch.tensor(self.t)}
        state.update({f"m.{i}": m for i, m in enumerate(self.m)})
        state.update({f"v.{i}": v for i, v in enumerate(self.v)})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.t = int(state["t"])
        for i, (m, v) in enumerate(zip(self.m, self.v)):
            m.copy_(state[f"m.{i}"])
            v.copy_(state[f"v.{i}"])


def perturb_(block: Block, seed: int, scale: float) -> None:
    """θ_p += scale · ε_p · z_p in place, z regenerated from `seed` one tensor at a time."""
    for param, eps, z in zip(block.params, block.eps, _directions(block, seed)):
        param.add_(z, alpha=scale * eps)


def estimate(block: Block, loss: Callable[[], float], seed: int, settings: ZOSettings
             ) -> tuple[list[torch.Tensor], float]:
    """ĝ for every parameter of `block` (the mean over q seeded directions of (d / ε) · z), and the
    loss at θ: measured (one-sided) or the mean of the ±εz losses (two-sided, equal up to O(ε²))."""
    base = None if settings.two_sided else loss()
    grads = [torch.zeros_like(p) for p in block.params]
    seen = []
    for query in range(settings.queries):
        s = derive_seed(seed, block.name, query)
        perturb_(block, s, +1.0)
        plus = loss()
        if settings.two_sided:
            perturb_(block, s, -2.0)
            minus = loss()
            perturb_(block, s, +1.0)
            d, seen = (plus - minus) / 2.0, seen + [plus, minus]
        else:
            perturb_(block, s, -1.0)
            d = plus - base
        for g, eps, z in zip(grads, block.eps, _directions(block, s)):
            g.add_(z, alpha=d / (eps * settings.queries))
    return grads, (base if base is not None else sum(seen) / len(seen))


def _round_trip_(block: Block, seed: int, settings: ZOSettings) -> None:
    """The parameter arithmetic of `estimate` without its forwards: +εz, −2εz, +εz is not exact in
    floating point, and a skipped estimate must leave θ bit-identical to a measured one."""
    for scale in ((1.0, -2.0, 1.0) if settings.two_sided else (1.0, -1.0)):
        perturb_(block, seed, scale)


def hybrid_step(objective: Objective, blocks: Sequence[Block], fo_optimizer: torch.optim.Optimizer | None,
                zo_lr: float, settings: ZOSettings, seed: int, adam: ZOAdam | None = None,
                probe: bool = False) -> StepStats:
    """One step of DESIGN §6 on the objective's batch; `seed` names this step's directions.

    `adam` holds the moments when settings.rule is "adam"; `probe` also measures the cosine between the
    applied ZO update and the exact gradient of the ZO units (one extra forward and backward)."""
    counter = _Counter(objective)
    fo_loss = counter.fo_backward()
    fo_grad_norm = _grad_norm(fo_optimizer)
    zo_losses, updates = [], []
    for block in blocks:
        if settings.estimates(len(blocks)):
            grads, zo_loss = estimate(block, counter.loss_fn(block.units), seed, settings)
            zo_losses.append(zo_loss)
            updates.extend(g.sign_() if settings.sign else g for g in grads)
        else:  # controls, and estimates that cannot matter: sign(z) of the estimate's own first direction
            s = derive_seed(seed, block.name, 0)
            if settings.irrelevant_estimate(len(blocks)):
                _round_trip_(block, s, settings)  # θ rounds exactly as under the skipped ±εz forwards
            updates.extend(z.sign_() for z in _directions(block, s))
    if adam is not None:
        updates = adam.direction(updates)
    if fo_optimizer is not None:
        fo_optimizer.step()
        fo_optimizer.zero_grad(set_to_none=True)
        objective.reset()
    params = [p for block in blocks for p in block.params]
    zo = _apply_zo(counter, blocks, params, updates, zo_lr, settings, probe) if blocks else _ZOResult()
    loss = fo_loss if fo_loss is not None else (sum(zo_losses) / len(zo_losses) if zo_losses else zo.before)
    if loss is None:  # nothing measured a loss (every unit frozen, or an unprobed noise step): measure it
        loss = counter.loss_fn(())()
    return StepStats(loss, fo_grad_norm, zo_lr * _norm(updates) if zo.moved else 0.0, zo.moved, counter.count,
                     zo.delta, zo.cosine, "train_mode" if fo_loss is not None else "deterministic")


@dataclass(frozen=True)
class _ZOResult:
    moved: bool = False
    before: float | None = None  # loss at θ after the FO step, before the ZO update
    delta: float | None = None
    cosine: float | None = None


def _apply_zo(objective: _Counter, blocks: Sequence[Block], params: list[torch.Tensor],
              updates: list[torch.Tensor], lr: float, settings: ZOSettings, probe: bool) -> _ZOResult:
    """Move the ZO units by −η·u (or keep the best candidate); measure what the move did where it is free
    (conservative) or asked for (`probe`)."""
    units = tuple(u for block in blocks for u in block.units)
    loss = objective.loss_fn(units)
    gradient = objective.gradient(params) if probe else None
    theta = [p.detach().clone() for p in params]
    if settings.keeps_best:
        losses = {}
        for k in (0.0, -1.0, 1.0):
            _set_candidate_(params, theta, updates, k * lr)
            losses[k] = loss()
        best = min(losses, key=losses.get)  # dict order makes ties go to θ, then θ − ηu
        _set_candidate_(params, theta, updates, best * lr)
        moved, before, delta = best != 0.0, losses[0.0], losses[best] - losses[0.0]
    else:
        before = loss() if probe else None
        _set_candidate_(params, theta, updates, -lr)
        moved, delta = True, (loss() - before if probe else None)
    cosine = _cosine([p - t for p, t in zip(params, theta)], [-g for g in gradient]) if probe else None
    return _ZOResult(moved, before, delta, cosine)


def _set_candidate_(params, theta, updates, step: float) -> None:
    for p, t, u in zip(params, theta, updates):
        p.copy_(t).add_(u, alpha=step)


def scalar(value: torch.Tensor) -> float:
    """A loss tensor as a Python float; meta tensors (memory estimates) carry no value and read as 0."""
    return 0.0 if value.is_meta else float(value.detach())


def _directions(block: Block, seed: int):
    # One generator per device, seeded once, consumed in the frozen parameter order: the same seed
    # always replays the same z, and only one z tensor is alive at a time.
    generators: dict[torch.device, torch.Generator] = {}
    for param in block.params:
        if param.is_meta:  # no generator exists for meta; an empty tensor allocates the same
            yield torch.empty_like(param)
            continue
        gen = generators.get(param.device)
        if gen is None:
            gen = generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        yield torch.randn(param.shape, generator=gen, device=param.device, dtype=param.dtype)


def _grad_norm(optimizer: torch.optim.Optimizer | None) -> float:
    if optimizer is None:
        return 0.0
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return _norm(grads)


def _cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float | None:
    dot = sum((x.double() * y.double()).sum() for x, y in zip(a, b))
    norms = _norm(a) * _norm(b)
    return scalar(dot) / norms if norms > 0 else None


def _norm(tensors: Sequence[torch.Tensor]) -> float:
    return scalar(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))) if tensors else 0.0


class _Counter:
    """Counts loss evaluations, the cost unit reported as forwards per step."""

    def __init__(self, objective: Objective):
        self.objective, self.count = objective, 0

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

    def reset(self) -> None:
        self.objective.reset()

    def gradient(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.objective.gradient(params)

"""The hybrid FO/ZO step (DESIGN §6): backprop for FO units, finite differences for ZO units.

One step on a fixed batch:
  1. FO forward + backward at θ (the objective leaves grads on FO units only);
  2. ZO estimate at the same θ: per block, q seeded directions z, ĝ = d/ε · z with
     d = [L(θ+εz) − L(θ−εz)]/2 (two-sided) or L(θ+εz) − L(θ) (one-sided);
  3. FO optimizer step;
  4. ZO update u = ĝ or sign(ĝ) (MoZO), θ ← θ − λη·u, or conservatively the best of
     {θ, θ − λη·u, θ + λη·u} on the same batch (ties keep θ), reached by setting parameters directly.

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
    sign: bool = False  # MoZO: element-wise sign of ĝ
    conservative: bool = True


@dataclass(frozen=True)
class StepStats:
    loss: float  # FO training loss, or the ZO loss at θ when nothing is FO
    fo_grad_norm: float
    zo_update_norm: float  # ‖λη·u‖ actually applied (0 when the conservative step kept θ)
    moved: bool  # False when the conservative step kept θ
    forwards: int  # loss evaluations this step (the FO pass counts one)


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


def hybrid_step(objective: Objective, blocks: Sequence[Block], fo_optimizer: torch.optim.Optimizer | None,
                zo_lr: float, settings: ZOSettings, seed: int) -> StepStats:
    """One step of DESIGN §6 on the objective's batch; `seed` names this step's directions."""
    counter = _Counter(objective)
    fo_loss = counter.fo_backward()
    fo_grad_norm = _grad_norm(fo_optimizer)
    zo_losses, updates = [], []
    for block in blocks:
        grads, zo_loss = estimate(block, counter.loss_fn(block.units), seed, settings)
        zo_losses.append(zo_loss)
        updates.extend(g.sign_() if settings.sign else g for g in grads)
    if fo_optimizer is not None:
        fo_optimizer.step()
        fo_optimizer.zero_grad(set_to_none=True)
        objective.reset()
    params = [p for block in blocks for p in block.params]
    moved = True
    if blocks and settings.conservative:
        moved = _conservative_(counter, blocks, params, updates, zo_lr)
    elif blocks:
        for p, u in zip(params, updates):
            p.add_(u, alpha=-zo_lr)
    norm = zo_lr * _norm(updates) if moved else 0.0
    loss = fo_loss if fo_loss is not None else sum(zo_losses) / len(zo_losses)
    return StepStats(loss, fo_grad_norm, norm, moved, counter.count)


def _conservative_(objective: Objective, blocks: Sequence[Block], params: list[torch.Tensor],
                   updates: list[torch.Tensor], lr: float) -> bool:
    """Keep the lowest-loss candidate of θ + k·λη·u for k in (0, −1, +1); ties keep θ.

    Candidates are written from a copy of θ, so the kept parameters equal one candidate exactly.
    Returns whether θ moved.
    """
    units = tuple(u for block in blocks for u in block.units)
    loss = objective.loss_fn(units)
    theta = [p.detach().clone() for p in params]
    losses = {}
    for k in (0.0, -1.0, 1.0):
        _set_candidate_(params, theta, updates, k * lr)
        losses[k] = loss()
    best = min(losses, key=losses.get)  # dict order makes ties go to θ, then θ − ηu
    _set_candidate_(params, theta, updates, best * lr)
    return best != 0.0


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

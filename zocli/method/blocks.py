"""ZO blocks: the parameters one finite difference perturbs together (DESIGN §6), their seeded directions
and their moves.

A block's parameters become views into one flat buffer (`flatten_`), so a perturbation, a restore and an
update are one kernel per run of equal ε. Directions are regenerated from seeds with a private generator;
the global RNG is never touched.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import torch

from zocli.method.plan import Unit


@dataclass(frozen=True)
class Block:
    """ZO parameters perturbed together by one finite difference.

    A block's direction z is one flat draw over its parameters in order (`direction`). With `flat` set
    (see `flatten_`), the parameters are views into that one buffer, so a perturbation, a restore and an
    update are one kernel per run of equal ε instead of one per tensor; without it, the same numbers are
    applied tensor by tensor, bit for bit the same result on CPU.
    """

    name: str  # "vision", "language", "joint" or "vision.3"
    units: tuple[Unit, ...]
    params: tuple[torch.Tensor, ...]
    eps: tuple[float, ...]  # per parameter: a joint block mixes the branches' ε
    flat: torch.Tensor | None = None  # (N,): the parameters' storage, when they are views into one buffer
    runs: tuple[tuple[int, int, float], ...] = field(init=False)  # (start, stop, ε) of equal-ε stretches
    starts: tuple[int, ...] = field(init=False)  # each parameter's offset in the (N,) layout

    def __post_init__(self) -> None:
        starts = tuple(itertools.accumulate((p.numel() for p in self.params), initial=0))
        runs = []
        for start, stop, eps in zip(starts, starts[1:], self.eps):
            if runs and runs[-1][2] == eps:
                runs[-1] = (runs[-1][0], stop, eps)
            elif stop > start:
                runs.append((start, stop, eps))
        object.__setattr__(self, "runs", tuple(runs))
        object.__setattr__(self, "starts", starts)

    @property
    def size(self) -> int:
        return self.starts[-1]

    def is_flat(self) -> bool:
        """Whether the parameters still live in `flat` (moving the model to a device rebinds them)."""
        base, width = (self.flat.data_ptr(), self.flat.element_size()) if self.flat is not None else (0, 0)
        return self.flat is not None and all(p.data_ptr() == base + i * width for p, i in zip(self.params, self.starts))

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Views of a (N,) tensor shaped like the parameters, in order."""
        pieces = flat.split([p.numel() for p in self.params])
        return [piece.view(p.shape) for piece, p in zip(pieces, self.params)]


def flatten_(block: Block) -> Block:
    """Move the block's parameters into one contiguous buffer and rebind each to a view of it (the
    Parameter objects, and so the optimizer, state_dict and module references, stay the same)."""
    if not block.params or len({(p.device, p.dtype) for p in block.params}) > 1:
        return block  # nothing to fuse, or mixed devices/dtypes: the per-tensor path
    first = block.params[0]
    flat = torch.empty(block.size, device=first.device, dtype=first.dtype)  # (N,)
    for param, view in zip(block.params, block.split(flat)):
        view.copy_(param.detach())
        param.data = view
    return replace(block, flat=flat)


def direction(block: Block, seed: int) -> torch.Tensor:
    """The block's direction z (N,): one draw from a private generator seeded with `seed`, so the same
    seed always replays the same z and the global RNG is never touched."""
    first = block.params[0]
    if first.is_meta:  # no generator exists for meta; an empty tensor allocates the same
        return torch.empty(block.size, device=first.device, dtype=first.dtype)
    gen = torch.Generator(device=first.device).manual_seed(seed)
    return torch.randn(block.size, generator=gen, device=first.device, dtype=first.dtype)


def move_(block: Block, z: torch.Tensor, scale: float) -> None:
    """θ += scale · ε · z: one kernel per equal-ε run of a flat block, else one per tensor."""
    if block.is_flat():
        for start, stop, eps in block.runs:
            block.flat[start:stop].add_(z[start:stop], alpha=scale * eps)
        return
    for param, eps, piece in zip(block.params, block.eps, block.split(z)):
        param.add_(piece.to(param.dtype), alpha=scale * eps)

"""A small smooth toy for the ZO tests: a tanh MLP 20→8→5 (d = 213 parameters) with a fixed batch and
cross-entropy, and `zo.Objective` over it. Its loss closures run under no_grad, like every ZO forward; it
is small enough that the tests compare against its exact gradient (autograd) and the estimator's theory."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zocli.method.blocks import Block, direction
from zocli.method.estimate import ZOSettings, estimate_flat


class Toy:
    """tanh MLP 20→8→5 on 256 fixed samples. Layer 1 (W1, b1) and layer 2 (W2, b2) are the units
    ("vision", 1) and ("vision", 2); each can be FO (requires_grad) or ZO."""

    UNITS = (("vision", 1), ("vision", 2))

    def __init__(self, dtype=torch.float32, zo_units=UNITS, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(256, 20, generator=g, dtype=dtype)
        self.y = torch.randint(0, 5, (256,), generator=g)
        self.params = {
            ("vision", 1): [
                torch.randn(8, 20, generator=g, dtype=dtype) * 0.5,
                torch.randn(8, generator=g, dtype=dtype) * 0.1,
            ],
            ("vision", 2): [
                torch.randn(5, 8, generator=g, dtype=dtype),
                torch.randn(5, generator=g, dtype=dtype) * 0.1,
            ],
        }
        self.zo_units = tuple(zo_units)
        for unit, ps in self.params.items():
            for p in ps:
                p.requires_grad_(unit not in self.zo_units)

    def all_params(self) -> list[torch.Tensor]:
        return [p for unit in self.UNITS for p in self.params[unit]]

    def fo_params(self) -> list[torch.Tensor]:
        return [p for unit in self.UNITS if unit not in self.zo_units for p in self.params[unit]]

    def zo_params(self) -> list[torch.Tensor]:
        return [p for unit in self.UNITS if unit in self.zo_units for p in self.params[unit]]

    def forward(self, ps=None) -> torch.Tensor:
        w1, b1, w2, b2 = self.all_params() if ps is None else ps
        return F.cross_entropy(torch.tanh(self.x @ w1.T + b1) @ w2.T + b2, self.y)

    def loss(self) -> float:
        with torch.no_grad():
            return float(self.forward())

    def gradient(self) -> torch.Tensor:
        """Autograd gradient of the loss w.r.t. every parameter, flattened in `all_params` order."""
        ps = [p.detach().clone().requires_grad_() for p in self.all_params()]
        return torch.cat([g.flatten() for g in torch.autograd.grad(self.forward(ps), ps)])

    def block(self, name="vision", eps=1e-3, units=None) -> Block:
        units = self.zo_units if units is None else units
        params = tuple(p for u in units for p in self.params[u])
        return Block(name, tuple(units), params, (eps,) * len(params))


class ToyObjective:
    """`zo.Objective` over a Toy: FO backward into the FO params, no-grad closures for ZO."""

    def __init__(self, toy: Toy):
        self.toy = toy
        self.fo_calls = self.loss_fn_calls = self.resets = 0
        self.fo_grads_seen: list[bool] = []  # per FO param: had .grad after fo_backward
        self.zo_grads_seen: list[bool] = []

    def fo_backward(self):
        if not self.toy.fo_params():
            return None
        self.fo_calls += 1
        loss = self.toy.forward()
        loss.backward()
        self.fo_grads_seen = [p.grad is not None for p in self.toy.fo_params()]
        self.zo_grads_seen = [p.grad is not None for p in self.toy.zo_params()]
        return float(loss.detach())

    def loss_fn(self, units):
        self.loss_fn_calls += 1
        return self.toy.loss

    def reset(self, units=None):
        self.resets += units is None  # the FO step's reset; a block's own (after its moves) is not counted

    def gradient(self, params):
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(True)
        grads = torch.autograd.grad(self.toy.forward(), list(params))
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        return [g.detach() for g in grads]


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def directions(block: Block, seed: int) -> list[torch.Tensor]:
    return block.split(direction(block, seed))


def estimate_of(block: Block, loss, seed: int, settings: ZOSettings) -> tuple[list[torch.Tensor], float]:
    """ĝ per parameter of `block`, and the loss at θ."""
    grad, value = estimate_flat(block, loss, seed, settings)
    return block.split(grad), value


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))

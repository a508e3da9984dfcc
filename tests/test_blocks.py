"""zocli.method.blocks: seeded directions replay bit for bit, moves restore θ to round-off, and a flat block
(one buffer, one kernel per move) gives the per-tensor path's θ bit for bit."""

from __future__ import annotations

import pytest
import torch
from zo_toy import Toy, ToyObjective, directions, flat

from zocli.method.blocks import Block, direction, flatten_, move_
from zocli.method.estimate import ZOSettings
from zocli.method.zo import ZOAdam, hybrid_step
from zocli.rng import derive_seed


def test_seed_replay_restores_params():
    toy = Toy(torch.float32)
    block = toy.block(eps=1e-3)
    theta = [p.clone() for p in block.params]
    move_(block, direction(block, 5), +1.0)
    assert not any(torch.equal(p, t) for p, t in zip(block.params, theta))  # it did move
    move_(block, direction(block, 5), -2.0)
    move_(block, direction(block, 5), +1.0)

    def worst():  # elementwise error relative to max(1, |θ|)
        return max(float(((p - t).abs() / t.abs().clamp(min=1)).max()) for p, t in zip(block.params, theta))

    assert worst() <= 1e-6
    for cycle in range(100):
        for scale in (1.0, -2.0, 1.0):
            move_(block, direction(block, derive_seed("cycle", cycle)), scale)
    # roundoff random-walks: ~√(300 ops)·ulp/2 ≈ 1e-6 relative after 100 cycles
    assert worst() <= 5e-6, worst()


def test_directions_replay_bit_identical():
    toy = Toy(torch.float32)
    block = toy.block()
    a, b = directions(block, 99), directions(block, 99)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert [x.shape for x in a] == [p.shape for p in block.params]
    assert [x.dtype for x in a] == [p.dtype for p in block.params]
    c = directions(block, 100)
    assert not any(torch.equal(x, y) for x, y in zip(a, c))
    # move_ adds exactly scale·ε·z
    theta = [p.clone() for p in block.params]
    move_(block, direction(block, 99), 1.0)
    for p, t, z in zip(block.params, theta, a):
        assert torch.equal(p, t.add(z, alpha=1e-3))


FLAT_SETTINGS = [
    ZOSettings(rule="sgd"),
    ZOSettings(rule="adam", queries=2),
    ZOSettings(two_sided=False, sign=True),
    ZOSettings(rule="random-search"),
    ZOSettings(rule="noise"),
]


@pytest.mark.parametrize("settings", FLAT_SETTINGS, ids=lambda s: f"{s.rule}-q{s.queries}-sign{int(s.sign)}")
def test_flat_block_is_bit_identical_to_the_per_tensor_path(settings):
    """One buffer, one kernel per move: the same θ, bit for bit, and the same stats as tensor by tensor,
    with a joint block mixing two ε (two runs) and ZO-Adam moments saved per parameter as before."""
    runs = []
    for fuse in (False, True):
        toy = Toy(torch.float32)
        block = Block("joint", Toy.UNITS, tuple(toy.all_params()), (1e-3, 1e-3, 5e-4, 5e-4))
        if fuse:
            before = list(block.params)
            block = flatten_(block)
            assert block.is_flat() and all(a is b for a, b in zip(block.params, before)) and len(block.runs) == 2
        adam = ZOAdam.for_blocks([block]) if settings.rule == "adam" else None
        stats = [
            hybrid_step(ToyObjective(toy), [block], None, 0.05, settings, derive_seed("flat", step), adam)
            for step in range(4)
        ]
        runs.append((toy, stats, adam))
    (a, sa, adam_a), (b, sb, adam_b) = runs
    assert all(torch.equal(x, y) for x, y in zip(a.all_params(), b.all_params())) and sa == sb
    if adam_a is not None:
        state = adam_b.state_dict()
        assert [state[f"m.{i}"].shape for i in range(4)] == [p.shape for p in a.all_params()]
        assert all(torch.equal(state[k], v) for k, v in adam_a.state_dict().items())


def test_flat_block_falls_back_when_its_parameters_are_rebound():
    toy = Toy(torch.float32)
    block = flatten_(toy.block())
    toy.params[("vision", 1)][0].data = toy.params[("vision", 1)][0].detach().clone()  # as model.to(device) does
    assert not block.is_flat()
    theta = [p.clone() for p in block.params]
    move_(block, direction(block, 3), 1.0)
    assert all(not torch.equal(p, t) for p, t in zip(block.params, theta))  # every tensor moved, not the stale buffer


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flat_block_on_cuda_matches_the_per_tensor_path():
    results = []
    for fuse in (False, True):
        toy = Toy(torch.float32)
        for ps in toy.params.values():
            for p in ps:
                p.data = p.data.cuda()
        toy.x, toy.y = toy.x.cuda(), toy.y.cuda()
        block = flatten_(toy.block()) if fuse else toy.block()
        assert block.is_flat() == fuse
        adam = ZOAdam.for_blocks([block])
        for step in range(3):
            hybrid_step(
                ToyObjective(toy), [block], None, 0.05, ZOSettings(rule="adam"), derive_seed("cuda", step), adam
            )
        results.append(flat(toy.zo_params()).cpu())
    assert torch.allclose(results[0], results[1], rtol=0, atol=1e-6)

"""zocli.method.estimate: the finite-difference estimate on the toy (tests/zo_toy.py): unbiased, sharper
with more queries, the directional derivative autograd gives, θ restored, one direction per block and query."""

from __future__ import annotations

import itertools
import math

import torch
from zo_toy import Toy, ToyObjective, cosine, directions, estimate_of, flat

from zocli.method import estimate
from zocli.method.blocks import direction, move_
from zocli.method.estimate import ZOSettings
from zocli.method.zo import hybrid_step
from zocli.rng import derive_seed

N_UNBIASED = 8000  # ≈3 s; MC floor √((d+2)/N) = 0.16


COSINE_TRIALS = 60


def test_estimator_is_unbiased():
    toy = Toy(torch.float64)
    block, g = toy.block(eps=1e-3), toy.gradient()
    d = g.numel()
    assert 190 <= d <= 230
    # estimate with q = N is exactly the mean of N single-direction estimates (seeded per query).
    grads, _ = estimate_of(block, toy.loss, seed=123, settings=ZOSettings(two_sided=True, queries=N_UNBIASED))
    mean = flat(grads)
    rel, floor = float((mean - g).norm() / g.norm()), math.sqrt((d + 2) / N_UNBIASED)
    print(f"unbiasedness: d={d} N={N_UNBIASED} rel_err={rel:.4f} floor={floor:.4f} cos={cosine(mean, g):.4f}")
    assert rel < 2 * floor
    assert cosine(mean, g) > 0.97


def test_cosine_grows_with_queries():
    toy = Toy(torch.float64)
    block, g = toy.block(eps=1e-3), toy.gradient()
    d = g.numel()
    means = {}
    for q in (1, 4, 16, 64):
        cosines = []
        for trial in range(COSINE_TRIALS):
            grads, _ = estimate_of(
                block, toy.loss, seed=derive_seed("trial", q, trial), settings=ZOSettings(two_sided=True, queries=q)
            )
            cosines.append(cosine(flat(grads), g))
        if q == 1:
            # two-sided, ε → 0: ĝ·g = (g·z)² ≥ 0 for every single direction
            assert min(cosines) >= 0
        means[q] = sum(cosines) / len(cosines)
    theory = {q: math.sqrt(q / (d + q + 1)) for q in means}
    print("cosine vs q:", {q: (round(means[q], 4), round(theory[q], 4)) for q in means})
    qs = sorted(means)
    assert all(means[a] < means[b] for a, b in itertools.pairwise(qs))
    for q in (4, 16, 64):
        assert abs(means[q] / theory[q] - 1) < 0.25, (q, means[q], theory[q])
    assert abs(means[1] / math.sqrt(2 / (math.pi * d)) - 1) < 0.25  # E|cos| for q = 1


def test_directional_derivative_matches_autograd():
    toy = Toy(torch.float32)
    block, g = toy.block(eps=1e-3), toy.gradient()
    theta = [p.clone() for p in block.params]
    checked, worst = 0, {"two": 0.0, "one": 0.0}
    for seed in range(40):
        s = derive_seed(seed, block.name, 0)  # the direction the estimate uses for query 0
        z = directions(block, s)
        gz = float(g.double() @ flat(z).double())
        if abs(gz) < 0.5 * float(g.norm()):  # near-orthogonal directions make a relative error meaningless
            continue
        base = toy.loss()
        move_(block, direction(block, s), +1.0)
        plus = toy.loss()
        move_(block, direction(block, s), -2.0)
        minus = toy.loss()
        for p, t in zip(block.params, theta):
            p.copy_(t)
        two, one = (plus - minus) / 2 / 1e-3, (plus - base) / 1e-3
        worst["two"] = max(worst["two"], abs(two - gz) / abs(gz))
        worst["one"] = max(worst["one"], abs(one - gz) / abs(gz))
        # the estimate with q = 1 is exactly that finite difference times z
        for two_sided, d in ((True, (plus - minus) / 2.0), (False, plus - base)):
            grads, _ = estimate_of(block, toy.loss, seed=seed, settings=ZOSettings(two_sided=two_sided))
            for p, t in zip(block.params, theta):
                p.copy_(t)
            for got, zi in zip(grads, z):
                assert torch.equal(got, torch.zeros_like(zi).add_(zi, alpha=d / 1e-3))
        checked += 1
        if checked == 5:
            break
    print(f"directional derivative (fp32, ε=1e-3): worst two-sided {worst['two']:.2e}, one-sided {worst['one']:.2e}")
    assert checked == 5
    assert worst["two"] < 0.01
    assert worst["one"] < 0.02


def test_estimate_returns_loss_at_theta_and_restores_params():
    toy = Toy(torch.float32)
    block = toy.block()
    before = [p.clone() for p in block.params]
    base = toy.loss()
    _, one = estimate_of(block, toy.loss, 7, ZOSettings(two_sided=False, queries=3))
    assert one == base  # measured at θ
    _, two = estimate_of(block, toy.loss, 7, ZOSettings(two_sided=True, queries=3))
    assert abs(two - base) < 1e-4  # mean of the ±εz losses: L(θ) + O(ε²)
    for p, b in zip(block.params, before):
        assert torch.allclose(p, b, rtol=0, atol=1e-6)


def test_blocks_and_queries_get_distinct_directions(monkeypatch):
    # Two same-shaped blocks in one step: each (block, query) must draw its own z (derive_seed).
    toy = Toy(torch.float32)
    twin = Toy(torch.float32)  # identical values and shapes
    blocks = [toy.block("vision"), twin.block("language")]
    seen: list[tuple[str, int]] = []
    real = estimate.direction

    def spy(block, seed):
        seen.append((block.name, seed))
        return real(block, seed)

    monkeypatch.setattr(estimate, "direction", spy)

    class Both(ToyObjective):
        def loss_fn(self, units):
            return lambda: toy.loss() + twin.loss()

    hybrid_step(Both(toy), blocks, None, 1e-2, ZOSettings(queries=2, conservative=False), seed=3)
    seeds = {}
    for name, seed in seen:
        seeds.setdefault(name, []).append(seed)
    assert set(seeds) == {"vision", "language"}
    per_block = {name: sorted(set(s)) for name, s in seeds.items()}
    assert all(len(s) == 2 for s in per_block.values())  # one seed per query, drawn once for ±
    assert len(set(per_block["vision"]) | set(per_block["language"])) == 4
    assert set(per_block["vision"]) == {derive_seed(3, "vision", q) for q in range(2)}
    za = directions(blocks[0], derive_seed(3, "vision", 0))
    zb = directions(blocks[1], derive_seed(3, "language", 0))
    assert not any(torch.equal(x, y) for x, y in zip(za, zb))
    # and so the twins, starting equal, end different
    assert not torch.equal(flat(toy.zo_params()), flat(twin.zo_params()))

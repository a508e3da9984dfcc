"""zocli.method.zo: the hybrid FO/ZO step and the ZO rules, on the toy of tests/zo_toy.py."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from zo_toy import Toy, ToyObjective, directions, estimate_of, flat

from zocli.method.blocks import direction, move_
from zocli.method.estimate import ZOSettings
from zocli.method.zo import ZOAdam, hybrid_step
from zocli.rng import derive_seed

# ---------------------------------------------------------------------------------------------- the step

SETTINGS = [
    ZOSettings(),
    ZOSettings(two_sided=False, queries=2),
    ZOSettings(sign=True, conservative=False),
    ZOSettings(queries=3, sign=True, conservative=True),
]


def _adam(toy: Toy):
    return torch.optim.Adam(toy.fo_params(), lr=1e-2, betas=(0.9, 0.999)) if toy.fo_params() else None


@pytest.mark.parametrize(
    "settings", SETTINGS, ids=lambda s: f"2s{int(s.two_sided)}-q{s.queries}-sign{int(s.sign)}-cons{int(s.conservative)}"
)
@pytest.mark.parametrize("zo_units", [Toy.UNITS, (("vision", 2),)], ids=["dual", "hybrid"])
def test_step_leaves_global_rng_and_is_reproducible(settings, zo_units):
    runs = []
    for seed_base in (0, 0, 1):
        toy = Toy(torch.float32, zo_units)
        opt = _adam(toy)
        state = torch.get_rng_state()
        stats = [
            hybrid_step(ToyObjective(toy), [toy.block()], opt, 5e-2, settings, seed=derive_seed(seed_base, step))
            for step in range(3)
        ]
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG was neither drawn from nor reseeded
        runs.append((toy, stats))
    (a, sa), (b, sb), (c, sc) = runs
    assert all(torch.equal(x, y) for x, y in zip(a.all_params(), b.all_params()))  # bit-identical
    assert sa == sb
    if any(s.moved for s in sa + sc):  # a different seed takes a different step
        assert not torch.equal(flat(a.zo_params()), flat(c.zo_params()))


def _after_estimate(toy: Toy, seed: int, settings: ZOSettings):
    """(ĝ, θ') from a copy: θ' is θ after the estimate's ±εz replay, where the ZO update starts."""
    ref = copy.deepcopy(toy)
    grads, _ = estimate_of(ref.block(), ref.loss, seed, settings)
    return grads, [p.clone() for p in ref.zo_params()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mozo_sign_q1_moves_every_coordinate_by_lr(dtype):
    lr, seed = 1e-2, 11
    settings = ZOSettings(sign=True, conservative=False)
    toy = Toy(dtype)
    block = toy.block()
    theta = [p.clone() for p in block.params]
    probe = copy.deepcopy(toy)  # d measured independently of the estimate
    s = derive_seed(seed, block.name, 0)
    z = direction(probe.block(), s)
    move_(probe.block(), z, +1.0)
    plus = probe.loss()
    move_(probe.block(), z, -2.0)
    d = plus - probe.loss()
    assert d != 0
    _, start = _after_estimate(toy, seed, settings)
    stats = hybrid_step(ToyObjective(toy), [block], None, lr, settings, seed)
    n = sum(t.numel() for t in theta)
    for p, t, t1, z in zip(block.params, theta, start, directions(block, s)):
        u = math.copysign(1.0, d) * torch.sign(z)
        assert torch.equal(p, t1.add(u, alpha=-lr))  # −λη·sign(d)·sign(z), bit for bit
        tol = 1e-12 if dtype == torch.float64 else 1e-6
        assert torch.allclose((p - t).abs(), torch.full_like(t, lr), rtol=0, atol=tol)  # ±λη everywhere
    assert stats.moved
    assert stats.zo_update_norm == pytest.approx(lr * math.sqrt(n), rel=1e-12)
    assert stats.fo_grad_norm == 0.0


def test_aggressive_plain_update_is_minus_lr_ghat():
    lr, seed = 3e-2, 4
    toy = Toy(torch.float32)
    settings = ZOSettings(queries=2, conservative=False)
    ghat, start = _after_estimate(toy, seed, settings)
    stats = hybrid_step(ToyObjective(toy), [toy.block()], None, lr, settings, seed)
    for p, t, g in zip(toy.zo_params(), start, ghat):
        assert torch.equal(p, t.add(g, alpha=-lr))
    assert stats.zo_update_norm == pytest.approx(lr * float(flat(ghat).double().norm()), rel=1e-9)
    assert stats.moved
    assert stats.forwards == 2 * 2  # two-sided, q = 2, no FO pass, no candidates


def _candidates(theta, u, lr):
    return {k: [t.clone().add_(g, alpha=k * lr) for t, g in zip(theta, u)] for k in (0.0, -1.0, 1.0)}


def _loss_with(toy: Toy, values) -> float:
    saved = [p.clone() for p in toy.zo_params()]
    with torch.no_grad():
        for p, v in zip(toy.zo_params(), values):
            p.copy_(v)
        value = toy.loss()
        for p, v in zip(toy.zo_params(), saved):
            p.copy_(v)
    return value


@pytest.mark.parametrize("zo_units", [Toy.UNITS, (("vision", 2),)], ids=["dual", "with-adam-fo"])
@pytest.mark.parametrize("sign", [False, True], ids=["plain", "sign"])
def test_conservative_keeps_the_best_candidate(zo_units, sign):
    settings = ZOSettings(sign=sign, conservative=True)
    lr = 0.4 if not sign else 0.05  # large enough that some steps are rejected
    toy = Toy(torch.float32, zo_units)
    opt = _adam(toy)
    chosen = []
    for step in range(12):
        seed = derive_seed("cons", step)
        u, theta = _after_estimate(toy, seed, settings)  # the estimate runs at θ before the FO step
        if sign:
            u = [g.sign() for g in u]
        obj = ToyObjective(toy)
        stats = hybrid_step(obj, [toy.block()], opt, lr, settings, seed)
        # the FO step happened; the candidates are judged at the post-FO point
        candidates = _candidates(theta, u, lr)
        losses = {k: _loss_with(toy, v) for k, v in candidates.items()}
        kept = [k for k, v in candidates.items() if all(torch.equal(p, c) for p, c in zip(toy.zo_params(), v))]
        assert kept, "the ZO params are not exactly one of {θ, θ−ηu, θ+ηu}"
        k = kept[0]
        best = min(losses.values())
        assert losses[k] == best
        assert toy.loss() <= losses[0.0]  # the kept point is no worse than θ after the FO step
        if losses[0.0] == best:
            assert k == 0.0  # ties keep θ
        assert stats.moved == (k != 0.0)
        expected_norm = lr * float(flat(u).double().norm()) if k != 0.0 else 0.0
        assert stats.zo_update_norm == pytest.approx(expected_norm, rel=1e-9, abs=0)
        has_fo = opt is not None
        estimate_forwards = 0 if settings.irrelevant_estimate(1) else 2  # sign, q=1, one block: skipped
        assert stats.forwards == has_fo + estimate_forwards + 3
        assert obj.fo_calls == has_fo and obj.resets == has_fo
        chosen.append(k)
        if opt is not None:
            assert all(int(s["step"]) == step + 1 for s in opt.state.values())  # one optimizer step per step
    assert 0.0 in chosen and {-1.0, 1.0} & set(chosen), chosen  # both outcomes were exercised


def test_conservative_flat_loss_keeps_theta():
    toy = Toy(torch.float32)

    class Flat(ToyObjective):
        def loss_fn(self, units):
            self.loss_fn_calls += 1
            return lambda: 1.0

    theta = [p.clone() for p in toy.zo_params()]
    stats = hybrid_step(Flat(toy), [toy.block()], None, 0.1, ZOSettings(), seed=1)
    assert all(torch.allclose(p, t, rtol=0, atol=1e-6) for p, t in zip(toy.zo_params(), theta))
    assert not stats.moved and stats.zo_update_norm == 0.0


def test_conservative_three_way_tie_keeps_theta_exactly():
    # Real loss for the estimate (so u ≠ 0), a flat loss for the candidates: a three-way tie.
    toy = Toy(torch.float32)

    class TieOnCandidates(ToyObjective):
        def loss_fn(self, units):
            self.loss_fn_calls += 1
            return toy.loss if self.loss_fn_calls == 1 else (lambda: 0.5)

    u, theta = _after_estimate(toy, 2, ZOSettings())
    assert float(flat(u).norm()) > 0
    obj = TieOnCandidates(toy)
    stats = hybrid_step(obj, [toy.block()], None, 0.1, ZOSettings(), seed=2)
    assert obj.loss_fn_calls == 3  # the estimate's, then L(θ)'s and the candidates'
    assert all(torch.equal(p, t) for p, t in zip(toy.zo_params(), theta))
    assert not stats.moved and stats.zo_update_norm == 0.0


def test_adam_steps_once_per_hybrid_step_with_momentum():
    toy = Toy(torch.float32, (("vision", 2),))
    opt = torch.optim.Adam(toy.fo_params(), lr=1e-2, betas=(0.9, 0.999))
    for step in range(4):
        # reference: the same Adam state, one step on the gradient at the current point
        ref = copy.deepcopy(toy)
        ref_opt = torch.optim.Adam(ref.fo_params(), lr=1e-2, betas=(0.9, 0.999))
        ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        ref.forward().backward()
        ref_opt.step()
        obj = ToyObjective(toy)
        hybrid_step(obj, [toy.block()], opt, 0.05, ZOSettings(sign=True), seed=derive_seed("adam", step))
        assert all(torch.equal(p, r) for p, r in zip(toy.fo_params(), ref.fo_params()))
        assert all(int(s["step"]) == step + 1 for s in opt.state.values())
        # ZO params never enter the FO optimizer and never get .grad; FO params had grads
        assert obj.fo_grads_seen == [True, True] and obj.zo_grads_seen == [False, False]
        assert all(p.grad is None for p in toy.zo_params())
        assert all(p.grad is None for p in toy.fo_params())  # zero_grad(set_to_none) after the step
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not in_opt & {id(p) for p in toy.zo_params()}


def test_step_stats_loss_and_forward_count():
    toy = Toy(torch.float32, (("vision", 2),))
    fo_loss = toy.loss()
    stats = hybrid_step(ToyObjective(toy), [toy.block()], _adam(toy), 1e-2, ZOSettings(queries=3), seed=0)
    assert stats.loss == pytest.approx(fo_loss, abs=1e-6)  # the FO training loss at θ
    assert stats.fo_grad_norm > 0
    assert stats.forwards == 1 + 2 * 3 + 3

    dual = Toy(torch.float32)
    at_theta = dual.loss()
    stats = hybrid_step(
        ToyObjective(dual),
        [dual.block()],
        None,
        1e-2,
        ZOSettings(two_sided=False, queries=2, conservative=False),
        seed=0,
    )
    assert stats.loss == at_theta  # one-sided: measured at θ
    assert stats.forwards == 1 + 2 and stats.fo_grad_norm == 0.0


# ---------------------------------------------------------------------------------------------- rules


def test_zo_adam_direction_is_torch_adams_step():
    toy = Toy(torch.float64)
    params = [p.detach().clone() for p in toy.zo_params()]
    mirror = [p.clone().requires_grad_() for p in params]
    reference = torch.optim.Adam(mirror, lr=1.0, betas=ZOAdam.BETAS, eps=ZOAdam.EPS)
    adam = ZOAdam(params)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        before = [m.detach().clone() for m in mirror]
        for m, grad in zip(mirror, grads):
            m.grad = grad.clone()
        reference.step()
        for u, m, b in zip(adam.direction(grads), mirror, before):
            assert torch.allclose(u, b - m.detach(), rtol=1e-10, atol=1e-12)  # lr 1: the step is −u
    restored = ZOAdam(params)
    restored.load_state_dict(adam.state_dict())
    assert restored.t == 5 and all(torch.equal(a, b) for a, b in zip(restored.m + restored.v, adam.m + adam.v))


def test_skipped_irrelevant_estimate_is_bit_identical_to_measuring_it():
    """sign + conservative + q=1 + one block: the estimate cannot change the step, so it is skipped —
    the parameters after every step equal, bit for bit, those of a run that measures it."""
    skip, measure = Toy(torch.float32), Toy(torch.float32)
    fast = ZOSettings(sign=True, conservative=True)
    slow = ZOSettings(sign=True, conservative=True, skip_irrelevant=False)
    assert fast.irrelevant_estimate(1) and not fast.estimates(1) and slow.estimates(1)
    for step in range(15):
        seed = derive_seed("skip", step)
        a = hybrid_step(ToyObjective(skip), [skip.block()], None, 0.05, fast, seed)
        b = hybrid_step(ToyObjective(measure), [measure.block()], None, 0.05, slow, seed)
        assert all(torch.equal(p, q) for p, q in zip(skip.zo_params(), measure.zo_params()))
        assert (a.forwards, b.forwards) == (3, 5) and a.moved == b.moved
    assert not ZOSettings(sign=True, conservative=True).irrelevant_estimate(2)  # two blocks: one bit each


def test_noise_moves_every_coordinate_by_lr_and_queries_nothing():
    toy, lr = Toy(torch.float64), 1e-2
    theta = [p.clone() for p in toy.zo_params()]
    stats = hybrid_step(ToyObjective(toy), [toy.block()], None, lr, ZOSettings(rule="noise"), 3)
    for p, t in zip(toy.zo_params(), theta):
        assert torch.allclose((p - t).abs(), torch.full_like(t, lr), rtol=0, atol=1e-15)
    assert stats.moved and stats.forwards == 1  # only the logged loss: no estimate, no candidates


def test_random_search_keeps_the_best_of_theta_and_the_sign_candidates():
    toy, lr = Toy(torch.float64), 0.05
    for step in range(8):
        theta = [p.clone() for p in toy.zo_params()]
        stats = hybrid_step(ToyObjective(toy), [toy.block()], None, lr, ZOSettings(rule="random-search"), step)
        z = [d.sign() for d in directions(toy.block(), derive_seed(step, "vision", 0))]
        candidates = _candidates(theta, z, lr)
        losses = {k: _loss_with(toy, v) for k, v in candidates.items()}
        kept = [k for k, v in candidates.items() if all(torch.equal(p, c) for p, c in zip(toy.zo_params(), v))]
        assert kept and losses[kept[0]] == min(losses.values())
        assert stats.forwards == 3 and stats.zo_loss_delta == pytest.approx(min(losses.values()) - losses[0.0])


def test_probe_cosine_is_measured_against_the_exact_gradient():
    toy = Toy(torch.float64)
    stats = hybrid_step(
        ToyObjective(toy), [toy.block()], None, 1e-3, ZOSettings(conservative=False, queries=64), 0, probe=True
    )
    assert stats.zo_cosine is not None and stats.zo_cosine > 0.3  # 64 directions on 213 coordinates
    assert stats.zo_loss_delta < 0
    plain = hybrid_step(ToyObjective(toy), [toy.block()], None, 1e-3, ZOSettings(conservative=False), 1)
    assert plain.zo_cosine is None and plain.zo_loss_delta is None  # aggressive, unprobed: not measured

"""zocli.method.zo: the finite-difference estimator and the hybrid FO/ZO step, on a small smooth toy.

The toy is a tanh MLP 20→8→5 (d = 213 parameters) with a fixed batch and cross-entropy; its loss
closures run under no_grad, like every ZO forward. It is small enough that the checks compare against its
exact gradient (autograd) and the estimator's theory, each tolerance set where it is used.
"""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from zocli.method import zo
from zocli.method.zo import Block, ZOAdam, ZOSettings, direction, estimate_flat, hybrid_step, move_
from zocli.rng import derive_seed

# ---------------------------------------------------------------------------------------------- toy


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
    return block.split(zo.direction(block, seed))


def _estimate(block: Block, loss, seed: int, settings: ZOSettings) -> tuple[list[torch.Tensor], float]:
    """ĝ per parameter of `block`, and the loss at θ."""
    grad, value = estimate_flat(block, loss, seed, settings)
    return block.split(grad), value


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


# ---------------------------------------------------------------------------------------------- statistics

N_UNBIASED = 8000  # ≈3 s; MC floor √((d+2)/N) = 0.16
COSINE_TRIALS = 60


def test_estimator_is_unbiased():
    toy = Toy(torch.float64)
    block, g = toy.block(eps=1e-3), toy.gradient()
    d = g.numel()
    assert 190 <= d <= 230
    # estimate with q = N is exactly the mean of N single-direction estimates (seeded per query).
    grads, _ = _estimate(block, toy.loss, seed=123, settings=ZOSettings(two_sided=True, queries=N_UNBIASED))
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
            grads, _ = _estimate(
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
            grads, _ = _estimate(block, toy.loss, seed=seed, settings=ZOSettings(two_sided=two_sided))
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
    _, one = _estimate(block, toy.loss, 7, ZOSettings(two_sided=False, queries=3))
    assert one == base  # measured at θ
    _, two = _estimate(block, toy.loss, 7, ZOSettings(two_sided=True, queries=3))
    assert abs(two - base) < 1e-4  # mean of the ±εz losses: L(θ) + O(ε²)
    for p, b in zip(block.params, before):
        assert torch.allclose(p, b, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- seeds


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


def test_blocks_and_queries_get_distinct_directions(monkeypatch):
    # Two same-shaped blocks in one step: each (block, query) must draw its own z (derive_seed).
    toy = Toy(torch.float32)
    twin = Toy(torch.float32)  # identical values and shapes
    blocks = [toy.block("vision"), twin.block("language")]
    seen: list[tuple[str, int]] = []
    real = zo.direction

    def spy(block, seed):
        seen.append((block.name, seed))
        return real(block, seed)

    monkeypatch.setattr(zo, "direction", spy)

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
    grads, _ = _estimate(ref.block(), ref.loss, seed, settings)
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


# ---------------------------------------------------------------------------------------------- flat blocks

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
            block = zo.flatten_(block)
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
    block = zo.flatten_(toy.block())
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
        block = zo.flatten_(toy.block()) if fuse else toy.block()
        assert block.is_flat() == fuse
        adam = ZOAdam.for_blocks([block])
        for step in range(3):
            hybrid_step(
                ToyObjective(toy), [block], None, 0.05, ZOSettings(rule="adam"), derive_seed("cuda", step), adam
            )
        results.append(flat(toy.zo_params()).cpu())
    assert torch.allclose(results[0], results[1], rtol=0, atol=1e-6)

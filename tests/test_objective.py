"""zocli.method.objective.ClipObjective on the tiny CLIP: caching, restarts and chunking give the plain loss;
FO grads land on FO units only; ZO forwards save nothing for backward; dual ZO never calls backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from zocli.method.objective import ClipObjective, deterministic
from zocli.method.step import Stepper
from zocli.method.zo import hybrid_step

TOL = 1e-6


@pytest.fixture
def model(tiny_model):
    """The tiny CLIP with non-trivial adapters: at init they are exact no-ops, which would hide
    any mistake about which layers a ZO forward re-runs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in tiny_model.adapter_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return tiny_model


@pytest.fixture
def batch(model):
    g = torch.Generator().manual_seed(2)
    images = torch.randn(8, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    tokens = model.tokenizer(["a bad photo of a zero.", "a bad photo of a one."])
    return images, labels, tokens


def reference_loss(model, images, labels, tokens) -> float:
    """A plain full forward of both towers in eval mode, no caching, no chunking."""
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = model.logits(model.encode("vision", images), model.encode("language", tokens))
        loss = F.cross_entropy(logits.float(), labels)
    model.train(was)
    return float(loss)


def objective(model, batch, zo_units=frozenset(), chunk=64) -> ClipObjective:
    return ClipObjective(model, *batch, frozenset(zo_units), chunk)


def all_units(model, branch=None):
    return [u for u, _ in model.unit_items() if branch is None or u[0] == branch]


UNIT_SETS = {
    "vision-branch": lambda m: all_units(m, "vision"),
    "language-branch": lambda m: all_units(m, "language"),
    "vision-from-3": lambda m: [("vision", 3), ("vision", 4)],
    "language-from-3": lambda m: [("language", 3), ("language", 4)],
    "vision-only-4": lambda m: [("vision", 4)],
    "both-from-3": lambda m: [("vision", 3), ("language", 4)],
    "joint": lambda m: all_units(m),
}


@pytest.mark.parametrize("which", list(UNIT_SETS))
def test_cached_loss_equals_plain_forward(model, batch, which):
    units = UNIT_SETS[which](model)
    model.train()  # loss_fn must switch to eval itself, and restore the mode
    loss = objective(model, batch).loss_fn(units)
    assert abs(loss() - reference_loss(model, *batch)) <= TOL
    assert model.training


@pytest.mark.parametrize("which", list(UNIT_SETS))
def test_restart_sees_in_place_perturbations(model, batch, which):
    """The closure is built once (caching what precedes the first perturbed layer), then the units
    are moved in place, as move_ does: it must compute the loss at the moved parameters."""
    units = UNIT_SETS[which](model)
    loss = objective(model, batch).loss_fn(units)
    before = loss()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for unit in units:
            for p in model.unit(unit).parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    after = loss()
    assert abs(after - before) > 1e-4  # the perturbation matters
    assert abs(after - reference_loss(model, *batch)) <= TOL


def test_restart_ignores_layers_before_the_first_perturbed_one(model, batch):
    # Documents the contract: a closure for units starting at layer 3 does not re-run layers 1-2.
    loss = objective(model, batch).loss_fn([("vision", 3)])
    before = loss()
    with torch.no_grad():
        for p in model.unit(("vision", 1)).parameters():
            p.add_(0.5)
    assert loss() == before


@pytest.mark.parametrize("which", ["vision-branch", "vision-from-3", "joint", "language-branch"])
def test_chunked_equals_unchunked(model, batch, which):
    units = UNIT_SETS[which](model)
    small, large = objective(model, batch, chunk=3).loss_fn(units)(), objective(model, batch, chunk=64).loss_fn(units)()
    assert abs(small - large) <= TOL
    assert abs(large - reference_loss(model, *batch)) <= TOL


def test_zo_loss_reuses_the_fo_pass_features_of_the_unperturbed_tower(model, batch):
    """DESIGN §6: a perturbation of one branch re-runs only that tower; the other tower's features come
    from step 1 (the FO pass, training mode), detached. Within a step every ZO loss sees the same
    fixed features, so the finite difference is exact for that loss — the one the FO units optimise."""
    cfg = tiny_config(vision="zo", language="fo")
    stepper = Stepper(model, cfg)
    obj = stepper.objective(*batch)
    model.train()
    torch.manual_seed(0)
    obj.fo_backward()
    text = obj.features["language"]
    assert not text.requires_grad
    zo = obj.loss_fn(list(stepper.units))
    with torch.no_grad(), deterministic(model):
        image = model.encode("vision", batch[0])
        expected = F.cross_entropy(model.logits(image, text), batch[1]).item()
    assert abs(zo() - expected) <= TOL
    obj.reset()  # after the FO step the cache is dropped: the deterministic loss again
    assert abs(obj.loss_fn(list(stepper.units))() - reference_loss(model, *batch)) <= TOL


def test_the_loss_at_theta_from_cached_features_is_the_full_forward_bit_for_bit(model, batch):
    """The conservative step measures L(θ) with `loss_fn(())` from the features the estimates cached: it
    must be exactly (==) what re-running both towers gives, micro-batch sums included (8 rows, chunks of 3)."""
    obj = objective(model, batch, chunk=3)
    obj.loss_fn(all_units(model, "language"))()  # caches the image features, as the language block does
    assert set(obj.features) == {"vision"}
    assert obj.loss_fn(())() == objective(model, batch, chunk=3).loss_fn(all_units(model))()


def test_reset_of_units_drops_only_their_towers_features(model, batch):
    obj = objective(model, batch)
    obj.loss_fn(())()
    obj.reset([("language", 2)])
    assert set(obj.features) == {"vision"}
    with torch.no_grad():
        for p in model.unit(("language", 2)).parameters():
            p.add_(0.3)
    assert abs(obj.loss_fn(())() - reference_loss(model, *batch)) <= TOL


def test_a_steps_loss_at_theta_is_the_full_forward_where_the_moves_left_theta(model, batch):
    """After dual ZO's estimates θ is rounded by the ±εz moves; the step's L(θ) reuses cached features
    only for towers that did not move since (the text tower moved after its features were cached)."""
    stepper, seen = Stepper(model, tiny_config(vision="zo", language="zo", queries=2)), []

    class Spy(ClipObjective):
        def loss_fn(self, units):
            inner = super().loss_fn(units)
            if units:
                return inner

            def at_theta():
                seen.append((inner(), objective(model, batch, chunk=3).loss_fn(all_units(model))()))
                return seen[-1][0]

            return at_theta

    spy = Spy(model, *batch, stepper.not_fo, chunk=3)
    hybrid_step(spy, stepper.blocks, None, 0.1, stepper.settings, seed=1, adam=stepper.adam)
    assert seen and all(cached == fresh for cached, fresh in seen)


# ---------------------------------------------------------------------------------------------- partition


@pytest.mark.parametrize(("vision", "language"), [("zo", "fo"), ("fo", "zo"), ("fo", "fo")])
def test_fo_backward_grads_only_fo_units(model, batch, vision, language):
    cfg = tiny_config(vision=vision, language=language)
    stepper = Stepper(model, cfg)
    obj = stepper.objective(*batch)
    loss = obj.fo_backward()
    assert isinstance(loss, float)
    for unit, module in model.unit_items():
        for p in module.parameters():
            if unit in stepper.units:
                assert p.grad is None and not p.requires_grad, unit
            else:
                assert p.grad is not None, unit
    assert any(
        float(p.grad.abs().sum()) > 0 for _, m in model.unit_items() for p in m.parameters() if p.grad is not None
    )
    assert all(p.grad is None for p in model.clip.parameters())  # the backbone stays frozen
    assert not any(p.requires_grad for p in model.clip.parameters())


def test_dual_zo_objective_has_no_fo_pass(model, batch):
    stepper = Stepper(model, tiny_config(vision="zo", language="zo"))
    assert stepper.optimizer is None
    assert stepper.objective(*batch).fo_backward() is None
    assert all(p.grad is None for p in model.adapter_parameters())


def test_zo_params_are_fp32(model):
    stepper = Stepper(model, tiny_config(vision="zo", language="zo"))
    assert all(p.dtype == torch.float32 for b in stepper.blocks for p in b.params)


class SavedTensors:
    def __init__(self):
        self.packs = 0

    def __enter__(self):
        def pack(t):
            self.packs += 1
            return t

        self._hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


@pytest.mark.parametrize("which", ["vision-branch", "language-from-3", "joint"])
def test_zo_forwards_save_no_tensors(model, batch, which):
    stepper = Stepper(model, tiny_config(vision="fo", language="fo"))  # every unit trainable
    assert all(p.requires_grad for p in model.adapter_parameters())
    obj = stepper.objective(*batch)
    units = UNIT_SETS[which](model)
    with SavedTensors() as zo_saved:
        loss = obj.loss_fn(units)  # building the closure runs the cached prefix
        values = [loss() for _ in range(2)]
    assert zo_saved.packs == 0
    assert values[0] == values[1]  # deterministic: no dropout, no gating noise
    with SavedTensors() as fo_saved:  # the hook does see an FO pass
        obj.fo_backward()
    assert fo_saved.packs > 0


class BackwardSpy:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = torch.autograd.backward

        def spy(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "backward", spy)  # Tensor.backward goes through it


@pytest.mark.parametrize(
    ("vision", "language", "layers", "calls"),
    [
        ("zo", "zo", "all", 0),
        ("zo", "fo", "all", 1),
        ("fo", "zo", "all", 1),
        ("zo", "zo", "hop-even", 1),
        ("fo", "fo", "all", 1),
    ],
)
def test_backward_calls_per_step(model, batch, monkeypatch, vision, language, layers, calls):
    stepper = Stepper(model, tiny_config(vision=vision, language=language, layers=layers))
    spy = BackwardSpy(monkeypatch)
    with SavedTensors() as saved:
        stats = stepper.step(*batch, lr=1e-2, seed=0)
    assert spy.calls == calls
    if calls == 0:
        assert saved.packs == 0  # dual ZO: inference memory, nothing kept for a backward
        assert stats.fo_grad_norm == 0.0
    else:
        assert stats.fo_grad_norm > 0
    assert all(p.grad is None for p in model.adapter_parameters())  # FO grads cleared after the step


def test_step_moves_adapters_never_the_backbone(model, batch):
    stepper = Stepper(model, tiny_config(vision="zo", language="fo", layers="hop-odd", conservative=False, queries=1))
    before = {u: [p.clone() for p in m.parameters()] for u, m in model.unit_items()}
    backbone = [p.clone() for p in model.clip.parameters()]
    stats = stepper.step(*batch, lr=1e-2, seed=0)
    assert stats.moved
    for unit, module in model.unit_items():
        # ZO units (vision 1, 3) move by the ZO update, every other unit by AdamW
        assert any(not torch.equal(p, b) for p, b in zip(module.parameters(), before[unit])), unit
    assert all(torch.equal(p, b) for p, b in zip(model.clip.parameters(), backbone))
    assert stats.forwards == 1 + 2  # FO pass + one two-sided query of the vision block, no candidates

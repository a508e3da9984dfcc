"""zocli.method.attach: adapters at init are zero-shot CLIP, only adapters train, restartable towers, seeded init."""

import pytest
import torch
from conftest import tiny_config

from zocli.method.adapters import AdapterUnit, LoRAUnit, MoEAdapter
from zocli.method.attach import AdaptedCLIP, build_model
from zocli.method.backbone import build

PROMPTS = [f"a bad photo of a {name}." for name in ("zero", "one", "two", "three", "four")]


def _inputs(model: AdaptedCLIP, n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, model.image_size, model.image_size, generator=gen)
    return images, model.tokenizer(PROMPTS)


def _adapted_logits(model: AdaptedCLIP, images, tokens) -> torch.Tensor:
    return model.logits(model.encode("vision", images), model.encode("language", tokens))


def _clip_logits(clip, images, tokens) -> torch.Tensor:
    """Plain open_clip, through its own encode_* (not zocli's block loop)."""
    image = clip.encode_image(images, normalize=True)
    text = clip.encode_text(tokens, normalize=True)
    return clip.logit_scale.exp() * image @ text.T


def _set_random_(tensor: torch.Tensor, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)


@pytest.fixture(scope="module")
def models():
    return {adapter: build_model(tiny_config(adapter=adapter), "cpu") for adapter in ("moe", "lora")}


# ---------------------------------------------------------------------------------------------- zero-shot at init


@pytest.mark.parametrize("adapter", ["moe", "lora"])
@pytest.mark.parametrize("training", [False, True])
def test_init_logits_equal_plain_clip(models, adapter, training):
    # Train mode too: MoE gates are noisy then, but every expert outputs exactly 0 at init, and the
    # tiny CLIP has no dropout, so the logits must still be CLIP's.
    model = models[adapter].train(training)
    images, tokens = _inputs(model)
    with torch.no_grad():
        ours, theirs = _adapted_logits(model, images, tokens), _clip_logits(model.clip, images, tokens)
    model.eval()
    assert ours.shape == (4, len(PROMPTS))
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), (ours - theirs).abs().max()


@pytest.mark.parametrize(
    ("adapter", "branch"), [("moe", "vision"), ("moe", "language"), ("lora", "vision"), ("lora", "language")]
)
def test_a_nonzero_adapter_changes_the_logits(adapter, branch):
    model = build_model(tiny_config(adapter=adapter), "cpu").eval()
    images, tokens = _inputs(model)
    with torch.no_grad():
        before = _adapted_logits(model, images, tokens)
        unit = model.units[branch][0]
        if isinstance(unit, MoEAdapter):
            _set_random_(unit.experts[0].up.weight, seed=1)
        else:
            _set_random_(unit.fc.b, seed=1)
        after = _adapted_logits(model, images, tokens)
        clip = _clip_logits(model.clip, images, tokens)
    assert (after - before).abs().max() > 1e-3
    assert torch.allclose(before, clip, atol=1e-6)  # the frozen CLIP itself was not touched


# ---------------------------------------------------------------------------------------------- what trains


@pytest.mark.parametrize("adapter", ["moe", "lora"])
def test_only_adapter_parameters_are_trainable(models, adapter):
    model = models[adapter]
    adapters = model.adapter_parameters()
    assert len({id(p) for p in adapters}) == len(adapters)  # no duplicates
    # exactly the parameters of the adapter-unit modules, found structurally
    units = [m for m in model.modules() if isinstance(m, AdapterUnit)]
    assert len(units) == sum(model.depth().values())
    assert {id(p) for m in units for p in m.parameters()} == {id(p) for p in adapters}
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in adapters}
    assert not any(p.requires_grad for p in model.clip.parameters())
    clip_ids = {id(p) for p in model.clip.parameters()}
    assert clip_ids.isdisjoint({id(p) for p in adapters})
    assert len(clip_ids) + len(adapters) == len(list(model.parameters()))


def test_backward_reaches_only_adapters():
    model = build_model(tiny_config(), "cpu").train()
    images, tokens = _inputs(model)
    loss = torch.nn.functional.cross_entropy(_adapted_logits(model, images, tokens), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is None for p in model.clip.parameters())
    ups = [unit.experts[0].up.weight for _, unit in model.unit_items()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ups)


def test_unit_addresses_are_branch_and_one_based_layer(tiny_model):
    depth = tiny_model.depth()
    addresses = [address for address, _ in tiny_model.unit_items()]
    assert addresses == [("vision", k) for k in range(1, depth["vision"] + 1)] + [
        ("language", k) for k in range(1, depth["language"] + 1)
    ]
    for address, unit in tiny_model.unit_items():
        assert tiny_model.unit(address) is unit


# ---------------------------------------------------------------------------------------------- ViT-B/16 on meta


@pytest.fixture(scope="module")
def vit_b16_meta():
    return build("ViT-B-16", "none", "meta")


def test_vit_b16_moe_has_the_published_trainable_count(vit_b16_meta):
    model = AdaptedCLIP(vit_b16_meta, "moe")
    assert sum(p.numel() for p in model.adapter_parameters()) == 4_027_392
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4_027_392
    addresses = [address for address, _ in model.unit_items()]
    assert len(addresses) == 24
    assert addresses == [(b, k) for b in ("vision", "language") for k in range(1, 13)]
    assert all(p.is_meta for p in model.adapter_parameters())


def test_vit_b16_lora_count(vit_b16_meta):
    model = AdaptedCLIP(vit_b16_meta, "lora", lora_rank=8)
    assert all(isinstance(unit, LoRAUnit) for _, unit in model.unit_items())
    # rank·(d + 4d) for each of c_fc and c_proj: widths 768 (vision) and 512 (text), 12 blocks each
    expected = 12 * 2 * 8 * (768 + 3072) + 12 * 2 * 8 * (512 + 2048)
    assert sum(p.numel() for p in model.adapter_parameters()) == expected


# ---------------------------------------------------------------------------------------------- restart


@pytest.mark.parametrize("branch", ["vision", "language"])
def test_run_blocks_can_restart_at_any_layer(branch):
    model = build_model(tiny_config(), "cpu").eval()
    for seed, (_, unit) in enumerate(model.unit_items()):  # non-zero adapters, so they take part
        _set_random_(unit.experts[1].up.weight, seed)
        _set_random_(unit.router, seed + 100)
    images, tokens = _inputs(model)
    inputs = images if branch == "vision" else tokens
    depth = model.depth()[branch]
    with torch.no_grad():
        h0 = model.embed(branch, inputs)
        full = model.run_blocks(branch, h0)
        for k in range(1, depth):
            middle = model.run_blocks(branch, h0, 1, k)
            assert torch.equal(model.run_blocks(branch, middle, k + 1), full), k
            assert torch.equal(model.run_blocks(branch, middle, k + 1, depth), full), k
        assert torch.equal(model.head(branch, full, inputs), model.encode(branch, inputs))


# ---------------------------------------------------------------------------------------------- seeded init


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = build_model(tiny_config(seed=0), "cpu")
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model(tiny_config(seed=0), "cpu")
    c = build_model(tiny_config(seed=1), "cpu")
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # the adapters' random part (expert down weights) depends on the seed too
    assert not torch.equal(a.units["vision"][0].experts[0].down.weight, c.units["vision"][0].experts[0].down.weight)

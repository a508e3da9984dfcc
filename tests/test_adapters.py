"""zocli.method.adapters: the MoE adapter of DESIGN §3 against an independent reference, and LoRA."""

import math

import pytest
import torch

from zocli.method.adapters import Expert, LoRA, LoRAUnit, MoEAdapter


def _randomize_(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Every parameter (router, noise, expert weights) random and non-zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)


def _reference_moe(x: torch.Tensor, moe: MoEAdapter, top_k: int) -> torch.Tensor:
    """DESIGN §3 written out per sample, in float64, without calling any of the module's code:
    gate logits from token 0 (clean = x0·W_g), keep the top-k, softmax over the kept ones, the same
    gate vector for every token of the sample; expert = (ReLU(x·Wd^T + bd)·Wu^T + bu) · 0.1."""
    x = x.double()
    w_g = moe.router.detach().double()
    experts = [
        (
            e.down.weight.detach().double(),
            e.down.bias.detach().double(),
            e.up.weight.detach().double(),
            e.up.bias.detach().double(),
        )
        for e in moe.experts
    ]
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        logits = [float(x[b, 0] @ w_g[:, e]) for e in range(len(experts))]
        kept = sorted(range(len(experts)), key=lambda e: -logits[e])[:top_k]
        norm = sum(math.exp(logits[e] - max(logits)) for e in kept)
        for e in kept:
            gate = math.exp(logits[e] - max(logits)) / norm
            wd, bd, wu, bu = experts[e]
            hidden = torch.clamp(x[b] @ wd.T + bd, min=0.0)  # (N, 64)
            out[b] += gate * (hidden @ wu.T + bu) * 0.1
    return out


# ---------------------------------------------------------------------------------------------- MoE


@pytest.mark.parametrize("training", [False, True])
def test_moe_outputs_exactly_zero_at_init(training):
    torch.manual_seed(0)
    moe = MoEAdapter(48).train(training)
    x = torch.randn(3, 7, 48) * 5
    assert torch.equal(moe(x), torch.zeros_like(x))
    for expert in moe.experts:
        assert torch.equal(expert(x), torch.zeros_like(x))


def test_expert_init_follows_design():
    expert = Expert(256, 64, scale=0.1, dropout=0.1)
    bound = 1 / math.sqrt(256)  # Kaiming-uniform with a=√5 on fan_in 256
    assert expert.down.weight.abs().max() <= bound
    assert expert.down.weight.abs().max() > 0.9 * bound  # really uniform over the whole range, not zero
    assert torch.count_nonzero(expert.down.bias) == 0
    assert torch.count_nonzero(expert.up.weight) == 0
    assert torch.count_nonzero(expert.up.bias) == 0
    moe = MoEAdapter(256)
    assert torch.count_nonzero(moe.router) == 0 and torch.count_nonzero(moe.noise) == 0


@pytest.mark.parametrize(("n_experts", "top_k"), [(2, 2), (2, 1), (4, 2), (3, 1)])
def test_moe_matches_reference_in_eval_mode(n_experts, top_k):
    torch.manual_seed(1)
    moe = MoEAdapter(32, n_experts=n_experts, top_k=top_k, bottleneck=64).eval()
    _randomize_(moe, seed=n_experts * 10 + top_k)
    x = torch.randn(5, 6, 32)
    # float64 so the comparison measures the formula, not float32 rounding of two summation orders
    got = moe.double()(x.double())
    assert got.abs().max() > 1e-2  # a meaningful, non-zero output
    assert torch.allclose(got, _reference_moe(x, moe, top_k), atol=1e-6, rtol=0)
    # and in float32 the module agrees with the reference to float32 precision
    got32 = moe.float()(x)
    assert torch.allclose(got32.double(), _reference_moe(x, moe, top_k), atol=1e-5, rtol=1e-5)


def test_gate_is_per_sample_from_token_zero():
    moe = MoEAdapter(16, n_experts=2, top_k=1).eval()
    _randomize_(moe, seed=3)
    x = torch.randn(4, 5, 16)
    gates = moe.gates(x[:, 0])
    changed = x.clone()
    changed[:, 1:] = torch.randn(4, 4, 16)  # tokens other than 0 do not move the gates
    assert torch.equal(moe.gates(changed[:, 0]), gates)
    out, ref = moe(changed), _reference_moe(changed, moe, 1).float()
    assert torch.allclose(out, ref, atol=1e-5)


def test_eval_mode_is_deterministic_train_mode_is_noisy():
    torch.manual_seed(2)
    moe = MoEAdapter(16, n_experts=2, top_k=2)
    _randomize_(moe, seed=4)
    for expert in moe.experts:
        expert.dropout.p = 0.0  # isolate the gating noise from dropout
    x = torch.randn(8, 3, 16)
    moe.eval()
    assert torch.equal(moe(x), moe(x))
    assert torch.equal(moe.gates(x[:, 0]), moe.gates(x[:, 0]))
    clean = torch.softmax(x[:, 0] @ moe.router, dim=-1)  # top-2 of 2: softmax over both, no noise
    assert torch.allclose(moe.gates(x[:, 0]), clean, atol=1e-6)
    moe.train()
    assert not torch.equal(moe.gates(x[:, 0]), moe.gates(x[:, 0]))
    assert not torch.equal(moe(x), moe(x))


@pytest.mark.parametrize("noise_logits", [(1.5, -2.0), (-8.0, -8.0)])
def test_gating_noise_has_the_design_std(noise_logits):
    # noisy_e = clean_e + N(0,1)·(softplus(x0·W_n[:, e]) + 0.01); with W_g = 0 and two experts kept,
    # log(g_0 / g_1) = noisy_0 - noisy_1 ~ N(0, std_0² + std_1²). The second case checks the 0.01 floor
    # (softplus(-8) ≈ 3e-4, so the floor dominates the std).
    moe = MoEAdapter(2, n_experts=2, top_k=2).train()
    with torch.no_grad():
        moe.noise.copy_(torch.tensor([list(noise_logits), [0.0, 0.0]]))
    x0 = torch.tensor([[1.0, 0.0]]).expand(40000, 2)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        gates = moe.gates(x0).double()
    spread = torch.log(gates[:, 0] / gates[:, 1])
    std = torch.nn.functional.softplus(torch.tensor(noise_logits, dtype=torch.float64)) + 0.01
    expected = float((std**2).sum())
    assert abs(float(spread.mean())) < 0.05 * expected**0.5
    assert float(spread.var()) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize(("n_experts", "top_k"), [(4, 1), (4, 2), (3, 2)])
def test_top_k_zeroes_the_other_experts(n_experts, top_k):
    moe = MoEAdapter(16, n_experts=n_experts, top_k=top_k).eval()
    _randomize_(moe, seed=5)
    x0 = torch.randn(32, 16)
    gates = moe.gates(x0)
    assert ((gates > 0).sum(dim=-1) == top_k).all()
    assert torch.allclose(gates.sum(dim=-1), torch.ones(32))
    kept = (x0 @ moe.router).topk(top_k, dim=-1).indices
    assert torch.equal(gates.topk(top_k, dim=-1).indices.sort().values, kept.sort().values)


def test_top_one_output_is_the_chosen_expert():
    moe = MoEAdapter(16, n_experts=3, top_k=1).eval()
    _randomize_(moe, seed=6)
    x = torch.randn(4, 5, 16)
    chosen = (x[:, 0] @ moe.router).argmax(dim=-1)
    expected = torch.stack([moe.experts[int(e)](x[b : b + 1])[0] for b, e in enumerate(chosen)])
    assert torch.allclose(moe(x), expected, atol=1e-6)


def test_top_k_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"top_k must be in 1\.\.2, got 3"):
        MoEAdapter(8, n_experts=2, top_k=3)
    with pytest.raises(ValueError, match=r"top_k must be in 1\.\.2, got 0"):
        MoEAdapter(8, n_experts=2, top_k=0)


def test_moe_parameter_count_at_width_768():
    moe = MoEAdapter(768)
    # two experts of 768·64 + 64 + 64·768 + 768 = 99,136 each, plus W_g and W_n of 768×2
    assert sum(p.numel() for p in moe.parameters()) == 2 * 99136 + 2 * 768 * 2


# ---------------------------------------------------------------------------------------------- LoRA


def test_lora_is_zero_at_init_and_scales_by_alpha_over_rank():
    lora = LoRA(12, 20, rank=4, alpha=16.0)
    assert lora.scaling == 4.0
    assert lora.a.shape == (4, 12) and lora.b.shape == (20, 4)
    assert torch.count_nonzero(lora.b) == 0 and torch.count_nonzero(lora.a) > 0
    x = torch.randn(3, 5, 12)
    assert torch.equal(lora(x), torch.zeros(3, 5, 20))
    with torch.no_grad():
        lora.b.copy_(torch.randn(20, 4))
    delta = lora(x)
    assert torch.allclose(delta, (16.0 / 4) * x @ (lora.b @ lora.a).T, atol=1e-5)
    assert delta.abs().max() > 0


def test_lora_unit_covers_both_mlp_linears():
    unit = LoRAUnit(64, 256, rank=8, alpha=16.0)
    assert (unit.fc.a.shape, unit.fc.b.shape) == ((8, 64), (256, 8))
    assert (unit.proj.a.shape, unit.proj.b.shape) == ((8, 256), (64, 8))
    assert unit.fc.scaling == unit.proj.scaling == 2.0
    assert sum(p.numel() for p in unit.parameters()) == 2 * 8 * (64 + 256)

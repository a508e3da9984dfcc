"""Adapter units: the MoE adapter of MoE-Adapters4CL (CVPR 2024) and LoRA. No open_clip here.

Every transformer block of both towers carries one unit; `attach.py` decides where it plugs in.
Both are exact no-ops at initialisation, so step 0 is zero-shot CLIP.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_SHARD: list[tuple[slice, int]] = []  # (rows, batch size) while a data-parallel FO pass runs on some rows


@contextmanager
def batch_shard(rows: slice, total: int):
    """Forwards inside draw gating noise and dropout masks for the whole `total`-row batch and keep
    `rows`: the global RNG advances as for the whole batch, and each row gets the noise it would get
    in one process (DESIGN §11). Dropout follows CPU's `F.dropout` (a Bernoulli mask, scaled by 1/(1−p))."""
    _SHARD.append((rows, total))
    try:
        yield
    finally:
        _SHARD.pop()


def _randn_like(x: torch.Tensor) -> torch.Tensor:
    if not _SHARD:
        return torch.randn_like(x)
    rows, total = _SHARD[-1]
    return torch.randn((total, *x.shape[1:]), dtype=x.dtype, device=x.device)[rows]


def _dropout(module: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    p = module.p
    if not _SHARD or not module.training or p == 0 or x.numel() == 0:
        return module(x)
    rows, total = _SHARD[-1]
    mask = torch.empty((total, *x.shape[1:]), dtype=x.dtype, device=x.device).bernoulli_(1 - p).div_(1 - p)
    return x * mask[rows]


class AdapterUnit(nn.Module):
    """Base class: trainable parameters are found by visiting these modules, never by name."""


class Expert(nn.Module):
    """Bottleneck adapter: Linear(d→b) → ReLU → Dropout → Linear(b→d), times a fixed scale."""

    def __init__(self, dim: int, bottleneck: int, scale: float, dropout: float):
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        self.dropout = nn.Dropout(dropout)
        self.scale = scale  # fixed, not learned, as in the original
        # "lora" init: down keeps nn.Linear's Kaiming-uniform(a=√5) weight; the rest starts at zero,
        # so the expert outputs exactly 0 until it trains.
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(_dropout(self.dropout, F.relu(self.down(x)))) * self.scale


class MoEAdapter(AdapterUnit):
    """Noisy top-k mixture of experts, gated once per sample on token 0 (DESIGN §3).

    Reads the post-attention residual stream x of a block; the block adds its output next to the MLP:
    block(x) = x + MLP(LN2(x)) + MoE(x). Gating noise is drawn only in training mode.
    """

    def __init__(
        self,
        dim: int,
        n_experts: int = 2,
        top_k: int = 2,
        bottleneck: int = 64,
        scale: float = 0.1,
        dropout: float = 0.1,
    ):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in 1..{n_experts}, got {top_k}")
        self.top_k = top_k
        self.experts = nn.ModuleList(Expert(dim, bottleneck, scale, dropout) for _ in range(n_experts))
        self.router = nn.Parameter(torch.zeros(dim, n_experts))  # W_g
        self.noise = nn.Parameter(torch.zeros(dim, n_experts))  # W_n

    def gates(self, x0: torch.Tensor) -> torch.Tensor:
        """(B, D) token-0 states → (B, E) gate weights, zero outside each sample's top-k."""
        logits = x0 @ self.router  # (B, E)
        if self.training:
            std = F.softplus(x0 @ self.noise) + 0.01  # (B, E)
            logits = logits + _randn_like(logits) * std
        top, index = logits.topk(self.top_k, dim=-1)  # (B, k)
        return torch.zeros_like(logits).scatter(-1, index, top.softmax(dim=-1))  # (B, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates(x[:, 0])  # (B, E): one gate vector per sample, for all of its tokens
        out = torch.zeros_like(x)  # (B, N, D)
        for e, expert in enumerate(self.experts):
            out = out + gates[:, e, None, None] * expert(x)
        return out


class LoRA(nn.Module):
    """Low-rank update of one frozen linear: x ↦ (α/r)·B·A·x, with B zero-initialised."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float):
        super().__init__()
        self.a = nn.Parameter(torch.empty(rank, in_features))
        self.b = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.a.T) @ self.b.T * self.scaling  # (..., in) → (..., out)


class LoRAUnit(AdapterUnit):
    """LoRA on a block's two MLP linears (c_fc: d→h, c_proj: h→d); attach.py adds the deltas."""

    def __init__(self, dim: int, hidden: int, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        self.fc = LoRA(dim, hidden, rank, alpha)
        self.proj = LoRA(hidden, dim, rank, alpha)

"""CLIP with one adapter unit per transformer block: the one module that knows open_clip's internals.

The towers are run block by block here (embed → blocks → head) instead of through open_clip's
`encode_*`, so a zeroth-order forward can restart at the first perturbed layer from a cached hidden
state (DESIGN §6). The frozen CLIP itself is never modified; adapters live in `self.units`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from zocli.config import BRANCHES
from zocli.method.adapters import AdapterUnit, LoRAUnit, MoEAdapter
from zocli.method.backbone import Backbone
from zocli.method.plan import Unit


class AdaptedCLIP(nn.Module):
    """A frozen open_clip CLIP plus `units[branch][layer - 1]`, one adapter per block."""

    def __init__(self, backbone: Backbone, adapter: str = "moe", lora_rank: int = 8, lora_alpha: float = 16.0):
        super().__init__()
        self.clip = backbone.clip
        self.tokenizer = backbone.tokenizer  # list[str] -> (P, T) token ids
        self.image_size, self.mean, self.std = backbone.image_size, backbone.mean, backbone.std
        self.units = nn.ModuleDict(
            {
                branch: nn.ModuleList(
                    _make_unit(block, adapter, lora_rank, lora_alpha) for block in self.blocks(branch)
                )
                for branch in BRANCHES
            }
        )
        device = next(self.clip.parameters()).device
        self.units.to(device)
        self._switched = tuple(self.units.modules())  # what `train` flips: a ZO step switches modes ~40 times

    def train(self, mode: bool = True) -> AdaptedCLIP:
        """Switch only the adapters: dropout and gating noise live there. The frozen CLIP stays in
        eval mode (its configs have no active dropout), which also keeps attention on its fast path
        and makes the many mode switches of a ZO step cheap."""
        self.training = mode
        for module in self._switched:
            # a plain attribute write: Module.__setattr__'s parameter bookkeeping costs 8x more per module
            object.__setattr__(module, "training", mode)
        if self.clip.training:
            self.clip.eval()
        return self

    # -- structure -----------------------------------------------------------------------------

    def blocks(self, branch: str) -> nn.ModuleList:
        tower = self.clip.visual.transformer if branch == "vision" else self.clip.transformer
        return tower.resblocks

    def depth(self) -> dict[str, int]:
        return {branch: len(self.blocks(branch)) for branch in BRANCHES}

    def unit_items(self) -> Iterator[tuple[Unit, AdapterUnit]]:
        """((branch, 1-based layer), unit) for every adapter unit, in a fixed order."""
        for branch in BRANCHES:
            for index, unit in enumerate(self.units[branch]):
                yield (branch, index + 1), unit

    def unit(self, unit: Unit) -> AdapterUnit:
        branch, layer = unit
        return self.units[branch][layer - 1]

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every trainable tensor, found by visiting adapter modules (never by name)."""
        return [p for _, unit in self.unit_items() for p in unit.parameters()]

    # -- forward pieces ------------------------------------------------------------------------

    def embed(self, branch: str, inputs: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) or tokens (P, T) → the hidden state entering layer 1, (B, N, D)."""
        if branch == "vision":
            return self.clip.visual._embeds(inputs)
        return self.clip.token_embedding(inputs) + self.clip.positional_embedding  # (P, T, D)

    def run_blocks(self, branch: str, h: torch.Tensor, start: int = 1, stop: int | None = None) -> torch.Tensor:
        """Run 1-based layers start..stop (inclusive) of a tower on hidden state h, (B, N, D)."""
        blocks, units = self.blocks(branch), self.units[branch]
        stop = len(blocks) if stop is None else stop
        mask = None if branch == "vision" else self.clip.attn_mask
        for index in range(start - 1, stop):
            h = _adapted_block(blocks[index], units[index], h, mask)
        return h

    def head(self, branch: str, h: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Final hidden state → L2-normalised features (B, E). Text pooling needs the tokens."""
        clip = self.clip
        if branch == "vision":
            pooled, _ = clip.visual._pool(h)  # (B, D)
            features = pooled @ clip.visual.proj if clip.visual.proj is not None else pooled
        else:
            x = clip.ln_final(h)  # (P, T, D)
            x = x[torch.arange(x.shape[0], device=x.device), inputs.argmax(dim=-1)]  # (P, D): the EOT token
            features = x @ clip.text_projection
        return F.normalize(features, dim=-1)

    def encode(self, branch: str, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(branch, self.run_blocks(branch, self.embed(branch, inputs)), inputs)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B, E) x (C, E) → (B, C) = exp(logit_scale) · cosine similarity."""
        return self.clip.logit_scale.exp() * image_features @ text_features.T


def _make_unit(block: nn.Module, adapter: str, lora_rank: int, lora_alpha: float) -> AdapterUnit:
    fc = block.mlp.c_fc
    if adapter == "moe":
        return MoEAdapter(fc.in_features)
    if adapter == "lora":
        return LoRAUnit(fc.in_features, fc.out_features, lora_rank, lora_alpha)
    raise ValueError(f"unknown adapter {adapter!r}")


def _adapted_block(block: nn.Module, unit: AdapterUnit, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """open_clip's ResidualAttentionBlock.forward with the adapter unit plugged in."""
    x = x + block.ls_1(block.attention(q_x=block.ln_1(x), attn_mask=mask))  # post-attention stream
    if isinstance(unit, LoRAUnit):
        mlp, h = block.mlp, block.ln_2(x)
        hidden = mlp.gelu(mlp.c_fc(h) + unit.fc(h))  # (B, N, 4D)
        return x + block.ls_2(mlp.c_proj(hidden) + unit.proj(hidden))
    # MoE: parallel to the MLP, reading x before ln_2 (MoE-Adapters4CL placement).
    return x + block.ls_2(block.mlp(block.ln_2(x))) + unit(x)


def build_model(cfg, device: str | torch.device) -> AdaptedCLIP:
    """Backbone + adapters as `cfg` (a zocli Config) describes them, frozen except the adapters.

    Initialisation draws from a forked RNG seeded by the run seed: a random-init backbone
    (`--pretrained none`) is rebuilt identically by `eval`, and the global RNG is left untouched.
    """
    from zocli.method.backbone import build
    from zocli.rng import derive_seed

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init"))
        return AdaptedCLIP(build(cfg.model, cfg.pretrained, device), cfg.adapter, cfg.lora_rank, cfg.lora_alpha)

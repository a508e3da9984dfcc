"""Contrastive pretraining of the tiny CLIP on the world's pretraining half: the shipped `testbed` weights.

Every CLIP parameter trains from a seeded random init on `pretrain`-style images of the 50
pretraining compositions, captioned with random templates. The loss is CLIP's symmetric
image↔caption cross-entropy over the batch, with every caption of the same composition counted as a
positive (a batch of 256 draws each composition ~5 times, and plain InfoNCE would push duplicates
apart). Deterministic on CPU for a given seed and thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zocli.data import testbed
from zocli.method.backbone import build

MODEL = "zocli-tiny"


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0
    steps: int = 1000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 100
    pool: int = 160  # images per pretraining composition, drawn once and reused with fresh captions


@dataclass(frozen=True)
class PretrainResult:
    state_dict: dict[str, torch.Tensor]
    loss_first: float
    loss_last: float


def pretrain(cfg: PretrainConfig, on_step: Callable[[int, float], None] | None = None) -> PretrainResult:
    """Train zocli-tiny from its seeded random init; returns its CLIP state dict."""
    torch.manual_seed(cfg.seed)  # a script's own process: open_clip's init draws from the global RNG
    backbone = build(MODEL, "none")
    clip = backbone.clip.requires_grad_(True).train()
    classes = np.array(testbed.pretrain_classes())
    labels = np.repeat(classes, cfg.pool)
    pixels = normalize(np.stack(list(testbed.images(labels, "pretrain", cfg.seed, "pretrain"))), backbone)
    names_rng, order = np.random.default_rng([cfg.seed, 1]), torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(clip.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, cfg)
        rows = torch.randint(len(labels), (cfg.batch_size,), generator=order)
        batch_labels = torch.as_tensor(labels[rows.numpy()])
        tokens = backbone.tokenizer([testbed.caption(int(c), names_rng) for c in batch_labels])
        loss = _contrastive_loss(clip, pixels[rows], tokens, batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    state = {k: v.detach().clone() for k, v in clip.state_dict().items()}
    return PretrainResult(state, losses[0], float(np.mean(losses[-50:])))


def normalize(images: np.ndarray, backbone) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 → (N, 3, 32, 32) float, with the backbone's CLIP mean and std."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(backbone.mean).view(1, 3, 1, 1), torch.tensor(backbone.std).view(1, 3, 1, 1)
    return (x - mean) / std


def _contrastive_loss(clip, pixels: torch.Tensor, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    image = clip.encode_image(pixels, normalize=True)  # (B, E)
    text = clip.encode_text(tokens, normalize=True)  # (B, E)
    logits = clip.logit_scale.exp() * image @ text.T  # (B, B)
    same = (labels[:, None] == labels[None, :]).float()  # (B, B) positives: the same composition
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (_soft_ce(logits, target) + _soft_ce(logits.T, target))


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _lr(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))) * cfg.lr

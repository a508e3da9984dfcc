"""The training loss of one batch, with the tower caching that makes ZO cheap (DESIGN §6).

Loss = cross-entropy over the current task's classes of exp(logit_scale)·cos(image, text), text
features from the current task's prompts. ZO evaluations reuse whatever a perturbation cannot change:
the other tower's features, and inside a tower the hidden state entering the first perturbed layer.
They run under no_grad, in eval mode (no dropout, no gating noise), images in micro-batches.
Backbone forwards run at the FO pass's or the ZO forwards' precision (`precision.matmuls`); the logits
and the loss are always computed in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from zocli.config import BRANCHES
from zocli.method.adapters import batch_shard
from zocli.method.attach import AdaptedCLIP
from zocli.method.plan import Unit
from zocli.method.precision import at_least_fp32, full_precision, matmuls
from zocli.method.ranks import SOLO, Ranks
from zocli.method.zo import scalar


class ClipObjective:
    """Implements `zo.Objective` for a batch of images (B, 3, H, W), labels (B,) and prompts (C, T)."""

    def __init__(
        self,
        model: AdaptedCLIP,
        images: torch.Tensor,
        labels: torch.Tensor,
        tokens: torch.Tensor,
        not_fo: frozenset[Unit],
        chunk: int,
        precision: str = "fp32",
        zo_precision: str = "fp32",
        ranks: Ranks = SOLO,
    ):
        """`not_fo`: the units that take no backprop step (ZO and frozen ones); `precision` and
        `zo_precision`: the backbone's matmuls in the FO pass and in the ZO forwards; `ranks`: with
        `ranks.shards_rows`, the FO pass runs on this rank's rows (`_fo_backward_shard`)."""
        self.model, self.labels, self.chunk, self.ranks = model, labels, chunk, ranks
        self.precision, self.zo_precision = precision, zo_precision
        self.inputs = {"vision": images, "language": tokens}
        self.fo_branches = {unit[0] for unit, _ in model.unit_items() if unit not in not_fo}
        self.features: dict[str, torch.Tensor] = {}  # detached (B, E) / (C, E) at the current θ

    # -- FO --------------------------------------------------------------------------------------

    def fo_backward(self) -> float | None:
        if not self.fo_branches:
            return None
        if self.ranks.shards_rows and "vision" in self.fo_branches:
            return self._fo_backward_shard()
        self.model.train()
        features = {}
        with matmuls(self.precision, self.labels.device):
            for branch in BRANCHES:
                if branch in self.fo_branches:
                    features[branch] = self.model.encode(branch, self.inputs[branch])
                else:  # a tower with no FO unit needs no graph
                    features[branch] = self._features(branch)
        loss = F.cross_entropy(self._logits(features["vision"], features["language"]), self.labels)
        loss.backward()
        self.features = {b: f.detach() for b, f in features.items()}
        return scalar(loss)

    def _fo_backward_shard(self) -> float:
        """The FO pass on this rank's rows (data parallelism, DESIGN §11): its cross-entropy sum over the
        whole batch size, backward, and the FO gradients, the loss and the image features summed or
        gathered over the ranks, so the AdamW step is one process's to fp32 round-off. Gating noise and
        dropout are drawn for the whole batch and sliced (`batch_shard`): every rank's global RNG moves as
        one process's, and each row gets the noise it would get there (on CPU; CUDA's fused dropout draws
        differently, so there the noise is another draw of the same law)."""
        self.model.train()
        n, rows = len(self.labels), self.ranks.rows(len(self.labels))
        features = {}
        with matmuls(self.precision, self.labels.device):
            with batch_shard(rows, n):
                features["vision"] = self.model.encode("vision", self.inputs["vision"][rows])
            if "language" in self.fo_branches:
                features["language"] = self.model.encode("language", self.inputs["language"])
            else:
                features["language"] = self._features("language")
        logits = self._logits(features["vision"], features["language"])
        loss_sum = F.cross_entropy(logits, self.labels[rows], reduction="sum")
        (loss_sum / n).backward()
        grads = [p.grad for _, m in self.model.unit_items() for p in m.parameters() if p.grad is not None]
        total = loss_sum.detach().double().reshape(1)
        self.ranks.sum_tensors_(grads)
        self.ranks.sum_(total)
        vision = self.ranks.gather(features["vision"].detach(), self.ranks.counts(n))
        self.features = {"vision": vision, "language": features["language"].detach()}
        return float(total) / n

    # -- ZO --------------------------------------------------------------------------------------

    def loss_fn(self, units: Collection[Unit]) -> Callable[[], float]:
        """The loss as the units move: what precedes them (the other tower's features, the hidden states
        entering the first perturbed layer) is computed at the first call and reused, so a rank that
        measures none of a block's evaluations (DESIGN §11) never pays for that block's set-up."""
        start = {b: min((k for (br, k) in units if br == b), default=None) for b in BRANCHES}
        at, fixed, entry = self.zo_precision, {}, {}

        def loss() -> float:
            with torch.no_grad(), deterministic(self.model), matmuls(at, self.labels.device):
                if not fixed and not entry:
                    fixed.update({b: self._features(b) for b in BRANCHES if start[b] is None})
                    entry.update({b: list(self._prefix(b, k)) for b, k in start.items() if k is not None})
                text = fixed.get("language")
                if text is None:
                    text = self._finish("language", entry["language"][0], start["language"], self.inputs["language"])
                if "vision" in fixed:
                    images = fixed["vision"].split(self.chunk)  # the same micro-batches: the same sums
                else:
                    pieces = zip(entry["vision"], self._pieces("vision"))
                    images = (self._finish("vision", h, start["vision"], x) for h, x in pieces)
                total = 0.0
                for image, labels in zip(images, self.labels.split(self.chunk)):
                    total += scalar(self._ce_sum(image, text, labels))
                return total / len(self.labels)

        return loss

    def reset(self, units: Collection[Unit] | None = None) -> None:
        for branch in BRANCHES if units is None else {b for b, _ in units}:
            self.features.pop(branch, None)

    def gradient(self, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        images, tokens = self.inputs["vision"], self.inputs["language"]
        return exact_gradient(self.model, images, self.labels, tokens, params)

    # -- pieces ----------------------------------------------------------------------------------

    def _features(self, branch: str) -> torch.Tensor:
        """Detached features of a tower at θ, computed deterministically once and then reused (at the
        precision of the pass that first needs them: a ± pair shares them, so d is unaffected)."""
        if branch not in self.features:
            with torch.no_grad(), deterministic(self.model):
                self.features[branch] = torch.cat([self.model.encode(branch, x) for x in self._pieces(branch)])
        return self.features[branch]

    def _prefix(self, branch: str, layer: int) -> Iterator[torch.Tensor]:
        """Hidden states entering `layer` (1-based), per piece of `_pieces`."""
        for x in self._pieces(branch):
            yield self.model.run_blocks(branch, self.model.embed(branch, x), 1, layer - 1)

    def _pieces(self, branch: str) -> tuple[torch.Tensor, ...]:
        """Images in micro-batches (what bounds ZO activation memory); the few prompts in one piece."""
        inputs = self.inputs[branch]
        return inputs.split(self.chunk) if branch == "vision" else (inputs,)

    def _finish(self, branch: str, h: torch.Tensor, layer: int, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.head(branch, self.model.run_blocks(branch, h, layer), inputs)

    def _ce_sum(self, image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with full_precision(labels.device):
            return F.cross_entropy(self._logits(image, text), labels, reduction="sum")

    def _logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # the loss stays fp32 whatever precision computed the features (fp64 stays fp64): a bf16 loss rounds
        # away the finite difference L(θ+εz) − L(θ−εz) it feeds (DESIGN §6)
        with full_precision(image.device):
            return self.model.logits(at_least_fp32(image), at_least_fp32(text))  # (B, C)


def exact_gradient(
    model: AdaptedCLIP, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor, params: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """Autograd gradient of the deterministic batch loss w.r.t. `params`, whatever their requires_grad
    (ZO units have it off); zeros for parameters the loss does not use (gating noise in eval mode)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    try:
        with torch.enable_grad(), deterministic(model):
            logits = model.logits(model.encode("vision", images), model.encode("language", tokens))  # (B, C)
            grads = torch.autograd.grad(F.cross_entropy(logits, labels), list(params), allow_unused=True)
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


@contextmanager
def deterministic(model: torch.nn.Module):
    """Eval mode (no dropout, no gating noise) for the duration, then the previous mode again."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)

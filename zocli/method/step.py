"""The training step as train, probe-variance and memory all run it: plan → blocks → hybrid step.

`Stepper` freezes ZO units (requires_grad=False, outside the optimizer), builds AdamW over the FO
units, groups ZO parameters into finite-difference blocks by granularity, and runs `zo.hybrid_step`.
"""

from __future__ import annotations

import torch

from zocli.config import BRANCHES, DEFAULT_ZO_CHUNK, Config
from zocli.errors import ZocliError
from zocli.method.attach import AdaptedCLIP
from zocli.method.blocks import Block, flatten_
from zocli.method.estimate import ZOSettings
from zocli.method.objective import ClipObjective
from zocli.method.plan import Unit, frozen_units, zo_units
from zocli.method.ranks import SOLO, Ranks
from zocli.method.zo import StepStats, ZOAdam, hybrid_step


class DeviceUnavailable(ZocliError, RuntimeError):
    """The requested device does not exist on this machine."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceUnavailable(f"--device {name} was asked for, but CUDA is not available on this machine")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceUnavailable(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def zo_precision(cfg: Config) -> str:
    """The ZO forwards' precision: `auto` is resolved by train's fidelity check on its first batch (and
    recorded in config.json); anywhere it is still unresolved (memory, probes, benchmarks) it is fp32."""
    return "fp32" if cfg.zo_precision == "auto" else cfg.zo_precision


def settings(cfg: Config) -> ZOSettings:
    return ZOSettings(
        two_sided=cfg.estimator == "two-sided",
        queries=cfg.queries,
        sign=cfg.sign,
        conservative=cfg.conservative,
        rule=cfg.zo_rule,
    )


def zo_notes(cfg: Config, n_blocks: int) -> list[str]:
    """What this configuration makes of the finite difference, said once at the start of a run."""
    if not n_blocks:
        return []
    rule, notes = settings(cfg), []
    if rule.irrelevant_estimate(n_blocks):
        notes.append(
            "sign + conservative + q=1 + one ZO block: the candidates {θ, θ ± η·sign(z)} do not depend "
            "on the finite difference, so this is random search; its estimate forwards are skipped"
        )
        if cfg.eps_vision is not None or cfg.eps_language is not None:
            notes.append("--eps-vision/--eps-language cannot act here: no finite difference is measured")
    elif cfg.sign and cfg.zo_rule == "sgd" and rule.conservative and cfg.queries == 1:
        notes.append(
            f"sign + conservative + q=1: the {n_blocks} finite differences decide only their relative "
            f"signs, {n_blocks - 1} bit(s) per step; ε sets where d is measured, not the step size"
        )
    if cfg.zo_rule in ("noise", "random-search") and cfg.sign:
        notes.append(f"--zo-rule {cfg.zo_rule} measures no finite difference: --normalize/--mozo do not apply")
    if cfg.zo_rule == "noise" and cfg.conservative:
        notes.append("--zo-rule noise always applies its step (no candidates): --conservative does not apply")
    return notes


def make_blocks(model: AdaptedCLIP, units: frozenset[Unit], cfg: Config) -> list[Block]:
    """Finite-difference blocks: one per ZO branch (default), one for everything, or one per unit."""
    ordered = [u for u, _ in model.unit_items() if u in units]
    if cfg.granularity == "joint":
        groups = {"joint": ordered} if ordered else {}
    elif cfg.granularity == "layer":
        groups = {f"{b}.{k}": [(b, k)] for b, k in ordered}
    else:
        groups = {b: [u for u in ordered if u[0] == b] for b in BRANCHES if any(u[0] == b for u in ordered)}
    return [_block(model, name, group, cfg) for name, group in groups.items()]


def _block(model: AdaptedCLIP, name: str, group: list[Unit], cfg: Config) -> Block:
    params, eps = [], []
    for unit in group:
        for p in model.unit(unit).parameters():
            params.append(p)
            eps.append(cfg.eps_for(unit[0]))
    return Block(name, tuple(group), tuple(params), tuple(eps))


class Stepper:
    """Owns the FO/ZO/frozen partition, the FO optimizer and the ZO rule's state of one task."""

    def __init__(self, model: AdaptedCLIP, cfg: Config, ranks: Ranks = SOLO):
        """`ranks`: this process's share of each step when a run spans several (DESIGN §11)."""
        self.model, self.cfg, self.ranks = model, cfg, ranks
        self.units = zo_units(cfg, model.depth())
        self.frozen = frozen = frozen_units(cfg, model.depth())
        self.not_fo = self.units | frozen  # what takes no backprop step: the objective's graph skips it
        fo_params = []
        for unit, module in model.unit_items():
            is_fo = unit not in self.units and unit not in frozen
            module.requires_grad_(is_fo)
            if is_fo:
                fo_params.extend(module.parameters())
        # AdamW over FO units only: ZO and frozen parameters never get .grad and never enter this optimizer.
        self.optimizer = torch.optim.AdamW(fo_params, lr=cfg.lr, weight_decay=cfg.weight_decay) if fo_params else None
        # each block's parameters become views into one buffer: a ZO move is one kernel, not one per tensor
        self.blocks = [flatten_(block) for block in make_blocks(model, self.units, cfg)]
        self.settings = settings(cfg)
        self.adam = ZOAdam.for_blocks(self.blocks) if cfg.zo_rule == "adam" and self.blocks else None
        self.chunk = cfg.zo_chunk or DEFAULT_ZO_CHUNK

    def objective(self, images: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor) -> ClipObjective:
        return ClipObjective(
            self.model,
            images,
            labels,
            tokens,
            self.not_fo,
            self.chunk,
            self.cfg.precision,
            zo_precision(self.cfg),
            self.ranks,
        )

    def step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        tokens: torch.Tensor,
        lr: float,
        seed: int,
        probe: bool = False,
    ) -> StepStats:
        """One hybrid step at FO learning rate `lr` (ZO follows the same schedule); `seed` names its
        directions; `probe` also measures cos(ZO update, exact gradient)."""
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        objective = self.objective(images, labels, tokens)
        return hybrid_step(
            objective,
            self.blocks,
            self.optimizer,
            self.cfg.zo_lr_at(lr),
            self.settings,
            seed,
            self.adam,
            probe and bool(self.blocks),
            self.ranks,
        )

"""The finite-difference fidelity check: does d = L(θ+εz) − L(θ−εz) survive a faster matmul precision?

For each precision and each ZO block, N seeded directions z on real batches: d at that precision against
d at the fp32 (IEEE) reference, as ‖d_p − d_ref‖ / ‖d_ref‖ over the N directions, and the cosine of the
resulting ĝ = mean (d/ε)·z with the reference's ĝ (same z, so only d differs). On a CPU the fp32
reference is itself measured against a float64 copy of the model. A precision passes when every block
is within `MAX_REL_ERROR` and `MIN_COSINE`; fp32 is the reference and passes by definition.

`train` runs the check on its first batch whenever the ZO forwards would run below fp32 (README, "Precision").
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from zocli.config import DEFAULT_ZO_CHUNK, Config, ConfigError
from zocli.method.attach import AdaptedCLIP
from zocli.method.blocks import Block, direction, move_
from zocli.method.objective import ClipObjective
from zocli.method.plan import zo_units
from zocli.method.precision import zo_default
from zocli.method.step import make_blocks
from zocli.resolve import Resolved
from zocli.rng import derive_seed
from zocli.run.session import task_batches

MAX_REL_ERROR = 0.10  # ‖d_p − d_fp32‖ / ‖d_fp32‖: beyond this the finite difference is mostly rounding
MIN_COSINE = 0.99  # cos(ĝ_p, ĝ_fp32): the estimate must point where fp32's does
TRAIN_DIRECTIONS = 8  # directions per block when `train` checks its first batch


class FidelityFailed(ConfigError):
    """A ZO precision was asked for that the fidelity check rejects: a usage error (exit 2)."""


@dataclass(frozen=True)
class BlockFidelity:
    block: str
    eps: float
    rel_error: float  # vs fp32
    cosine: float  # cos(ĝ, ĝ_fp32)
    rel_error_fp64: float | None = None  # vs float64 (CPU only)
    cosine_fp64: float | None = None


@dataclass(frozen=True)
class PrecisionFidelity:
    precision: str
    blocks: tuple[BlockFidelity, ...]
    passed: bool


@dataclass(frozen=True)
class FidelityReport:
    model: str
    benchmark: str
    device: str
    batches: int
    directions: int  # per batch and block
    max_rel_error: float
    min_cosine: float
    precisions: tuple[PrecisionFidelity, ...]

    def passed(self, precision: str) -> bool:
        return next(p.passed for p in self.precisions if p.precision == precision)

    def as_dict(self) -> dict:
        return asdict(self)


def measure(
    model: AdaptedCLIP,
    cfg: Config,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    precisions: Sequence[str],
    directions: int,
    seed: int,
    float64: bool = True,
) -> FidelityReport:
    """The check over `cfg`'s ZO blocks on `batches` (images, local labels, prompts), on a CPU also against
    a float64 copy unless `float64` is off; the model is left exactly as found (parameters and flags)."""
    names = ["fp32", *(p for p in dict.fromkeys(precisions) if p != "fp32")]
    units = zo_units(cfg, model.depth())
    saved = {k: v.clone() for k, v in model.units.state_dict().items()}
    flags = [p.requires_grad for p in model.adapter_parameters()]
    device = next(model.parameters()).device
    model.units.requires_grad_(False)  # every block is perturbed in place, none is trained
    try:
        wide = copy.deepcopy(model).double() if float64 and device.type == "cpu" else None  # the fp64 reference
        blocks = make_blocks(model, units, cfg)
        wide_blocks = make_blocks(wide, units, cfg) if wide is not None else []
        diffs = {name: {b.name: [] for b in blocks} for name in [*names, "fp64"]}
        ghat = {name: {b.name: torch.zeros(b.size, dtype=torch.float64) for b in blocks} for name in [*names, "fp64"]}
        chunk = cfg.zo_chunk or DEFAULT_ZO_CHUNK
        count = 0
        for index, (images, labels, tokens) in enumerate(batches):
            count += 1
            objectives = {n: ClipObjective(model, images, labels, tokens, units, chunk, "fp32", n) for n in names}
            if wide is not None:
                objectives["fp64"] = ClipObjective(wide, images.double(), labels, tokens, units, chunk)
            for at, block in enumerate(blocks):
                pairs = [(n, block, objectives[n].loss_fn(block.units)) for n in names]
                if wide is not None:
                    pairs.append(("fp64", wide_blocks[at], objectives["fp64"].loss_fn(block.units)))
                for k in range(directions):
                    z = direction(block, derive_seed(seed, "fidelity", index, block.name, k))  # (N,) fp32
                    for name, target, loss in pairs:
                        d = _difference(target, z, loss)
                        diffs[name][block.name].append(d)
                        _accumulate(ghat[name][block.name], block, z, d)
    finally:
        model.units.load_state_dict(saved)
        for p, flag in zip(model.adapter_parameters(), flags):
            p.requires_grad_(flag)
    rows = tuple(_row(name, blocks, diffs, ghat, wide is not None) for name in names)
    return FidelityReport(cfg.model, cfg.benchmark, str(device), count, directions, MAX_REL_ERROR, MIN_COSINE, rows)


def _difference(block: Block, z: torch.Tensor, loss) -> float:
    """d = L(θ+εz) − L(θ−εz), θ put back exactly afterwards (not by a third move)."""
    theta = [p.detach().clone() for p in block.params]
    move_(block, z, +1.0)
    plus = loss()
    move_(block, z, -2.0)
    minus = loss()
    for p, t in zip(block.params, theta):
        p.copy_(t)
    return plus - minus


def _accumulate(ghat: torch.Tensor, block: Block, z: torch.Tensor, d: float) -> None:
    for start, stop, eps in block.runs:
        ghat[start:stop].add_(z[start:stop].double().cpu(), alpha=d / eps)


def _row(name: str, blocks: list[Block], diffs, ghat, wide: bool) -> PrecisionFidelity:
    rows = []
    for block in blocks:
        d, g = torch.tensor(diffs[name][block.name], dtype=torch.float64), ghat[name][block.name]
        against = {
            ref: (
                _rel(d, torch.tensor(diffs[ref][block.name], dtype=torch.float64)),
                float(F.cosine_similarity(g, ghat[ref][block.name], dim=0)),
            )
            for ref in ("fp32", "fp64")
            if ref == "fp32" or wide
        }
        fp64 = against.get("fp64", (None, None))
        rows.append(BlockFidelity(block.name, block.eps[0], *against["fp32"], *fp64))
    passed = name == "fp32" or all(r.rel_error <= MAX_REL_ERROR and r.cosine >= MIN_COSINE for r in rows)
    return PrecisionFidelity(name, tuple(rows), passed)


def _rel(d: torch.Tensor, reference: torch.Tensor) -> float:
    norm = float(reference.norm())
    return float((d - reference).norm()) / norm if norm > 0 else float(d.norm() > 0) * float("inf")


def probe(session, task: int, precisions: Sequence[str], batches: int, directions: int) -> FidelityReport:
    """`zocli probe-variance --precision`: the check with both branches ZO (one block each), on
    `batches` batches of `task`."""
    if not 0 <= task < session.split.n_tasks:
        raise ConfigError(f"--task {task} is out of range: the benchmark has tasks 0..{session.split.n_tasks - 1}")
    cfg = replace(session.cfg, vision="zo", language="zo", layers="all", layers_n=None, granularity="branch")
    return measure(
        session.model,
        cfg,
        task_batches(session, task, (cfg.seed, task, "fidelity"), max_steps=batches, workers=0),
        precisions,
        directions,
        derive_seed(cfg.seed, "fidelity-probe"),
    )


# ---------------------------------------------------------------------------------------------- train's gate


def needs_check(precision: str, device: torch.device) -> bool:
    """fp32 is the reference, and tf32 on a CPU computes exactly fp32: neither needs measuring."""
    return precision == "bf16" or (precision == "tf32" and device.type == "cuda")


def choose_zo_precision(session, resolved: Resolved) -> tuple[Resolved, FidelityReport | None]:
    """The ZO precision a fresh run trains at, with the check that decided it (None when none ran).

    `auto` becomes the fastest candidate that passes; an explicit precision that fails raises
    `FidelityFailed`. The choice is written into the resolved config (source "fidelity-check"), so
    config.json records it and a resume does not check again."""
    cfg = resolved.config
    wanted = cfg.zo_precision
    candidates = ("fp32",) if not cfg.zo_branches else zo_default(session.device) if wanted == "auto" else (wanted,)
    measured = [c for c in candidates if needs_check(c, session.device)]
    report = None
    if measured:
        report = measure(
            session.model,
            cfg,
            first_batch(session),
            measured,
            TRAIN_DIRECTIONS,
            derive_seed(cfg.seed, "fidelity"),
            float64=False,
        )  # the gate compares with fp32 only
    chosen = next((c for c in candidates if report is None or c not in measured or report.passed(c)), None)
    if chosen is None:
        raise FidelityFailed(
            f"--zo-precision {wanted} fails the finite-difference fidelity check on the first "
            f"batch ({_worst(report, wanted)}); use --zo-precision fp32 (or auto), or see "
            f"zocli probe-variance --precision fp32,{wanted}"
        )
    if chosen == wanted:
        return resolved, report
    sources = {**resolved.sources, "zo_precision": "auto"}  # resolved from auto, by the check where one ran
    return replace(resolved, config=replace(cfg, zo_precision=chosen), sources=sources), report


def first_batch(session):
    """Task 0's first training batch, exactly as `train` will draw it."""
    return task_batches(session, 0, (session.cfg.seed, 0), max_steps=1, workers=0)


def notes(report: FidelityReport | None, chosen: str) -> list[str]:
    """What the check decided, said once at the start of a run."""
    if report is None:
        return []
    lines = [
        f"--zo-precision {row.precision} {'passes' if row.passed else 'fails'} the finite-difference fidelity "
        f"check on the first batch ({_worst(report, row.precision)})"
        for row in report.precisions
        if row.precision != "fp32"
    ]
    return [*lines, f"ZO forwards run at {chosen}"]


def _worst(report: FidelityReport, precision: str) -> str:
    row = next(p for p in report.precisions if p.precision == precision)
    worst = max(row.blocks, key=lambda b: b.rel_error)
    return (
        f"block {worst.block}: relative error of d {worst.rel_error:.3g} (max {MAX_REL_ERROR}), "
        f"cos(ĝ, ĝ_fp32) {worst.cosine:.3f} (min {MIN_COSINE})"
    )

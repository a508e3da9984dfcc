"""`zocli probe-variance`: how noisy ZO gradients are, per branch and per layer (the MoZO motivation).

For N batches of a task and R draws per batch, each draw a ZO estimate averaged over Q directions
(exactly `estimate.estimate_flat`, one finite difference per branch with that branch's ε), we accumulate the
per-coordinate variance of the estimates; the FO gradient (autograd, deterministic mode) across the
same batches is the reference. Variance of a Q-direction average falls as 1/Q.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from zocli.config import BRANCHES, DEFAULT_ZO_CHUNK, Config, ConfigError
from zocli.method.attach import AdaptedCLIP
from zocli.method.estimate import estimate_flat
from zocli.method.objective import ClipObjective, exact_gradient
from zocli.method.step import Stepper, make_blocks, settings
from zocli.rng import derive_seed
from zocli.run.session import Session, task_batches

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
HIST_BINS = 80  # over ~10 decades: 8 bins per decade


@dataclass(frozen=True)
class Distribution:
    """Summary of per-coordinate variances (a histogram of log10 variance on shared bin edges)."""

    mean: float
    median: float
    quantiles: dict[str, float]
    hist_counts: list[int]
    zero: int  # coordinates with exactly zero variance (not in the histogram)


@dataclass(frozen=True)
class BranchVariance:
    branch: str
    coordinates: int
    eps: float
    zo: Distribution
    fo: Distribution
    cosine_zo_fo: float  # mean cosine between one ZO estimate and the FO gradient of its batch
    layers: dict[int, dict[str, float]]  # layer -> {"zo_mean", "fo_mean"}
    # mean L(after) − L(before) of one step on its batch, this branch alone trained (the other frozen),
    # per update rule at its learning rate, next to the exact FO (AdamW) step: what the ZO table's gaps mean
    step_change: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VarianceReport:
    model: str
    adapter: str
    benchmark: str
    task: int
    batches: int
    draws: int
    queries: int
    estimator: str
    seed: int
    hist_edges_log10: list[float]
    branches: tuple[BranchVariance, ...]
    ratio_vision_language: dict[str, float]  # vision / language of mean and median variance

    def as_dict(self) -> dict:
        return {**asdict(self), "branches": [asdict(b) for b in self.branches]}


class _Welford:
    """Running per-coordinate mean and variance of a flat vector, in float64."""

    def __init__(self, size: int):
        self.n, self.mean, self.m2 = 0, torch.zeros(size, dtype=torch.float64), torch.zeros(size, dtype=torch.float64)

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().double().cpu()
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def variance(self) -> torch.Tensor:
        """Per-coordinate sample variance; a coordinate constant across draws (an FO gradient that is zero,
        or the same on every draw) is exactly 0, not the ~1e-28 that float64 rounding leaves of it."""
        var = self.m2 / max(self.n - 1, 1)
        return torch.where(var <= (1e-10 * self.mean.abs()) ** 2, torch.zeros_like(var), var)


def probe_variance(
    session: Session, task: int = 0, batches: int = 4, draws: int = 8, queries: int = 1
) -> VarianceReport:
    """Measure ZO and FO gradient variance on `batches` batches of `task` (model state as given).

    Finite-difference round trips are exact only up to fp32 rounding, so the adapters and their
    requires_grad flags are put back exactly afterwards: probing leaves the model as it found it.
    """
    if not 0 <= task < session.split.n_tasks:
        raise ConfigError(f"--task {task} is out of range: the benchmark has tasks 0..{session.split.n_tasks - 1}")
    model = session.model
    saved = {k: v.clone() for k, v in model.units.state_dict().items()}
    flags = [p.requires_grad for p in model.adapter_parameters()]
    try:
        report = _probe(session, task, batches, draws, queries)
        changes = {}
        for branch in BRANCHES:
            model.units.load_state_dict(saved)
            changes[branch] = _step_changes(session, task, batches, branch)
        return replace(report, branches=tuple(replace(b, step_change=changes[b.branch]) for b in report.branches))
    finally:
        model.units.load_state_dict(saved)
        for p, flag in zip(model.adapter_parameters(), flags):
            p.requires_grad_(flag)


def _probe(session: Session, task: int, batches: int, draws: int, queries: int) -> VarianceReport:
    cfg = replace(session.cfg, vision="zo", language="zo", layers="all", queries=queries, granularity="branch")
    model = session.model
    model.units.requires_grad_(False)  # every unit is ZO here: perturbed in place (probe_variance restores flags)
    units = frozenset(u for u, _ in model.unit_items())
    blocks = {block.name: block for block in make_blocks(model, units, cfg)}
    sizes = {b: sum(p.numel() for p in blocks[b].params) for b in BRANCHES}
    zo, fo = ({b: _Welford(sizes[b]) for b in BRANCHES} for _ in range(2))
    cosines = {b: [] for b in BRANCHES}
    for index, (images, labels, tokens) in enumerate(_batches(session, task, batches)):
        fo_grads = _fo_gradients(model, images, labels, tokens)
        objective = ClipObjective(model, images, labels, tokens, units, cfg.zo_chunk or DEFAULT_ZO_CHUNK)
        for branch in BRANCHES:
            fo[branch].add(fo_grads[branch])
            loss = objective.loss_fn(blocks[branch].units)
            for draw in range(draws):
                grads, _ = _estimate(blocks[branch], loss, derive_seed(cfg.seed, "probe", index, draw), cfg)
                zo[branch].add(grads)
                cosines[branch].append(float(F.cosine_similarity(grads, fo_grads[branch], dim=0)))
    return _report(session, cfg, task, batches, draws, queries, blocks, zo, fo, cosines)


# The rules compared per step: the exact FO step, the study's plain and MoZO readings (λ = 1, q = 1), the run's
# configured rule (the default when probing a fresh model), and the two controls.
def _step_rules(cfg: Config) -> dict[str, dict]:
    return {
        "fo-adamw": {"mode": "fo"},
        "zo-plain λ=1": {"zo_rule": "sgd", "normalize": "none", "zo_lr": None, "zo_lr_scale": 1.0, "queries": 1},
        "mozo λ=1": {"zo_rule": "sgd", "normalize": "sign", "zo_lr": None, "zo_lr_scale": 1.0, "queries": 1},
        f"configured ({cfg.zo_rule_name})": {},
        "noise": {"zo_rule": "noise"},
        "random-search": {"zo_rule": "random-search"},
    }


def _step_changes(session: Session, task: int, batches: int, branch: str) -> dict[str, float]:
    """Per rule: train `branch` alone (other branch frozen) from the same θ for `batches` steps at the
    peak learning rate, and average the deterministic loss change each step made on its own batch."""
    model, start = session.model, {k: v.clone() for k, v in session.model.units.state_dict().items()}
    other = "language" if branch == "vision" else "vision"
    changes = {}
    for name, overrides in _step_rules(session.cfg).items():
        model.units.load_state_dict(start)
        mode = overrides.pop("mode", "zo")
        cfg = replace(
            session.cfg,
            **{branch: mode, other: "frozen", "layers": "all", "layers_n": None, "mozo": False},
            **overrides,
        )
        changes[name] = _mean_change(session, Stepper(model, cfg), cfg, task, batches)
    return changes


def _mean_change(session: Session, stepper: Stepper, cfg: Config, task: int, batches: int) -> float:
    devices = [session.device.index or 0] if session.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # FO dropout and gating noise: seeded here, restored after
        torch.manual_seed(derive_seed(cfg.seed, "probe-step"))
        deltas = []
        for index, (images, labels, tokens) in enumerate(_batches(session, task, batches)):
            before = stepper.objective(images, labels, tokens).loss_fn(())()
            stepper.step(images, labels, tokens, cfg.lr, derive_seed(cfg.seed, "probe-step", index))
            deltas.append(stepper.objective(images, labels, tokens).loss_fn(())() - before)
    return sum(deltas) / len(deltas)


def _estimate(block, loss, seed: int, cfg: Config):
    return estimate_flat(block, loss, seed, settings(cfg))  # ĝ (N,): the branch's parameters in order


def _batches(session: Session, task: int, count: int):
    return task_batches(session, task, (session.cfg.seed, task, "probe"), max_steps=count, workers=0)


def _fo_gradients(model: AdaptedCLIP, images, labels, tokens) -> dict[str, torch.Tensor]:
    """Autograd gradient of the batch loss for every adapter, deterministic mode, flat per branch."""
    flat = {}
    for branch in BRANCHES:
        params = [p for (b, _), unit in model.unit_items() if b == branch for p in unit.parameters()]
        flat[branch] = torch.cat([g.flatten() for g in exact_gradient(model, images, labels, tokens, params)])
    return flat


def _report(session, cfg, task, batches, draws, queries, blocks, zo, fo, cosines) -> VarianceReport:
    variances = {b: (zo[b].variance(), fo[b].variance()) for b in BRANCHES}
    # Exactly-zero variances (e.g. gating-noise weights under a deterministic FO pass) stay out of the
    # log histogram; `zero` in each distribution counts them.
    logs = torch.cat([torch.log10(v[v > 0]) for pair in variances.values() for v in pair])
    edges = torch.linspace(float(logs.min()), float(logs.max()) + 1e-9, HIST_BINS + 1)
    branches = []
    for branch in BRANCHES:
        zo_var, fo_var = variances[branch]
        branches.append(
            BranchVariance(
                branch,
                zo_var.numel(),
                cfg.eps_for(branch),
                _distribution(zo_var, edges),
                _distribution(fo_var, edges),
                sum(cosines[branch]) / len(cosines[branch]),
                _per_layer(session.model, blocks[branch], zo_var, fo_var),
            )
        )
    vision, language = branches
    ratio = {
        "zo_mean": vision.zo.mean / language.zo.mean,
        "zo_median": vision.zo.median / language.zo.median,
        "fo_mean": vision.fo.mean / language.fo.mean if language.fo.mean else float("nan"),
    }
    return VarianceReport(
        session.cfg.model,
        session.cfg.adapter,
        session.bench.name,
        task,
        batches,
        draws,
        queries,
        cfg.estimator,
        cfg.seed,
        [round(float(e), 4) for e in edges],
        tuple(branches),
        ratio,
    )


def _distribution(var: torch.Tensor, edges: torch.Tensor) -> Distribution:
    quantiles = (
        torch.quantile(var.float(), torch.tensor(QUANTILES)).tolist()
        if var.numel() <= 2**24
        else [float(var.kthvalue(max(1, int(q * var.numel()))).values) for q in QUANTILES]
    )
    counts = torch.histogram(torch.log10(var[var > 0]).float(), bins=edges.float()).hist
    named = {f"q{int(q * 100):02d}": v for q, v in zip(QUANTILES, quantiles)}
    return Distribution(float(var.mean()), float(var.median()), named, [int(c) for c in counts], int((var == 0).sum()))


def _per_layer(model: AdaptedCLIP, block, zo_var: torch.Tensor, fo_var: torch.Tensor) -> dict[int, dict[str, float]]:
    layers, offset = {}, 0
    for unit in block.units:
        n = sum(p.numel() for p in model.unit(unit).parameters())
        layers[unit[1]] = {
            "zo_mean": float(zo_var[offset : offset + n].mean()),
            "fo_mean": float(fo_var[offset : offset + n].mean()),
        }
        offset += n
    return layers

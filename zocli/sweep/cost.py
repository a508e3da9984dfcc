"""A run's cost before it runs (`sweep --dry-run`): forwards per step × steps, the unit `train` reports
as `forwards_per_step` (a loss evaluation; the FO forward + backward counts one). An estimate: ZO runs
cost several FO runs (on the test-bed 330-475 s against 82 s), and this says by how much before a
grid is launched."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from zocli.config import Config
from zocli.data import catalogue, location
from zocli.resolve import resolve

# Blocks per tower by model family, for --granularity layer (the model is not built for an estimate).
DEPTHS = {"zocli-tiny": 4, "ViT-B": 12, "ViT-L": 24, "ViT-H": 32}


@dataclass(frozen=True)
class Cost:
    forwards_per_step: int
    steps: int | None  # every task's steps; None when the data is not prepared yet (unknown size)

    @property
    def forwards(self) -> int | None:
        return None if self.steps is None else self.forwards_per_step * self.steps


def forwards_per_step(cfg: Config) -> int:
    """Loss evaluations per step: the FO pass, then per ZO block q (two-sided: 2q; one-sided: q + 1)
    estimate forwards and, when conservative, the two candidate losses."""
    fo = int(any(getattr(cfg, b) == "fo" for b in ("vision", "language")) or cfg.layers != "all")
    branches = cfg.zo_branches
    if not branches:
        return max(fo, 1)
    if cfg.granularity == "joint":
        blocks = 1
    elif cfg.granularity == "layer":
        depth = next((d for prefix, d in DEPTHS.items() if cfg.model.startswith(prefix)), 12)
        per = depth if cfg.layers == "all" else (cfg.layers_n or depth // 2)
        blocks = per * len(branches)
    else:
        blocks = len(branches)
    control = cfg.zo_rule in ("noise", "random-search")
    estimate = 0 if control else (2 * cfg.queries if cfg.estimator == "two-sided" else cfg.queries + 1)
    return fo + blocks * (estimate + (2 if cfg.conservative else 0))


def steps(cfg: Config, data_root: str | None) -> int | None:
    """Steps over every task, from the prepared copy's training-set size (None if not prepared)."""
    from zocli.data.store import prepared_sizes

    bench = location.benchmark(cfg) if catalogue.is_user(cfg.benchmark) else catalogue.get(cfg.benchmark)
    split = catalogue.split(bench, cfg.inc, cfg.base)
    root = Path(data_root or cfg.data_root).expanduser()
    sizes = prepared_sizes(bench.name, root)
    if not sizes or "train" not in sizes:
        return None
    per_class = sizes["train"] / bench.n_classes
    total = 0
    for classes in split.sizes:
        n = math.ceil(per_class * classes / cfg.batch_size) * cfg.epochs
        total += min(n, cfg.max_steps) if cfg.max_steps else n
    return total


def estimate(presets: tuple[str, ...], flags: dict, data_root: str | None) -> Cost:
    cfg = resolve(list(presets), dict(flags)).config
    try:
        known = steps(cfg, data_root)
    except Exception:  # a user benchmark not prepared, a damaged copy: the cost is unknown, not an error
        known = None
    return Cost(forwards_per_step(cfg), known)

"""Statistics over seeds: runs whose configs differ only by seed form a group; each group gets the mean,
sample standard deviation and n of Last, Avg, forgetting, BWT, wall time and peak memory, a mean accuracy
curve with its spread, and the paper's figures when the group is a published cell.

Only finished runs count (a partial run's "Last" is the accuracy after fewer tasks: not comparable);
`runs` still names every run of the group.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Any

from zocli.config import KEYS, PLACE_KEYS
from zocli.study import naming
from zocli.study.compare import Comparison, RunRow
from zocli.study.paper import published

METRICS = ("last", "avg", "forgetting", "bwt", "wall_seconds", "peak_memory_bytes")


@dataclass(frozen=True)
class Stat:
    mean: float | None
    std: float | None  # sample standard deviation; None below two values
    n: int


@dataclass(frozen=True)
class Group:
    config: dict[str, Any]  # the values of the keys that differ between groups
    runs: tuple[str, ...]
    seeds: tuple[int, ...]  # of the finished runs
    stats: dict[str, Stat]
    mean_curve: list[float]  # seen accuracy after each task, mean over the finished runs
    std_curve: list[float]
    zero_shot_curve: list[float] | None  # the untouched model on the seen classes (mean over runs), where known
    paper: dict[str, Any] | None  # {"presets", "last", "avg"} of the matching published cell
    name: str = ""  # what was run, by its presets or its flags (naming.names)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config,
            "runs": list(self.runs),
            "seeds": list(self.seeds),
            "n": len(self.seeds),
            **{k: {"mean": s.mean, "std": s.std, "n": s.n} for k, s in self.stats.items()},
            "mean_curve": self.mean_curve,
            "std_curve": self.std_curve,
            "zero_shot_curve": self.zero_shot_curve,
            "paper": self.paper,
        }


@dataclass(frozen=True)
class Grouped:
    differing: tuple[str, ...]  # config keys that differ between groups (never the seed)
    groups: tuple[Group, ...]

    @property
    def repeated(self) -> bool:
        """Whether any configuration ran with more than one seed (then a grouped table says more)."""
        return any(len(g.runs) > 1 for g in self.groups)

    def as_dict(self) -> dict[str, Any]:
        return {"differing": list(self.differing), "groups": [g.as_dict() for g in self.groups]}


def identity(config: dict[str, Any]) -> tuple:
    """What a run is, apart from its seed and where it ran."""
    return tuple(repr(config.get(k)) for k in KEYS if k not in PLACE_KEYS and k != "seed")


def group(comparison: Comparison) -> Grouped:
    members: dict[tuple, list[RunRow]] = {}
    for row in comparison.rows:  # first-seen order: the order the runs were given in
        members.setdefault(identity(row.config), []).append(row)
    differing = tuple(k for k in comparison.differing if k != "seed")
    groups = [_group(rows, differing) for rows in members.values()]
    entries = [(rows[0].config, rows[0].presets, _flagged(rows)) for rows in members.values()]
    labels = naming.names(entries, differing)
    return Grouped(differing, tuple(replace(g, name=n) for g, n in zip(groups, labels)))


def _flagged(rows: list[RunRow]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for r in rows for k in r.flagged))


def _group(rows: list[RunRow], differing: tuple[str, ...]) -> Group:
    done = [r for r in rows if r.tasks_done == r.tasks_total and r.last is not None]
    stats = {key: _stat([getattr(r, key) for r in done if getattr(r, key) is not None]) for key in METRICS}
    curves = [r.seen_accuracy for r in done]
    mean_curve = (
        [round(statistics.fmean(c[t] for c in curves), 2) for t in range(min(map(len, curves)))] if curves else []
    )
    std_curve = [
        round(statistics.stdev(c[t] for c in curves), 2) if len(curves) > 1 else 0.0 for t in range(len(mean_curve))
    ]
    shots = [r.zero_shot_curve for r in done if r.zero_shot_curve]
    zero_shot = [round(statistics.fmean(s[t] for s in shots), 2) for t in range(len(mean_curve))] if shots else None
    config = rows[0].config
    return Group(
        {k: config.get(k) for k in differing},
        tuple(r.run for r in rows),
        tuple(r.config.get("seed") for r in done),
        stats,
        mean_curve,
        std_curve,
        zero_shot,
        published(config, PLACE_KEYS),
    )


def _stat(values: list[float]) -> Stat:
    if not values:
        return Stat(None, None, 0)
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), std, len(values))

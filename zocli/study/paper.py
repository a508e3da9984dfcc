"""The study's published Last / Avg (arXiv 2506.12409, MoE adapters on ViT-B/16), by the presets that
reproduce each cell: `zocli train --preset BENCHMARK --preset METHOD`. The README's "Reproduce the paper"
table lists the same figures. The "best layer-wise" cells name a scheme per metric, so some methods carry
only Last or only Avg.
"""

from __future__ import annotations

from typing import Any

from zocli.config import ConfigError
from zocli.resolve import resolve

_BRANCHES = ("fo", "dual-zo", "vision-zo", "language-zo")
_TABLE = {  # benchmark preset -> the four branch-wise rows (Last, Avg), then the other published cells
    "cifar100-inc10": (
        [(80.47, 86.97), (69.29, 77.36), (76.05, 83.93), (80.94, 87.00)],
        {
            "vision-hop-even": (82.41, None),
            "language-hop-odd": (None, 88.51),
            "dual-hop-even": (79.12, 86.81),
            "dual-hop-even-mozo": (79.87, 87.25),
        },
    ),
    "tinyimg-inc10": (
        [(77.52, 85.21), (67.64, 75.88), (72.98, 82.08), (76.74, 85.03)],
        {"vision-hop-odd": (79.39, None), "language-hop-odd": (None, 87.05)},
    ),
    "tinyimg-inc20": (
        [(52.13, 60.55), (42.40, 47.64), (49.65, 57.90), (49.14, 58.69)],
        {"vision-hop-even": (52.27, 60.98), "dual-hop-even": (51.95, 60.53), "dual-hop-even-mozo": (52.46, 61.23)},
    ),
    "imgr-inc20": (
        [(65.36, 71.53), (58.56, 65.92), (62.54, 69.84), (64.38, 70.38)],
        {
            "vision-hop-odd": (65.68, None),
            "language-hop-even": (None, 72.16),
            "dual-hop-even": (64.99, 71.29),
            "dual-hop-even-mozo": (65.80, 71.82),
        },
    ),
}
PUBLISHED: dict[tuple[str, str], tuple[float | None, float | None]] = {
    (bench, method): value
    for bench, (rows, others) in _TABLE.items()
    for method, value in [*zip(_BRANCHES, rows), *others.items()]
}


def published(config: dict[str, Any], ignore: tuple[str, ...]) -> dict[str, Any] | None:
    """The paper's cell whose presets resolve to `config` (keys in `ignore` and the seed aside), if any."""
    for (bench, method), (last, avg) in PUBLISHED.items():
        try:
            cell = resolve([bench, method]).config.as_dict()
        except ConfigError:  # a preset renamed or removed: no match, rather than a failed comparison
            continue
        if all(cell[k] == config.get(k) for k in cell if k not in ignore and k != "seed"):
            return {"presets": f"{bench} + {method}", "last": last, "avg": avg}
    return None

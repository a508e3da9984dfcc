"""Which adapter units are zeroth-order: the (branch, layer) plan of DESIGN §6.

Layers are 1-based, as in the paper: hop-odd on a 12-layer tower makes layers 1, 3, ..., 11 ZO.
"""

from __future__ import annotations

from zocli.config import BRANCHES, Config, ConfigError

Unit = tuple[str, int]  # (branch, 1-based layer)


def zo_layers(scheme: str, n_layers: int, n: int | None = None) -> tuple[int, ...]:
    """The ZO layers of one ZO tower of `n_layers` blocks under a layer scheme."""
    size = n_layers // 2 if n is None else n
    if scheme in ("prefix", "suffix") and not 1 <= size <= n_layers:
        raise ConfigError(f"--layers-n must be between 1 and {n_layers} for this model, got {size}")
    chosen = {
        "all": lambda k: True,
        "hop-odd": lambda k: k % 2 == 1,
        "hop-even": lambda k: k % 2 == 0,
        "prefix": lambda k: k <= size,
        "suffix": lambda k: k > n_layers - size,
    }[scheme]
    return tuple(k for k in range(1, n_layers + 1) if chosen(k))


def zo_units(cfg: Config, depth: dict[str, int]) -> frozenset[Unit]:
    """All ZO units of a model whose towers have `depth[branch]` blocks."""
    return _units(cfg, cfg.zo_branches, depth)


def frozen_units(cfg: Config, depth: dict[str, int]) -> frozenset[Unit]:
    """The units a `frozen` control branch takes out of training: the same --layers selection as ZO."""
    return _units(cfg, cfg.frozen_branches, depth)


def _units(cfg: Config, branches: tuple[str, ...], depth: dict[str, int]) -> frozenset[Unit]:
    return frozenset(
        (branch, layer) for branch in branches for layer in zo_layers(cfg.layers, depth[branch], cfg.layers_n)
    )


def describe(units: frozenset[Unit], depth: dict[str, int]) -> dict[str, list[int]]:
    """{branch: sorted ZO layers}, the form recorded in checkpoints and config.json."""
    return {b: sorted(k for (br, k) in units if br == b) for b in BRANCHES if b in depth}

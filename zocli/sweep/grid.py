"""A sweep's grid: train configurations × seeds, from `--grid`/`--seeds` or a TOML file, expanded into named runs.

Every configuration is resolved and checked here, so a bad value is a usage error before any run starts. Where
the runs live and what state they are in is `directory`; launching them (local queue, SLURM) is `launch`.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zocli.config import KEYS, OPTIONS, Config, ConfigError, did_you_mean
from zocli.data import catalogue
from zocli.flags import NONE_GIVEN
from zocli.resolve import resolve, suggest_key

MAX_RUNS = 10_000  # configurations × seeds of one sweep: more is a typo (0-9999999), not a plan


@dataclass(frozen=True)
class RunSpec:
    name: str
    presets: tuple[str, ...]
    flags: dict[str, Any]  # config keys -> values, the seed among them

    def train_args(self) -> list[str]:
        """`zocli train` arguments that give this run its config (without --out)."""
        args = [arg for preset in self.presets for arg in ("--preset", preset)]
        return args + [arg for key, value in self.flags.items() for arg in OPTIONS[key].argv(value)]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "presets": list(self.presets), "flags": self.flags}


@dataclass(frozen=True)
class Grid:
    """What the user asked for: base presets, axes (key -> values; "preset" adds presets) and seeds."""

    presets: tuple[str, ...] = ()
    axes: dict[str, list[Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)


def parse_value(key: str, text: str) -> Any:
    """A `--grid` value as its config field's type (`none` for an unset optional)."""
    if key == "preset":
        return text
    try:
        return OPTIONS[key].parse(text)
    except ValueError as exc:
        raise ConfigError(f"--grid {key}={text}: {exc}") from None


def parse_axes(items: list[str]) -> dict[str, list[Any]]:
    """Repeated `--grid key=v1,v2` as {key: [values]}; a key given twice is an error."""
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values:
            raise ConfigError(f"--grid {item!r}: write KEY=V1,V2,... (e.g. --grid lr=1e-3,3e-3)")
        _check_key(key, "--grid")
        if key in axes:
            raise ConfigError(f"--grid {key} is given twice; list every value in one --grid {key}=...")
        axes[key] = [parse_value(key, v.strip()) for v in values.split(",")]
    return axes


def parse_seeds(text: str) -> tuple[int, ...]:
    """`0-4`, `0,2,7` or `3` as seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            span = range(int(first), int(last or first) + 1)
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: write a range (0-4) or a list (0,2,7)") from None
        if len(seeds) + len(span) > MAX_RUNS:
            raise ConfigError(f"--seeds {text!r}: more than {MAX_RUNS} seeds; a sweep holds at most {MAX_RUNS} runs")
        seeds += span
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: no seeds, or a seed repeated")
    return tuple(seeds)


def load_grid(path: Path) -> Grid:
    """A TOML grid: `presets = [...]`, `seeds = "0-4"`, fixed keys at the top, axes under `[grid]`."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"grid file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    presets = raw.pop("presets", raw.pop("preset", []))
    seeds = raw.pop("seeds", None)
    table = raw.pop("grid", {})
    axes = {}
    for key, values in [*raw.items(), *table.items()]:
        key = key.replace("-", "_")
        _check_key(key, f"grid file {Path(path).name}:")
        axes[key] = list(values) if isinstance(values, list) else [values]
    seeds = parse_seeds(str(seeds)) if isinstance(seeds, (str, int)) else tuple(seeds) if seeds else (0,)
    return Grid(tuple([presets] if isinstance(presets, str) else presets), axes, seeds)


def _check_key(key: str, where: str) -> None:
    if key != "preset" and key not in KEYS:
        raise ConfigError(f"{where} unknown key {key!r}{suggest_key(key) or did_you_mean(key, (*KEYS, 'preset'))}")
    if key in ("seed", "data_root"):
        raise ConfigError(
            f"{where} {key} is not a grid key: use --seeds"
            if key == "seed"
            else f"{where} data_root is where data live, not a grid key: use --data-root"
        )


def expand(grid: Grid) -> list[RunSpec]:
    """Every combination of the axes (in the order given), for every seed; each config is validated here,
    so a bad value is a usage error before any run starts. Names hold the values that vary."""
    keys = list(grid.axes)
    varying = [k for k in keys if len(grid.axes[k]) > 1]
    total = len(grid.seeds)
    for k in keys:
        total *= len(grid.axes[k])
    if total > MAX_RUNS:
        raise ConfigError(f"the grid has {total} runs (configurations × seeds); a sweep holds at most {MAX_RUNS}")
    runs = []
    for combo in itertools.product(*(grid.axes[k] for k in keys)):
        values = dict(zip(keys, combo))
        extra = tuple(p for p in str(values.pop("preset", "")).split("+") if p)
        for seed in grid.seeds:
            flags = {**values, "seed": seed}
            cfg = resolve([*grid.presets, *extra], _as_given(flags)).config
            if not catalogue.is_user(cfg.benchmark):  # the user's classes are known once prepared: the run checks
                catalogue.split(catalogue.get(cfg.benchmark), cfg.inc, cfg.base)  # as `train` checks first
            _check_layers(cfg)
            label = [
                _slug(str(values.get(k, "+".join(extra))) if k == "preset" else f"{k}-{_slug(str(values[k]))}")
                for k in varying
            ]
            runs.append(RunSpec("_".join([*label, f"s{seed}"]), (*grid.presets, *extra), flags))
    names = [run.name for run in runs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # e.g. lr=0.001,1e-3: the same value twice
        raise ConfigError(f"the grid names two runs {twice[0]!r}: a value is listed twice")
    return runs


def _as_given(flags: dict[str, Any]) -> dict[str, Any]:
    # a None in the grid is `none` on the run's command line: it clears what a preset set
    return {key: NONE_GIVEN if value is None else value for key, value in flags.items()}


def _check_layers(cfg: Config) -> None:
    """--layers-n against the model's depth, as `train` would find only after a run started."""
    if cfg.layers_n is None:
        return
    from zocli.method import backbone
    from zocli.method.plan import frozen_units, zo_units

    depth = backbone.declared_depths(cfg.model, cfg.pretrained)
    if all(isinstance(v, int) for v in depth.values()):
        zo_units(cfg, depth), frozen_units(cfg, depth)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"

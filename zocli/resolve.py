"""Where a run's Config comes from: the shipped TOML presets, explicit flags, and a saved run's config.

Precedence (DESIGN §1): built-in defaults < presets in the order given < explicit flags; each value keeps its
source. Presets may spell keys either way (`batch-size` or `batch_size`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from zocli.config import KEYS, MOZO_EPS_VISION, OPTIONS, Config, ConfigError, did_you_mean
from zocli.flags import given

# Spellings other tools use for our keys: suggested (not accepted, so config.json has one spelling)
# where string similarity would guess wrong ("learning_rate" is closest to "language").
KEY_ALIASES = {
    "learning_rate": "lr",
    "wd": "weight_decay",
    "bs": "batch_size",
    "batch": "batch_size",
    "num_epochs": "epochs",
    "n_epochs": "epochs",
    "warmup": "warmup_steps",
    "epsilon": "eps",
    "num_queries": "queries",
    "q": "queries",
    "num_workers": "workers",
    "dataset": "benchmark",
    "increment": "inc",
    "rank": "lora_rank",
    "alpha": "lora_alpha",
    "template": "prompt",
}


def suggest_key(key: str) -> str:
    """' (did you mean X?)' for an unknown config key: a known alias first, else the closest key."""
    return f" (did you mean {KEY_ALIASES[key]!r}?)" if key in KEY_ALIASES else did_you_mean(key, KEYS)


@dataclass(frozen=True)
class Resolved:
    config: Config
    sources: dict[str, str] = field(default_factory=dict)  # key -> "default" | "preset:NAME" | "flag" | "mozo"
    presets: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"config": self.config.as_dict(), "sources": self.sources, "presets": list(self.presets)}


PRESETS_DIR = Path(str(resources.files("zocli"))) / "presets"  # package data: the same in a checkout and a wheel


def list_presets() -> dict[str, Path]:
    """The shipped presets by name."""
    return {path.stem: path for path in sorted(PRESETS_DIR.glob("*.toml"))}


def preset_path(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"preset file {path} does not exist")
        return path
    shipped = list_presets()
    if name_or_path not in shipped:
        raise ConfigError(f"unknown preset {name_or_path!r}{did_you_mean(name_or_path, shipped)}")
    return shipped[name_or_path]


def load_preset(name_or_path: str) -> dict[str, Any]:
    path = preset_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"preset {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"preset {path} cannot be read: {exc.strerror}") from None
    values = {key.replace("-", "_"): value for key, value in raw.items()}
    for key in values:
        if key not in KEYS:
            raise ConfigError(f"unknown key {key!r} in preset {path.name}{suggest_key(key)}")
    return values


def resolve(presets: list[str] | tuple[str, ...] = (), flags: dict[str, Any] | None = None) -> Resolved:
    """Merge defaults, presets (in order) and explicit flags into a validated Config.

    A flag of None was left out; NONE_GIVEN (`--layers-n none`) sets None over the presets."""
    values: dict[str, Any] = {}
    sources = dict.fromkeys(KEYS, "default")
    for name in presets:
        for key, value in load_preset(name).items():
            values[key], sources[key] = value, f"preset:{name}"
    for key, value in given(flags or {}).items():
        if key not in KEYS:
            raise ConfigError(f"unknown option {key!r}{suggest_key(key)}")
        values[key], sources[key] = value, "flag"
    _apply_mozo(values, sources)
    _absolute_paths(values)
    values = {
        k: float(v) if OPTIONS[k].kind is float and isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in values.items()
    }
    return Resolved(Config(**values), sources, tuple(presets))


def _apply_mozo(values: dict[str, Any], sources: dict[str, str]) -> None:
    # --mozo is shorthand: it fills the pieces the user did not set themselves.
    if not values.get("mozo"):
        return
    for key, implied in (("normalize", "sign"), ("eps_vision", MOZO_EPS_VISION)):
        if sources[key] == "default":
            values[key], sources[key] = implied, "mozo"


def _absolute_paths(values: dict[str, Any]) -> None:
    # A run names its data by these paths: absolute, so `eval` and `--resume` find them from any directory.
    bench = values.get("benchmark")
    if isinstance(bench, str) and bench.startswith("folder:"):
        values["benchmark"] = "folder:" + str(Path(bench.removeprefix("folder:")).expanduser().resolve())
    elif isinstance(bench, str) and bench.startswith("hf:") and Path(bench[3:]).expanduser().exists():
        values["benchmark"] = "hf:" + str(Path(bench[3:]).expanduser().resolve())
    order = values.get("class_order")
    if isinstance(order, str) and not order.startswith("seed:"):
        values["class_order"] = str(Path(order).expanduser().resolve())


def saved_config(values: Any) -> Config:
    """The Config a run saved (config.json's `config`, or a checkpoint's); a ConfigError says what is wrong."""
    if not isinstance(values, dict):
        raise ConfigError(f"the saved config is not a JSON object but {type(values).__name__}")
    unknown = set(values) - set(KEYS)
    if unknown:
        raise ConfigError(f"saved config has unknown keys {sorted(unknown)} (written by a newer zocli?)")
    # Runs from before --input-pipeline decoded and cropped on the CPU: read back, they keep doing so.
    return Config(**{"input_pipeline": "cpu", **values})

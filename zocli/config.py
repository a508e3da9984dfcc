"""The run configuration: one frozen dataclass, TOML presets, and flag overrides with provenance.

Precedence (DESIGN §1): built-in defaults < presets in the order given < explicit flags. Keys are the
flag names with underscores (`batch_size` is `--batch-size`); presets may spell them either way.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

BRANCH_MODES = ("fo", "zo", "frozen")
ZO_RULES = ("sgd", "adam", "noise", "random-search")
LAYER_SCHEMES = ("all", "hop-odd", "hop-even", "prefix", "suffix")
BRANCHES = ("vision", "language")
TRACKERS = ("tensorboard", "wandb")
DEFAULT_LOG_EVERY = 50  # per-step records when --report-to is given without --log-every
PRECISIONS = ("fp32", "tf32", "bf16")  # backbone matmuls (zocli.method.precision)
MOZO_EPS_VISION = 5e-4  # MoZO only asks eps_vision < eps_language: half the default ε is a starting point


class ConfigError(ValueError):
    """A usage error in the configuration: the CLI reports it in one line and exits 2."""


@dataclass(frozen=True)
class Config:
    # benchmark and protocol (DESIGN §4-5)
    benchmark: str = "cifar100"  # a shipped name, folder:DIR or hf:ID (prepared with `zocli prepare`)
    class_order: str | None = None  # FILE (a JSON list of classes) or seed:N; None: the benchmark's own order
    inc: int = 10  # classes per task after the first
    base: int | None = None  # classes in task 0; None means `inc`
    prompt: str = "a bad photo of a {}."
    data_root: str = "~/.cache/zocli"
    # model (DESIGN §3)
    model: str = "ViT-B-16"  # ViT-B-16 means open_clip's ViT-B-16-quickgelu, as the OpenAI weights need
    pretrained: str = "openai"  # openai | PATH | local-dir:DIR | none
    adapter: Literal["moe", "lora"] = "moe"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    # first-order optimisation, the MoE-Adapters baseline
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 30  # linear warm-up, then cosine to 0, restarted every task
    max_steps: int | None = None  # cap on steps per task, for smoke runs; None trains full epochs
    # zeroth-order units (DESIGN §6)
    vision: Literal["fo", "zo", "frozen"] = "fo"  # frozen: the --layers units are neither trained nor perturbed
    language: Literal["fo", "zo", "frozen"] = "fo"
    layers: Literal["all", "hop-odd", "hop-even", "prefix", "suffix"] = "all"
    layers_n: int | None = None  # size of prefix/suffix; None means half the tower
    mozo: bool = False  # sign normalisation + eps_vision < eps_language
    normalize: Literal["none", "sign"] = "none"
    eps: float = 1e-3
    eps_vision: float | None = None  # None: `eps` (or 5e-4 with --mozo)
    eps_language: float | None = None  # None: `eps`
    estimator: Literal["one-sided", "two-sided"] = "two-sided"  # same cost at q=1, 3x more accurate
    # q directions per estimate (2q forwards per ZO block): with ZO-Adam, q = 8 learned most on the test-bed
    # for dual ZO, also against q = 1 given the same forwards as more epochs (README, "Does ZO learn?")
    queries: int = 8
    conservative: bool = True  # keep the best of {θ, θ-ηu, θ+ηu} on the step's batch
    # What turns ĝ into the step u. ZO-Adam at λ = 3 learned most on the test-bed (README, "Does ZO learn?");
    # plain sgd at λ = 1 is an SGD step at AdamW's learning rate in expectation: hundreds of times too small.
    zo_rule: Literal["sgd", "adam", "noise", "random-search"] = "adam"
    zo_lr: float | None = None  # absolute peak ZO learning rate; None: λ · lr
    zo_lr_scale: float = 3.0  # λ: ZO step = λ · FO learning rate (when --zo-lr is unset)
    probe_every: int = 0  # every N steps log cos(ZO update, exact FO gradient of the ZO units); 0: off
    granularity: Literal["branch", "joint", "layer"] = "branch"
    zo_chunk: int | None = None  # ZO micro-batch; None picks one that bounds activation memory
    # execution
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int | None = None  # data-loading processes; None: 0 on CPU, up to 8 on CUDA
    eval_batch_size: int = 256
    eval_future: bool = False  # also evaluate the tasks not trained yet: the matrix's upper triangle
    # backbone matmuls: of the FO passes and evaluation, and of the ZO forwards (README, "Precision");
    # auto: the fastest the finite-difference fidelity check passes on the first batch (fp32 on a CPU)
    precision: Literal["fp32", "tf32", "bf16"] = "fp32"
    zo_precision: Literal["auto", "fp32", "tf32", "bf16"] = "auto"
    # where images are cropped and resized: cpu workers, or on the device in batches (small-image benchmarks);
    # auto: device on CUDA for cifar100/tinyimg/testbed/digits, else cpu
    input_pipeline: Literal["auto", "cpu", "device"] = "auto"
    save_every: int = 0  # commit a resumable mid-task state every N steps (0: task ends only)
    # tracking: what is watched, never what a run is (comparisons and seed groups ignore it)
    report_to: str = ""  # comma-separated trackers: tensorboard, wandb
    log_every: int | None = None  # per-step records every N steps; None: 50 with --report-to, else off

    @property
    def trackers(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.report_to.split(",") if name.strip())

    @property
    def log_interval(self) -> int:
        """Steps between per-step records (0: none)."""
        if self.log_every is not None:
            return self.log_every
        return DEFAULT_LOG_EVERY if self.trackers else 0

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def zo_branches(self) -> tuple[str, ...]:
        return tuple(b for b in BRANCHES if getattr(self, b) == "zo")

    @property
    def frozen_branches(self) -> tuple[str, ...]:
        return tuple(b for b in BRANCHES if getattr(self, b) == "frozen")

    @property
    def zo_rule_name(self) -> str:
        """The ZO update rule as runs, tables and checkpoints name it: sgd, sign-sgd, adam, sign-adam,
        noise, random-search (the two controls ignore --normalize)."""
        if self.zo_rule in ("noise", "random-search") or not self.sign:
            return self.zo_rule
        return f"sign-{self.zo_rule}"

    def zo_lr_at(self, fo_lr: float) -> float:
        """The ZO step size when the FO schedule is at `fo_lr`: the same warm-up and cosine shape."""
        return fo_lr * (self.zo_lr / self.lr if self.zo_lr is not None else self.zo_lr_scale)

    @property
    def sign(self) -> bool:
        return self.normalize == "sign"

    def eps_for(self, branch: str) -> float:
        explicit = self.eps_vision if branch == "vision" else self.eps_language
        return self.eps if explicit is None else explicit

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _validate(cfg: Config) -> None:
    for f in fields(cfg):
        _check_type(f.name, getattr(cfg, f.name), f.type)
    for name in (
        "inc",
        "epochs",
        "batch_size",
        "queries",
        "eval_batch_size",
        "lora_rank",
        "base",
        "max_steps",
        "layers_n",
        "zo_chunk",
    ):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{_flag(name)} must be a positive integer, got {value}")
    for name in ("eps", "eps_vision", "eps_language", "lr", "zo_lr"):
        value = getattr(cfg, name)
        if value is not None and not 0 < value < math.inf:
            raise ConfigError(f"--{_flag(name)} must be > 0 and finite, got {value}")
    if not all(math.isfinite(v) for v in (cfg.zo_lr_scale, cfg.weight_decay, cfg.lora_alpha)):
        raise ConfigError("--zo-lr-scale, --weight-decay and --lora-alpha must be finite")
    if (
        min(cfg.zo_lr_scale, cfg.weight_decay, cfg.warmup_steps, cfg.save_every, cfg.probe_every, cfg.log_every or 0)
        < 0
    ):
        raise ConfigError(
            "--zo-lr-scale, --weight-decay, --warmup-steps, --save-every, --probe-every and --log-every must be >= 0"
        )
    unknown = [name for name in cfg.trackers if name not in TRACKERS]
    if unknown:
        raise ConfigError(
            f"--report-to {unknown[0]!r} is not a tracker; use {' and/or '.join(TRACKERS)}, "
            f"comma-separated{did_you_mean(unknown[0], TRACKERS)}"
        )
    if cfg.layers != "all" and not (cfg.zo_branches or cfg.frozen_branches):
        raise ConfigError(
            f"--layers {cfg.layers} selects ZO (or frozen) layers, but no branch is ZO: "
            f"add --vision zo and/or --language zo"
        )
    if cfg.layers_n is not None and cfg.layers not in ("prefix", "suffix"):
        raise ConfigError("--layers-n only applies to --layers prefix or suffix")
    if cfg.mozo and not cfg.zo_branches:
        raise ConfigError("--mozo changes the ZO update, but no branch is ZO: add --vision zo and/or --language zo")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N; got {cfg.device!r}")
    if (
        cfg.class_order is not None
        and cfg.class_order.startswith("seed:")
        and not re.fullmatch(r"seed:\d+", cfg.class_order)
    ):
        raise ConfigError(
            f"--class-order must be FILE (a JSON list) or seed:N with N an integer, got {cfg.class_order!r}"
        )
    if "{}" not in cfg.prompt:
        raise ConfigError(f"--prompt must contain '{{}}' where the class name goes, got {cfg.prompt!r}")
    try:
        cfg.prompt.format("x")
    except (IndexError, KeyError, ValueError):  # a stray brace, or a second {} with no name for it
        raise ConfigError(
            f"--prompt must hold exactly one {{}} (write other braces as {{{{ and }}}}), got {cfg.prompt!r}"
        ) from None
    _check_ranges(cfg)


# Counts past this are typos, and torch or the DataLoader overflow on them with a traceback.
MAX_COUNT = 2**31 - 1


def _check_ranges(cfg: Config) -> None:
    if cfg.workers is not None and cfg.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {cfg.workers}")
    if not 0 <= cfg.seed < 2**63:
        raise ConfigError(f"--seed must be between 0 and 2**63 - 1, got {cfg.seed}")
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name != "seed" and type(value) is int and value > MAX_COUNT:
            raise ConfigError(f"--{_flag(f.name)} must be at most {MAX_COUNT}, got {value}")


def _check_type(name: str, value: Any, annotation: Any) -> None:
    kind = eval(annotation, {"Literal": Literal}) if isinstance(annotation, str) else annotation
    options = [a for a in get_args(kind) if a is not type(None)]
    if value is None and type(None) in get_args(kind):
        return
    if get_origin(kind) is Literal:
        if value not in options:
            raise ConfigError(f"--{_flag(name)} must be one of {', '.join(map(str, options))}; got {value!r}")
        return
    expected = options[0] if options else kind
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"--{_flag(name)} must be {expected.__name__}, got {value!r}")


def _flag(name: str) -> str:
    return name.replace("_", "-")


KEYS = tuple(f.name for f in fields(Config))
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


# ----------------------------------------------------------------------------------------------
# presets and resolution


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
    """Merge defaults, presets (in order) and explicit flags into a validated Config."""
    values: dict[str, Any] = {}
    sources = dict.fromkeys(KEYS, "default")
    for name in presets:
        for key, value in load_preset(name).items():
            values[key], sources[key] = value, f"preset:{name}"
    for key, value in (flags or {}).items():
        if key not in KEYS:
            raise ConfigError(f"unknown option {key!r}{suggest_key(key)}")
        if value is not None:
            values[key], sources[key] = value, "flag"
    _apply_mozo(values, sources)
    _absolute_paths(values)
    values = {
        k: float(v) if _is_float_field(k) and isinstance(v, int) and not isinstance(v, bool) else v
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


def _is_float_field(key: str) -> bool:
    annotation = {f.name: f.type for f in fields(Config)}[key]
    return "float" in str(annotation)


def did_you_mean(word: str, options) -> str:
    """' (did you mean X?)' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def from_json(text: str) -> Config:
    """Rebuild a Config from the JSON saved in config.json or a checkpoint's metadata."""
    data = json.loads(text)
    data = data.get("config", data)
    unknown = set(data) - set(KEYS)
    if unknown:
        raise ConfigError(f"saved config has unknown keys {sorted(unknown)} (written by a newer zocli?)")
    return Config(**data)

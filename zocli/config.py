"""The run configuration: one frozen dataclass, its fields the train flags, checked when it is made.

Keys are the flag names with underscores (`batch_size` is `--batch-size`). Where a Config's values come from
(defaults, presets, flags, a saved run) is `zocli.resolve`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_origin

from zocli.errors import UsageError
from zocli.flags import flag, options

BRANCHES = ("vision", "language")
TRACKERS = ("tensorboard", "wandb")
DEFAULT_LOG_EVERY = 50  # per-step records when --report-to is given without --log-every
PRECISIONS = ("fp32", "tf32", "bf16")  # backbone matmuls (zocli.method.precision)
MOZO_EPS_VISION = 5e-4  # MoZO only asks eps_vision < eps_language: half the default ε is a starting point
DEFAULT_ZO_CHUNK = 32  # images per no-grad ZO forward: bounds activation memory at any batch size
CUDA_WORKERS = 8  # data-loading processes on CUDA without --workers (at most the cores)
DEFAULT_DATA_ROOT = "~/.cache/zocli"
DATA, MODEL, OPTIMISATION, ZO, EXECUTION, TRACKING = (
    "Data",
    "Model",
    "Optimisation",
    "Zeroth order",
    "Execution",
    "Tracking",
)  # the panels of --help


class ConfigError(UsageError, ValueError):
    """A usage error in the configuration: the CLI reports it in one line and exits 2."""


@dataclass(frozen=True)
class Config:
    # benchmark and protocol (DESIGN §4-5)
    benchmark: str = flag(
        "cifar100",
        "Benchmark (aliases tinyimagenet, imagenet-r), or your data prepared with "
        "`zocli prepare --benchmark folder:DIR|hf:ID`.",
        DATA,
    )
    class_order: str | None = flag(
        None,
        "Class order: FILE (a JSON list of class ids or indices) or seed:N (a seeded permutation).",
        DATA,
        shown_default="the benchmark's",
    )
    inc: int = flag(10, "Classes per task.", DATA)
    base: int | None = flag(None, "Classes in the first task.", DATA, shown_default="= --inc")
    prompt: str = flag("a bad photo of a {}.", "Prompt template, {} is the class name.", DATA)
    data_root: str = flag(
        DEFAULT_DATA_ROOT, "Where prepared data lives.", DATA, shown_default=f"$ZOCLI_DATA or {DEFAULT_DATA_ROOT}"
    )
    # model (DESIGN §3)
    model: str = flag(
        "ViT-B-16", "open_clip ViT model (ViT-B-16 means ViT-B-16-quickgelu; zocli-tiny for tests).", MODEL
    )
    pretrained: str = flag(
        "openai", "Weights: an open_clip tag (from the local cache), PATH, local-dir:DIR or none.", MODEL
    )
    adapter: Literal["moe", "lora"] = flag(
        "moe", "Adapter in every block: MoE (2 experts, top-2, bottleneck 64) or LoRA.", MODEL
    )
    lora_rank: int = flag(8, "LoRA rank r.", MODEL)
    lora_alpha: float = flag(16.0, "LoRA scale α (the update is α/r · BA).", MODEL)
    # first-order optimisation, the MoE-Adapters baseline
    epochs: int = flag(1, "Epochs per task.", OPTIMISATION)
    batch_size: int = flag(128, "Training images per step.", OPTIMISATION)
    lr: float = flag(1e-3, "AdamW learning rate of FO units; ZO units move λ·lr.", OPTIMISATION)
    weight_decay: float = flag(0.0, "AdamW weight decay.", OPTIMISATION)
    warmup_steps: int = flag(30, "Linear warm-up steps, then cosine to 0; restarted every task.", OPTIMISATION)
    max_steps: int | None = flag(None, "Cap on steps per task (smoke runs).", OPTIMISATION, shown_default="full epochs")
    # zeroth-order units (DESIGN §6)
    vision: Literal["fo", "zo", "frozen"] = flag(
        "fo", "How the vision branch's adapters train (frozen: a control, no update).", ZO
    )
    language: Literal["fo", "zo", "frozen"] = flag(
        "fo", "How the language branch's adapters train (frozen: a control, no update).", ZO
    )
    layers: Literal["all", "hop-odd", "hop-even", "prefix", "suffix"] = flag(
        "all", "Which layers of a ZO branch are ZO (1-based; the rest stay FO).", ZO
    )
    layers_n: int | None = flag(None, "Layers in a prefix/suffix scheme.", ZO, shown_default="half the layers")
    mozo: bool = flag(False, f"MoZO: --normalize sign and --eps-vision {MOZO_EPS_VISION:g} (each overridable).", ZO)
    normalize: Literal["none", "sign"] = flag(
        "none", "ZO update direction: the estimate, or its element-wise sign.", ZO
    )
    eps: float = flag(1e-3, "Perturbation scale ε of both branches.", ZO)
    eps_vision: float | None = flag(
        None, "ε of the vision branch.", ZO, shown_default=f"--eps ({MOZO_EPS_VISION:g} with --mozo)"
    )
    eps_language: float | None = flag(None, "ε of the language branch.", ZO, shown_default="--eps")
    # two-sided: the same cost at q = 1, and 3x more accurate
    estimator: Literal["one-sided", "two-sided"] = flag(
        "two-sided",
        "Finite difference: [L(θ+εz) − L(θ−εz)]/2ε or the paper's [L(θ+εz) − L(θ)]/ε.",
        ZO,
    )
    # 2q forwards per ZO block: with ZO-Adam, q = 8 learned most on the test-bed for dual ZO, also against
    # q = 1 given the same forwards as more epochs (README, "Does ZO learn?")
    queries: int = flag(8, "Directions q averaged per estimate.", ZO)
    conservative: bool = flag(
        True,
        "Keep the best of {θ, θ−ηu, θ+ηu} on the step's batch, or always step.",
        ZO,
        negative="--aggressive",
    )
    # ZO-Adam at λ = 3 learned most on the test-bed (README, "Does ZO learn?"); plain sgd at λ = 1 is an
    # SGD step at AdamW's learning rate in expectation: hundreds of times too small.
    zo_rule: Literal["sgd", "adam", "noise", "random-search"] = flag(
        "adam", "How ĝ becomes the ZO step (noise, random-search: controls without a finite difference).", ZO
    )
    zo_lr: float | None = flag(
        None, "Absolute peak ZO learning rate (same schedule as lr); overrides λ.", ZO, shown_default="λ·lr"
    )
    zo_lr_scale: float = flag(3.0, "λ: ZO learning rate = λ·lr when --zo-lr is unset.", ZO)
    probe_every: int = flag(0, "Every N steps log cos(ZO update, exact gradient of the ZO units); 0: off.", ZO)
    granularity: Literal["branch", "joint", "layer"] = flag(
        "branch", "Finite differences per step: one per ZO branch, one joint, or one per layer.", ZO
    )
    zo_chunk: int | None = flag(
        None,
        "Images per ZO forward micro-batch (bounds activation memory).",
        ZO,
        shown_default=str(DEFAULT_ZO_CHUNK),
    )
    # execution
    seed: int = flag(0, "Seed of adapter init, data order, crops and ZO directions.", EXECUTION)
    device: str = flag("auto", "auto (CUDA when present), cpu, cuda or cuda:N.", EXECUTION)
    # One run on several processes (DESIGN §11): where it runs, like --device, so a resume may change it.
    nproc: int = flag(
        1,
        "Processes of this one run, started through torchrun (one GPU each on CUDA; gloo on a CPU); "
        "or launch with torchrun --nproc-per-node N -m zocli train.",
        EXECUTION,
    )
    parallelism: Literal["auto", "directions", "data"] = flag(
        "auto",
        "What several processes split: auto (ZO loss evaluations and the FO pass's batch), directions "
        "(ZO evaluations only: bit-identical to one process) or data (the FO batch only).",
        EXECUTION,
    )
    workers: int | None = flag(
        None, "Data-loading processes.", EXECUTION, shown_default=f"0 on CPU, ≤ {CUDA_WORKERS} on CUDA"
    )
    eval_batch_size: int = flag(256, "Images per evaluation batch.", EXECUTION)
    eval_future: bool = flag(
        False,
        "After every task also evaluate the tasks not trained yet (zero-shot): the full accuracy matrix.",
        EXECUTION,
    )
    precision: Literal["fp32", "tf32", "bf16"] = flag(
        "fp32", "Backbone matmuls of FO passes and evaluation (tf32 is fp32 on a CPU).", EXECUTION
    )
    zo_precision: Literal["auto", "fp32", "tf32", "bf16"] = flag(
        "auto",
        "Backbone matmuls of ZO forwards; auto: the fastest that passes the fidelity check on the first batch.",
        EXECUTION,
    )
    input_pipeline: Literal["auto", "cpu", "device"] = flag(
        "auto",
        "Crop and resize in CPU workers, or on the device in batches (small-image benchmarks); "
        "auto: device on CUDA when it can.",
        EXECUTION,
    )
    save_every: int = flag(
        0, "Also commit a resumable state every N steps inside a task (0: task ends only).", EXECUTION
    )
    # tracking: what is watched, never what a run is (comparisons and seed groups ignore it)
    report_to: str = flag(
        "",
        "Trackers, comma-separated: tensorboard, wandb (offline unless WANDB_MODE is set); "
        "output in the run directory.",
        TRACKING,
        shown_default="none",
    )
    log_every: int | None = flag(
        None,
        "Every N steps a record (loss, learning rates, ZO acceptance and update norm, step time, images/s) "
        "to metrics.jsonl and the trackers; 0: off.",
        TRACKING,
        shown_default=f"min({DEFAULT_LOG_EVERY}, a tenth of the task's steps) with --report-to, else off",
    )

    @property
    def trackers(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in self.report_to.split(",") if name.strip())

    @property
    def log_interval(self) -> int:
        """Steps between per-step records (0: none)."""
        if self.log_every is not None:
            return self.log_every
        return DEFAULT_LOG_EVERY if self.trackers else 0

    def log_interval_for(self, steps: int) -> int:
        """The interval in a task of `steps` steps: --log-every as given, else with a tracker every
        min(50, steps // 10) steps, so even a short task draws a curve of about 10 points."""
        if self.log_every is not None or not self.trackers:
            return self.log_interval
        return max(1, min(DEFAULT_LOG_EVERY, steps // 10))

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
        "nproc",
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
OPTIONS = options(Config)  # each field's flag
# Keys that say where a run ran, not what it was: a resume may change them, and comparisons ignore them.
PLACE_KEYS = ("device", "nproc", "workers", "data_root", "eval_batch_size", "save_every", "report_to", "log_every")


def did_you_mean(word: str, options) -> str:
    """' (did you mean X?)' for the closest option, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""

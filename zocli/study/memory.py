"""`zocli memory`: peak training-step memory per FO/ZO configuration, with a breakdown.

Runs the very step `train` runs (`Stepper.step`) on a synthetic batch of the benchmark's shape — weight
and pixel values do not change memory, so no pretrained weights and no dataset are needed:
- cuda: `torch.cuda.max_memory_allocated` around the step;
- cpu:  an exact live-tensor tracker (a TorchDispatchMode counting storages as they are made and freed);
- meta: the same tracker with no compute. Attention falls back to the math path there, which
  materialises attention probabilities, so meta is an upper bound.
One warm-up step first (optimizer state and lazy workspaces appear on step 1); the second is measured.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from zocli.config import MOZO_EPS_VISION, Config, ConfigError, did_you_mean
from zocli.data import catalogue, location
from zocli.method.attach import AdaptedCLIP, build_model
from zocli.method.step import Stepper

PAPER_ROWS = ("fo", "dual", "vision", "language")
SCHEMES = ("hop-odd", "hop-even", "prefix", "suffix")
# the paper's branch rows, then every layer-wise scheme of each branch
DEFAULT_CONFIGS = PAPER_ROWS + tuple(f"{b}-{s}" for b in ("dual", "vision", "language") for s in SCHEMES)
BRANCH_PLANS = {"fo": ("fo", "fo"), "dual": ("zo", "zo"), "vision": ("zo", "fo"), "language": ("fo", "zo")}


class LiveTensorTracker(TorchDispatchMode):
    """Counts bytes of tensor storages created inside the mode, live and at peak.

    Views and in-place ops return storages that already exist (their schema marks an alias): those
    are skipped, or every `aten.t` of a frozen weight would count as a new allocation.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0
        self.gradients: set[int] = set()  # live storages known to hold .grad tensors
        self.gradient_bytes = self.gradients_at_peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._track(tensor.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key = id(storage)  # the storage PyObject outlives every view of it: a stable key
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += self.live[key]
        if self.current > self.peak:
            self.peak, self.gradients_at_peak = self.current, self.gradient_bytes
        weakref.finalize(storage, self._free, key)

    def mark_gradient(self, tensor: torch.Tensor) -> None:
        """Called as a .grad is accumulated, so the peak can be split into gradients and the rest."""
        key = id(tensor.untyped_storage())
        if key in self.live and key not in self.gradients:
            self.gradients.add(key)
            self.gradient_bytes += self.live[key]
            if self.current == self.peak:  # the gradient itself made the peak
                self.gradients_at_peak = self.gradient_bytes

    def _free(self, key: int) -> None:
        size = self.live.pop(key, 0)
        self.current -= size
        if key in self.gradients:
            self.gradients.discard(key)
            self.gradient_bytes -= size


@dataclass(frozen=True)
class MemoryRow:
    config: str
    peak_bytes: int  # everything resident at the step's peak
    frozen_weights: int
    trainable: int
    gradients: int
    optimizer_state: int
    activations: int  # activations and temporaries at the peak
    reduction_vs_fo: float | None  # percent saved against the `fo` row, when measured


@dataclass(frozen=True)
class MemoryReport:
    model: str
    adapter: str
    benchmark: str
    batch_size: int
    prompts: int
    image_size: int
    device: str
    upper_bound: bool
    rows: tuple[MemoryRow, ...]

    def as_dict(self) -> dict:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}


def plan_for(name: str) -> dict[str, str]:
    """'vision-hop-odd' → {vision: zo, language: fo, layers: hop-odd}; '+mozo' suffix allowed."""
    base, _, extra = name.partition("+")
    branch, _, scheme = base.partition("-")
    no_zo = branch == "fo"
    if (
        branch not in BRANCH_PLANS
        or (scheme and (scheme not in SCHEMES or no_zo))
        or extra not in ("", "mozo")
        or (extra and no_zo)
    ):
        options = [*BRANCH_PLANS, *(f"{b}-{s}" for b in ("dual", "vision", "language") for s in SCHEMES)]
        raise ConfigError(
            f"unknown memory config {name!r}{did_you_mean(name, options)}; "
            f"use fo, dual, vision, language, optionally -hop-odd/-hop-even/-prefix/-suffix"
        )
    vision, language = BRANCH_PLANS[branch]
    plan = {"vision": vision, "language": language, "layers": scheme or "all", "mozo": extra == "mozo"}
    if extra == "mozo":  # what --mozo implies (zocli.resolve fills these for train)
        plan.update(normalize="sign", eps_vision=MOZO_EPS_VISION)
    return plan


def measure(
    cfg: Config,
    configs: Sequence[str] = DEFAULT_CONFIGS,
    device: str = "meta",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> MemoryReport:
    """Peak memory of one training step for each named FO/ZO configuration on `cfg`'s model and batch.

    `on_progress(config, index, total)` is called as each configuration starts: two steps each take
    10-30 s for ViT-B-16 even on meta, which skips the arithmetic but not the dispatch.
    """
    if not re.fullmatch(r"meta|cpu|cuda(:\d+)?", device):
        raise ConfigError(f"--device must be meta, cpu, cuda or cuda:N; got {device!r}")
    plans = {name: plan_for(name) for name in configs}
    progress = on_progress or (lambda name, index, total: None)
    bench = location.benchmark(cfg)  # a folder:/hf: benchmark: its prepared record
    prompts = catalogue.split(bench, cfg.inc, cfg.base).sizes[0]
    model = build_model(replace(cfg, pretrained="none"), device)
    images, labels, tokens = synthetic_batch(model, bench, cfg.batch_size, prompts, device, cfg.prompt)
    rows = []
    for index, (name, plan) in enumerate(plans.items()):
        progress(name, index, len(plans))
        rows.append(_measure_one(model, replace(cfg, **plan), name, images, labels, tokens, device))
    fo = next((r.peak_bytes for r in rows if r.config == "fo"), None)
    rows = [replace(r, reduction_vs_fo=None if fo is None else round(100.0 * (1 - r.peak_bytes / fo), 1)) for r in rows]
    return MemoryReport(
        cfg.model,
        cfg.adapter,
        bench.name,
        cfg.batch_size,
        prompts,
        model.image_size,
        device,
        device == "meta",
        tuple(rows),
    )


def _measure_one(model: AdaptedCLIP, cfg: Config, name: str, images, labels, tokens, device: str) -> MemoryRow:
    for p in model.adapter_parameters():  # a fresh optimizer per configuration, as at a task start
        p.grad = None
    stepper = Stepper(model, cfg)
    fo_params = [p for g in (stepper.optimizer.param_groups if stepper.optimizer else []) for p in g["params"]]
    stepper.step(images, labels, tokens, cfg.lr, seed=0)  # warm-up: optimizer state appears here
    if device.startswith("cuda"):
        dynamic, gradients = _cuda_peak(stepper, images, labels, tokens, cfg.lr), _nbytes(fo_params)
    else:
        tracker = LiveTensorTracker()
        hooks = [p.register_post_accumulate_grad_hook(lambda p: tracker.mark_gradient(p.grad)) for p in fo_params]
        with tracker:
            stepper.step(images, labels, tokens, cfg.lr, seed=1)
        for hook in hooks:
            hook.remove()
        dynamic, gradients = tracker.peak, tracker.gradients_at_peak
    frozen = _nbytes(list(model.clip.parameters()) + list(model.clip.buffers()))
    trainable = _nbytes(model.adapter_parameters())
    state = _optimizer_bytes(stepper.optimizer)
    return MemoryRow(
        name, frozen + trainable + state + dynamic, frozen, trainable, gradients, state, dynamic - gradients, None
    )


def _cuda_peak(stepper: Stepper, images, labels, tokens, lr: float) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    stepper.step(images, labels, tokens, lr, seed=1)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def synthetic_batch(
    model: AdaptedCLIP, bench, batch: int, prompts: int, device: str, template: str = "a bad photo of a {}."
):
    """Images and labels of the benchmark's shape; real prompts of its first task (token count matters)."""
    size = model.image_size
    images = torch.zeros(batch, 3, size, size, device=device)
    labels = torch.arange(batch, device=device) % prompts
    names = bench.prompt_names()[:prompts]
    tokens = model.tokenizer([template.format(n) for n in names]).to(device)
    return images, labels, tokens


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _optimizer_bytes(optimizer: torch.optim.Optimizer | None) -> int:
    if optimizer is None:
        return 0
    return _nbytes(v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor))

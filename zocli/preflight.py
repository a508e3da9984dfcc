"""Checks that need none of torch, open_clip or datasets, run before those are imported.

Importing them takes seconds (10-15 s on a busy machine), so a run directory in the way, a missing
CUDA, a missing run or unprepared data would otherwise be reported only after that wait. The jobs
repeat these checks where they matter; failing here only moves the same answer earlier.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from . import benchmarks
from .benchmarks import GENERATED, Benchmark, canonical_name, is_user, storage_name
from .config import Config, ConfigError
from .rundir import RunDir, read_json

# Device nodes of the drivers torch.cuda can use (NVIDIA, ROCm, WSL): with none of them present,
# CUDA is certainly unavailable; with one present, torch decides later.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
RECORD = "zocli_benchmark.json"  # beside a prepared folder:/hf: copy: its spec, classes and prompt names


class NotReady(RuntimeError):
    """A runtime precondition fails (no CUDA, data not prepared): one line, exit 1."""


def dataset_dir(data_root: Path | str, benchmark: str) -> Path:
    """Where the prepared copy of `benchmark` lives under `data_root`."""
    return Path(data_root).expanduser() / storage_name(benchmark)


def prepare_command(benchmark: str, data_root: Path | str) -> str:
    name, root = shlex.quote(canonical_name(benchmark)), shlex.quote(str(data_root))
    return f"zocli prepare --benchmark {name} --data-root {root}"


def benchmark(cfg: Config) -> Benchmark:
    """The run's benchmark, in its class order: a shipped one, or the user's from its prepared record
    (so `train` and `eval` need only the prepared copy, never the source)."""
    name = canonical_name(cfg.benchmark)
    bench = benchmarks.from_record(read_record(cfg.data_root, name)) if is_user(name) else benchmarks.get(name)
    if cfg.class_order is None:
        return bench
    if cfg.class_order.startswith("seed:"):
        return benchmarks.reorder(bench, cfg.class_order)
    return benchmarks.reorder(bench, _read_order(Path(cfg.class_order)))


def read_record(data_root: Path | str, name: str) -> dict:
    path = dataset_dir(data_root, name) / RECORD
    if not path.is_file():
        same = " with the same --image-column/--label-column/--*-split options" if name.startswith("hf:") else ""
        raise NotReady(f"benchmark {name} is not prepared under {data_root}; run `{prepare_command(name, data_root)}`"
                       f"{same}")
    try:
        record = json.loads(path.read_text())
        if not isinstance(record.get("classes"), list) or len(record["names"]) != len(record["classes"]):
            raise ValueError("classes and names do not match")
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        raise NotReady(f"{path} is damaged ({exc}); run `{prepare_command(name, data_root)} --overwrite`") from None
    return {**record, "spec": name}


def _read_order(path: Path) -> list:
    try:
        order = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--class-order {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"--class-order {path} is not JSON ({exc})") from None
    if not isinstance(order, list):
        raise ConfigError(f"--class-order {path} must hold a JSON list of class ids or indices")
    return order


def check_device(name: str) -> None:
    if name.startswith("cuda") and sys.platform == "linux" and not any(Path(p).exists() for p in GPU_DRIVER_PATHS):
        raise NotReady(f"--device {name} was asked for, but CUDA is not available on this machine")


def check_data(cfg: Config) -> None:
    """The benchmark's prepared copy exists (generated ones are made on first use: they need no network)."""
    name = canonical_name(cfg.benchmark)
    if name in GENERATED or (dataset_dir(cfg.data_root, name) / "dataset_dict.json").is_file():
        return
    weights = "" if not _is_weights_tag(cfg.pretrained) else (
        f"; add --weights --model {cfg.model} --pretrained {cfg.pretrained} if those weights are not downloaded yet")
    raise NotReady(f"benchmark {name} is not prepared under {cfg.data_root}; run "
                   f"`{prepare_command(name, cfg.data_root)}`{weights}")


def check_fresh_run(cfg: Config, out: Path, overwrite: bool) -> None:
    RunDir.check_available(out, overwrite)
    check_device(cfg.device)
    check_data(cfg)


def check_run(root: Path, task: int | None = None, overrides: dict[str, Any] | None = None) -> RunDir:
    """An existing run with committed tasks (and `task` among them), whose data and device are there."""
    run = RunDir.open(root)
    if task is not None:
        done = _tasks_done(run)
        if done and not 0 <= task < done:
            raise ConfigError(f"--task {task} is out of range: {run.root} has tasks 0..{done - 1}")
    saved = read_json(run.config).get("config", {})
    wanted = {**saved, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    check_device(str(wanted.get("device", "auto")))
    if {"benchmark", "data_root"} <= set(wanted):
        check_data(Config(benchmark=wanted["benchmark"], data_root=wanted["data_root"],
                          pretrained=wanted.get("pretrained", "none"), model=wanted.get("model", "ViT-B-16")))
    return run


def _tasks_done(run: RunDir) -> int:
    # The manifest's strict reader lives with the checkpoints (torch); a count is all this needs.
    if not run.manifest.is_file():
        return 0
    done = read_json(run.manifest).get("tasks_done", 0)
    return done if isinstance(done, int) else 0


def _is_weights_tag(pretrained: str) -> bool:
    # Mirrors backbone.resolve_weights: none, a file path or a local-dir need no download.
    path = Path(pretrained).expanduser()
    return not (pretrained == "none" or pretrained.startswith("local-dir:") or "/" in pretrained
                or path.suffix in (".safetensors", ".bin", ".pt", ".pth") or path.exists())

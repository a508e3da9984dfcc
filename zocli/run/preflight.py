"""Checks that need none of torch, open_clip or datasets, run before those are imported.

Importing them takes seconds (10-15 s on a busy machine), so a run directory in the way, a missing
CUDA, a missing run or unprepared data would otherwise be reported only after that wait. The jobs
repeat these checks where they matter; failing here only moves the same answer earlier.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from zocli.config import Config, ConfigError
from zocli.data.catalogue import GENERATED, canonical_name
from zocli.data.hub import is_weights_tag
from zocli.data.location import NotReady, dataset_dir, prepare_command
from zocli.flags import given
from zocli.run.files import read_json
from zocli.run.rundir import RunDir

# Device nodes of the drivers torch.cuda can use (NVIDIA, ROCm, WSL): with none of them present,
# CUDA is certainly unavailable; with one present, torch decides later.
GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def check_device(name: str) -> None:
    if name.startswith("cuda") and sys.platform == "linux" and not any(Path(p).exists() for p in GPU_DRIVER_PATHS):
        raise NotReady(f"--device {name} was asked for, but CUDA is not available on this machine")


def check_data(cfg: Config) -> None:
    """The benchmark's prepared copy exists (generated ones are made on first use: they need no network)."""
    name = canonical_name(cfg.benchmark)
    if name in GENERATED or (dataset_dir(cfg.data_root, name) / "dataset_dict.json").is_file():
        return
    weights = (
        ""
        if not is_weights_tag(cfg.pretrained)
        else (
            f"; add --weights --model {cfg.model} --pretrained {cfg.pretrained} if those weights are not downloaded yet"
        )
    )
    raise NotReady(
        f"benchmark {name} is not prepared under {cfg.data_root}; run `{prepare_command(name, cfg.data_root)}`{weights}"
    )


def check_fresh_run(cfg: Config, out: Path, overwrite: bool) -> None:
    RunDir.check_available(out, overwrite)
    check_device(cfg.device)
    check_data(cfg)


def check_run(root: Path, task: int | None = None, overrides: dict[str, Any] | None = None) -> RunDir:
    """An existing run with committed tasks (and `task` among them), whose data and device are there."""
    run = RunDir.open(root)
    if task is not None:
        done = run.tasks_done()
        if done and not 0 <= task < done:
            raise ConfigError(f"--task {task} is out of range: {run.root} has tasks 0..{done - 1}")
    saved = read_json(run.config).get("config", {})
    wanted = {**saved, **given(overrides or {})}
    check_device(str(wanted.get("device", "auto")))
    if {"benchmark", "data_root"} <= set(wanted):
        check_data(
            Config(
                benchmark=wanted["benchmark"],
                data_root=wanted["data_root"],
                pretrained=wanted.get("pretrained", "none"),
                model=wanted.get("model", "ViT-B-16"),
            )
        )
    return run

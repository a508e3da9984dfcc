"""Experiment tracking: a run's events as TensorBoard and/or W&B scalars (optional extras, imported only
when asked for with --report-to).

Trackers only listen: they read the same events metrics.jsonl gets and never steer training. Every scalar
is logged at the global step (steps of earlier tasks + this task's step), so per-step and per-task curves
share one axis; the run's config goes in as hyper-parameters. Output lives in the run directory
(`RUN/tensorboard/`, `RUN/wandb/`), so `tensorboard --logdir runs/` finds every run.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zocli.config import Config
from zocli.errors import ZocliError
from zocli.run.files import read_json

MODULES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # tracker -> the package it needs
STEP_SCALARS = (
    "loss",
    "lr",
    "zo_lr",
    "zo_acceptance",
    "zo_update_norm",
    "fo_grad_norm",
    "step_seconds",
    "images_per_second",
)


class TrackingUnavailable(ZocliError, RuntimeError):
    """A tracker's package is not installed."""


def check_available(names: tuple[str, ...]) -> None:
    """Fail before training starts when a tracker's extra is missing (no import: that costs seconds)."""
    for name in names:
        if importlib.util.find_spec(MODULES[name]) is None:
            raise TrackingUnavailable(f"--report-to {name} needs the {name} package: pip install 'zocli[{name}]'")
    if "wandb" in names and os.environ.get("WANDB_MODE", "offline") == "online":
        _check_reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))


def _check_reachable(url: str, timeout: float = 3.0) -> None:
    """WANDB_MODE=online needs the wandb server: refused in a few seconds when it cannot be reached, rather
    than wandb's own minute of retries (the README: training never waits on a network)."""
    import socket
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or url, parts.port or (80 if parts.scheme == "http" else 443)
    outcome: dict[str, BaseException | None] = {}

    def connect() -> None:  # in a thread: name resolution does not honour a socket timeout
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome["error"] = None
        except OSError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    error = outcome.get("error", TimeoutError(f"no answer in {timeout:.0f} s"))
    if error is not None:
        raise TrackingUnavailable(
            f"WANDB_MODE=online but {host}:{port} cannot be reached ({error}); unset WANDB_MODE to log offline "
            f"(then `wandb sync RUN/wandb/...`)"
        )


def scalars(event: dict[str, Any], offsets: list[int]) -> tuple[int, dict[str, float]] | None:
    """(global step, {name: value}) of the scalars an event carries, or None for events without any."""
    kind = event["event"]
    if kind == "train_step":
        values = {f"train/{key}": event[key] for key in STEP_SCALARS if event.get(key) is not None}
        return offsets[event["task"]] + event["step"] + 1, values
    if kind == "eval":  # at the task's last step: the accuracy row, seen accuracy, Last and Avg so far
        row = {f"task/acc_T{j}": a for j, a in enumerate(event["acc"])}
        return offsets[event["task"] + 1], {
            "task/seen_accuracy": event["seen_accuracy"],
            "task/last": event["seen_accuracy"],
            "task/avg": event["avg"],
            "task/test_loss": event["test_loss"],
            **row,
        }
    if kind == "zero_shot":
        return 0, {"task/zero_shot_seen": event["seen_accuracy"]}
    return None


class Tracking:
    """The trackers of one run, fed events; opened at `run_start` (which names the steps of every task)."""

    def __init__(self, cfg: Config, run_root: Path):
        self.names, self.root = cfg.trackers, Path(run_root)
        self.writers: list[Any] = []
        self.offsets: list[int] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event["event"] == "run_start" and not self.writers:
            self.offsets = [sum(event["steps"][:t]) for t in range(len(event["steps"]) + 1)]
            check_available(self.names)
            hparams = read_json(self.root / "config.json")["config"]
            self.writers = [OPENERS[name](self.root, hparams) for name in self.names]
            return
        found = scalars(event, self.offsets) if self.writers else None
        if found:
            for writer in self.writers:
                writer.log(*found)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []


def tee(*listeners: Callable[[dict], None] | None) -> Callable[[dict], None]:
    present = [listen for listen in listeners if listen is not None]

    def emit(event: dict) -> None:
        for listen in present:
            listen(event)

    return emit


class _TensorBoard:
    def __init__(self, root: Path, hparams: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        self.writer = SummaryWriter(log_dir=str(root / "tensorboard"))
        # the HPARAMS tab: one type per key whatever the run, so runs line up: numbers as floats (unset: NaN),
        # switches as booleans, the rest as text (unset: "unset")
        clean = {k: _hparam(k, v) for k, v in hparams.items()}
        for summary in hparams_summary(clean, {"task/last": 0.0, "task/avg": 0.0}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", f"```\n{json.dumps(hparams, indent=2)}\n```")

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.close()


def _hparam(key: str, value: Any) -> Any:
    from typing import get_args, get_type_hints

    kind = get_type_hints(Config).get(key)
    kinds = set(get_args(kind)) or {kind}
    if bool in kinds:
        return bool(value)
    if kinds & {int, float}:
        return float("nan") if value is None else float(value)
    return "unset" if value is None else value if isinstance(value, str) else json.dumps(value)


class _WandB:
    def __init__(self, root: Path, hparams: dict[str, Any]):
        import wandb

        # Offline unless WANDB_MODE says otherwise: training never waits on a network; `wandb sync RUN/wandb/...`
        # uploads afterwards.
        try:
            self.run = self._init(wandb, root, hparams)
        except Exception as exc:  # wandb's own failures (no network, bad key): one line, the run stays resumable
            text = " ".join(str(exc).split())[:200]
            raise TrackingUnavailable(f"wandb could not start ({type(exc).__name__}: {text})") from None

    @staticmethod
    def _init(wandb, root: Path, hparams: dict[str, Any]):
        return wandb.init(
            project=os.environ.get("WANDB_PROJECT", "zocli"),
            name=root.name,
            dir=str(root),
            config=hparams,
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


OPENERS = {"tensorboard": _TensorBoard, "wandb": _WandB}

"""Per-task adapter checkpoints: safetensors + metadata, a hashed manifest, strict loading.

Only safetensors and JSON are ever read; nothing is unpickled. The manifest is written after the
tensor file and is the commit point: a checkpoint it does not list does not exist.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from . import __version__
from .rundir import RunDir, atomic_write, read_json, write_json

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the model (one line, names the file)."""


def save_task(run: RunDir, task: int, state: dict[str, torch.Tensor], meta: dict[str, Any],
              results: dict[str, Any] | None = None) -> Path:
    """Write task_XX.safetensors atomically, then commit it in the manifest with its sha256 and
    `results` (accuracy rows so far, metrics.jsonl length): the manifest is written last."""
    path = run.task_file(task)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    metadata = {"format": "pt", "zocli_format": str(FORMAT_VERSION), "zocli_version": __version__,
                "task": str(task), **{k: json.dumps(v) for k, v in meta.items()}}
    data = save(tensors, metadata=metadata)
    atomic_write(path, data)
    manifest = read_manifest(run)
    manifest["files"][f"{task}"] = {"file": path.name, "sha256": hashlib.sha256(data).hexdigest()}
    manifest["tasks_done"] = task + 1
    manifest.update(results or {})
    write_json(run.manifest, manifest)
    return path


def record(run: RunDir, results: dict[str, Any]) -> None:
    """Add `results` to the manifest without committing a task (the zero-shot row before task 0)."""
    manifest = read_manifest(run)
    manifest.update(results)
    write_json(run.manifest, manifest)


def read_manifest(run: RunDir) -> dict[str, Any]:
    if not run.manifest.is_file():
        return {"zocli_format": FORMAT_VERSION, "tasks_done": 0, "files": {}}
    manifest = read_json(run.manifest)
    if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
            and isinstance(manifest.get("tasks_done"), int)):
        raise CheckpointError(f"{run.manifest}: not a zocli manifest (needs files and tasks_done)")
    return manifest


def load_task(run: RunDir, task: int, expected: dict[str, torch.Tensor] | None = None
              ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a committed task, verified against the manifest hash and `expected` keys/shapes."""
    files = read_manifest(run)["files"]
    entry = files.get(str(task)) if isinstance(files, dict) else None
    if entry is None:
        raise CheckpointError(f"{run.checkpoints}: task {task} has no committed checkpoint")
    if not isinstance(entry, dict) or not {"file", "sha256"} <= set(entry):
        raise CheckpointError(f"{run.manifest}: malformed entry for task {task} (needs file and sha256)")
    path = run.checkpoints / entry["file"]
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{path}: sha256 does not match the manifest (corrupt or modified file)")
    tensors, meta = read_file(path)
    if expected is not None:
        check_keys(path, tensors, expected)
    return tensors, meta


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and decoded metadata of one checkpoint file (no manifest check)."""
    try:
        with safe_open(str(path), "pt") as handle:
            raw = handle.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    meta = {k: _maybe_json(v) for k, v in raw.items()}
    return tensors, meta


def check_keys(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: keys do not match the model (missing {missing[:3]}"
                              f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                              f"{'...' if len(unexpected) > 3 else ''})")
    for key, value in expected.items():
        if tensors[key].shape != value.shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(tensors[key].shape)}, "
                                  f"the model expects {tuple(value.shape)}")


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


# ----------------------------------------------------------------------------------------------
# mid-task training state: what `--resume` needs to continue a task exactly where it stopped


@dataclass(frozen=True)
class TrainState:
    task: int
    step: int  # steps of `task` already applied
    adapters: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None  # torch optimizer state_dict of the FO units
    rng: dict[str, torch.Tensor]  # global RNG states (gating noise, dropout): "cpu", "cuda.N"
    history: list[dict[str, Any]]  # per-step statistics so far, for the task's summary event
    metrics_bytes: int  # length of metrics.jsonl at this commit; anything after it is discarded
    zo_state: dict[str, torch.Tensor] | None = None  # the ZO rule's state (ZO-Adam moments), if it has one


def save_state(run: RunDir, state: TrainState) -> None:
    """Atomically write checkpoints/resume.safetensors: tensors in safetensors, the rest as JSON."""
    tensors = {f"adapters.{k}": v.detach().contiguous().cpu() for k, v in state.adapters.items()}
    tensors.update({f"rng.{k}": v.contiguous().cpu() for k, v in state.rng.items()})
    tensors.update({f"zo.{k}": v.detach().contiguous().cpu() for k, v in (state.zo_state or {}).items()})
    groups = None
    if state.optimizer is not None:
        groups = state.optimizer["param_groups"]
        for index, slots in state.optimizer["state"].items():
            tensors.update({f"optim.{index}.{name}": torch.as_tensor(v).contiguous().cpu()
                            for name, v in slots.items()})
    meta = {"task": state.task, "step": state.step, "history": state.history, "param_groups": groups,
            "metrics_bytes": state.metrics_bytes}
    atomic_write(run.state_file, save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()}))


def load_state(run: RunDir) -> TrainState | None:
    """The mid-task state, or None when there is none."""
    if not run.state_file.is_file():
        return None
    tensors, meta = read_file(run.state_file)
    group = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    optimizer = None
    if meta["param_groups"] is not None:
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in group("optim.").items():
            index, name = key.split(".", 1)
            slots.setdefault(int(index), {})[name] = value
        optimizer = {"state": slots, "param_groups": meta["param_groups"]}
    return TrainState(meta["task"], meta["step"], group("adapters."), optimizer, group("rng."), meta["history"],
                      meta["metrics_bytes"], group("zo.") or None)


def encode_rng(states: dict[str, torch.Tensor]) -> dict[str, str]:
    """RNG state tensors (uint8) as base64 strings, for the JSON manifest."""
    return {k: base64.b64encode(v.numpy().tobytes()).decode() for k, v in states.items()}


def decode_rng(encoded: dict[str, str]) -> dict[str, torch.Tensor]:
    return {k: torch.frombuffer(bytearray(base64.b64decode(v)), dtype=torch.uint8) for k, v in encoded.items()}


def drop_state(run: RunDir) -> None:
    run.state_file.unlink(missing_ok=True)

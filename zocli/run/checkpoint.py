"""Per-task adapter checkpoints: safetensors + metadata, a hashed manifest, strict loading.

Only safetensors and JSON are ever read; nothing is unpickled. The manifest is written after the
tensor file and is the commit point: a checkpoint it does not list does not exist.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from zocli import __version__
from zocli.errors import ZocliError
from zocli.run.files import read_json
from zocli.run.rundir import CHECKPOINT_FILE, RunDir

FORMAT_VERSION = 1
# Adapters of ViT-B/16 take ~16 MB: a "checkpoint" past this bound is not one of ours, and reading it
# whole (a manifest pointing at /dev/zero, say) would exhaust memory first.
MAX_CHECKPOINT_BYTES = 1 << 31


class CheckpointError(ZocliError, RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the model (one line, names the file)."""


def save_task(
    run: RunDir, task: int, state: dict[str, torch.Tensor], meta: dict[str, Any], results: dict[str, Any] | None = None
) -> Path:
    """Write task_XX.safetensors atomically, then commit it in the manifest with its sha256 and
    `results` (accuracy rows so far, metrics.jsonl length): the manifest is written last."""
    path = run.task_file(task)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    metadata = {
        "format": "pt",
        "zocli_format": str(FORMAT_VERSION),
        "zocli_version": __version__,
        "task": str(task),
        **{k: json.dumps(v) for k, v in meta.items()},
    }
    data = save(tensors, metadata=metadata)
    run.write_bytes(path, data)
    manifest = read_manifest(run)
    manifest["files"][f"{task}"] = {"file": path.name, "sha256": hashlib.sha256(data).hexdigest()}
    manifest["tasks_done"] = task + 1
    manifest.update(results or {})
    run.write_json(run.manifest, manifest)
    return path


def record(run: RunDir, results: dict[str, Any]) -> None:
    """Add `results` to the manifest without committing a task (the zero-shot row before task 0)."""
    manifest = read_manifest(run)
    manifest.update(results)
    run.write_json(run.manifest, manifest)


def read_manifest(run: RunDir) -> dict[str, Any]:
    if not run.manifest.is_file():
        return {"zocli_format": FORMAT_VERSION, "tasks_done": 0, "files": {}}
    manifest = read_json(run.manifest)
    if not (
        isinstance(manifest, dict)
        and isinstance(manifest.get("files"), dict)
        and isinstance(manifest.get("tasks_done"), int)
        and manifest["tasks_done"] >= 0
    ):
        raise CheckpointError(f"{run.manifest}: not a zocli manifest (needs files and tasks_done)")
    return manifest


def committed_results(run: RunDir, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the last task commit recorded for a resume: accuracy rows, task sizes, RNG states, log length."""
    try:
        results = {
            "acc_matrix": manifest["acc_matrix"],
            "task_sizes": manifest["task_sizes"],
            "rng": decode_rng(manifest["rng"]),
            "metrics_bytes": int(manifest["metrics_bytes"]),
            "wall_seconds": float(manifest.get("wall_seconds", 0.0)),
        }
        if not (
            isinstance(results["acc_matrix"], list)
            and len(results["acc_matrix"]) == manifest["tasks_done"]
            and isinstance(results["task_sizes"], list)
            and "cpu" in results["rng"]
        ):
            raise ValueError("acc_matrix, task_sizes or rng do not match tasks_done")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{run.manifest}: damaged commit record ({type(exc).__name__}: {exc})") from None
    return results


def load_task(
    run: RunDir, task: int, expected: dict[str, torch.Tensor] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a committed task, verified against the manifest hash and `expected` keys/shapes.

    The tensors are parsed from the very bytes that were hashed: a file swapped after the check
    cannot slip in.
    """
    files = read_manifest(run)["files"]
    entry = files.get(str(task))
    if entry is None:
        raise CheckpointError(f"{run.checkpoints}: task {task} has no committed checkpoint")
    if not isinstance(entry, dict) or not {"file", "sha256"} <= set(entry):
        raise CheckpointError(f"{run.manifest}: malformed entry for task {task} (needs file and sha256)")
    name = entry["file"]
    if not isinstance(name, str) or not CHECKPOINT_FILE.fullmatch(name) or not name.startswith("task_"):
        raise CheckpointError(
            f"{run.manifest}: task {task} names {name!r}, which is not a task_NN.safetensors file in {run.checkpoints}"
        )
    path = run.checkpoints / name
    data = read_regular(path)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"{path}: sha256 does not match the manifest (corrupt or modified file)")
    tensors, meta = parse(path, data)
    if expected is not None:
        check_keys(path, tensors, expected)
    return tensors, meta


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_CHECKPOINT_BYTES (no symlink, FIFO or device is followed or read)."""
    limit = MAX_CHECKPOINT_BYTES
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused just below.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise CheckpointError(f"{path}: {info.st_size} bytes, more than a checkpoint can be ({limit})")
        try:
            return handle.read(limit + 1)[:limit]
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and decoded metadata of one checkpoint file (no manifest check)."""
    return parse(path, read_regular(path))


def parse(path: Path, data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and decoded metadata of safetensors bytes; `path` only names them in errors."""
    try:
        tensors = load(data)
        size = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, then the JSON header
        raw = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    except (SafetensorError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    return tensors, {k: _maybe_json(v) for k, v in raw.items()}


def check_keys(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: keys do not match the model (missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'...' if len(unexpected) > 3 else ''})"
        )
    for key, value in expected.items():
        if tensors[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(tensors[key].shape)}, the model expects {tuple(value.shape)}"
            )


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
            tensors.update(
                {f"optim.{index}.{name}": torch.as_tensor(v).contiguous().cpu() for name, v in slots.items()}
            )
    meta = {
        "task": state.task,
        "step": state.step,
        "history": state.history,
        "param_groups": groups,
        "metrics_bytes": state.metrics_bytes,
    }
    run.write_bytes(run.state_file, save(tensors, metadata={k: json.dumps(v) for k, v in meta.items()}))


def load_state(run: RunDir) -> TrainState | None:
    """The mid-task state, or None when there is none."""
    if not run.state_file.is_file():
        return None
    tensors, meta = read_file(run.state_file)
    try:
        return _state(tensors, meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{run.state_file}: not a zocli training state ({type(exc).__name__}: {exc}); "
            f"delete it to resume from the last finished task"
        ) from None


def _state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> TrainState:
    def group(prefix):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    optimizer = None
    if meta["param_groups"] is not None:
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in group("optim.").items():
            index, name = key.split(".", 1)
            slots.setdefault(int(index), {})[name] = value
        optimizer = {"state": slots, "param_groups": list(meta["param_groups"])}
    task, step, bytes_ = (int(meta[k]) for k in ("task", "step", "metrics_bytes"))
    if min(task, step, bytes_) < 0 or not isinstance(meta["history"], list) or "cpu" not in group("rng."):
        raise ValueError("negative task/step/metrics_bytes, no history list or no cpu RNG state")
    return TrainState(
        task, step, group("adapters."), optimizer, group("rng."), meta["history"], bytes_, group("zo.") or None
    )


def encode_rng(states: dict[str, torch.Tensor]) -> dict[str, str]:
    """RNG state tensors (uint8) as base64 strings, for the JSON manifest."""
    return {k: base64.b64encode(v.numpy().tobytes()).decode() for k, v in states.items()}


def decode_rng(encoded: dict[str, str]) -> dict[str, torch.Tensor]:
    return {k: torch.frombuffer(bytearray(base64.b64decode(v)), dtype=torch.uint8) for k, v in encoded.items()}


def drop_state(run: RunDir) -> None:
    run.remove(run.state_file)

"""The run directory (DESIGN §8): layout, atomic writes and the append-only metrics log.

runs/<name>/config.json            resolved config + the source of each value
runs/<name>/metrics.jsonl          one JSON object per event, append-only
runs/<name>/checkpoints/           task_XX.safetensors + manifest.json (the commit point)
runs/<name>/summary.json           accuracy matrix, Last, Avg, forgetting, BWT, time, memory
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists, not writable, not a run)."""


class Interrupted(Exception):
    """A stop was requested: the run committed its state at a step boundary and can be resumed."""

    def __init__(self, run_dir: Path):
        super().__init__(f"stopped; resume with: zocli train --resume {run_dir}")
        self.run_dir = run_dir


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: cannot read JSON ({exc})") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def manifest(self) -> Path:
        return self.checkpoints / "manifest.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def state_file(self) -> Path:
        return self.checkpoints / "resume.safetensors"

    def task_file(self, task: int) -> Path:
        return self.checkpoints / f"task_{task:02d}.safetensors"

    @staticmethod
    def check_available(root: Path, overwrite: bool = False) -> None:
        """Refuse a non-empty target unless `overwrite` (checked before any expensive work)."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise RunDirError(f"--out {root} exists and is not a directory")
        if root.is_dir() and any(root.iterdir()):
            if not overwrite:
                raise RunDirError(f"run directory {root} is not empty; pass --resume to continue it "
                                  f"or --overwrite to replace it")
            if not (root / "config.json").is_file():
                # --overwrite deletes the directory: only ever a zocli run, never arbitrary files.
                raise RunDirError(f"--overwrite only replaces a zocli run directory, and {root} is not one "
                                  f"(no config.json); choose another --out")

    @classmethod
    def create(cls, root: Path, overwrite: bool = False) -> RunDir:
        """A fresh run directory; a non-empty one is refused unless `overwrite`."""
        root = Path(root)
        cls.check_available(root, overwrite)
        if root.is_dir() and any(root.iterdir()):
            shutil.rmtree(root)
        try:
            (root / "checkpoints").mkdir(parents=True, exist_ok=True)
            probe = root / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(f"cannot write to run directory {root}: {exc.strerror or exc}") from None
        return cls(root)

    @classmethod
    def open(cls, root: Path) -> RunDir:
        """An existing run; anything without config.json is not a run directory."""
        run = cls(Path(root))
        if not run.root.exists():
            raise RunDirError(f"{root} does not exist")
        if not run.config.is_file():
            raise RunDirError(f"{root} is not a zocli run directory (no config.json)")
        return run

    def log(self, event: dict[str, Any]) -> None:
        """Append one event to metrics.jsonl, flushed to disk before returning."""
        with open(self.metrics, "a") as handle:
            handle.write(json.dumps(event) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def clean_partial_writes(self) -> None:
        """Remove temp files of atomic writes that a killed process never renamed into place."""
        for tmp in [*self.root.glob(".*.tmp"), *self.checkpoints.glob(".*.tmp")]:
            tmp.unlink(missing_ok=True)

    def truncate_log(self, length: int) -> None:
        """Drop metrics.jsonl events written after the last commit point (they will be redone)."""
        if self.metrics.is_file() and self.metrics.stat().st_size > length:
            with open(self.metrics, "r+b") as handle:
                handle.truncate(length)
                os.fsync(handle.fileno())

    def log_size(self) -> int:
        return self.metrics.stat().st_size if self.metrics.is_file() else 0

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        rows = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r.get("event") == kind]

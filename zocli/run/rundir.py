"""The run directory (DESIGN §8): its layout, what belongs to a run, and the append-only metrics log.

runs/<name>/config.json            resolved config + the source of each value
runs/<name>/metrics.jsonl          one JSON object per event, append-only
runs/<name>/checkpoints/           task_XX.safetensors + manifest.json (the commit point)
runs/<name>/summary.json           accuracy matrix, Last, Avg, forgetting, BWT, time, memory
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zocli.run import files
from zocli.run.files import TEMP_FILE, RunDirError
from zocli.run.lock import LOCK_NAME, RunLock


class Interrupted(Exception):
    """A stop was requested: the run committed its state at a step boundary and can be resumed."""

    def __init__(self, run_dir: Path):
        super().__init__(f"stopped; resume with: zocli train --resume {run_dir}")
        self.run_dir = run_dir


# Everything a run ever writes. --overwrite deletes only these names, and refuses a directory holding
# anything else: it replaces a run, never a user's files that happen to sit next to one.
ROOT_FILES = ("config.json", "metrics.jsonl", "summary.json", LOCK_NAME)
TRACKER_DIRS = ("tensorboard", "wandb")  # --report-to output, replaced with the run by --overwrite
CHECKPOINT_FILE = re.compile(r"task_\d{2,}\.safetensors|manifest\.json|resume\.safetensors")


def is_run(root: Path) -> bool:
    """Whether `root` holds a config.json that zocli wrote (its `zocli_version` and `config` keys)."""
    try:
        saved = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and "zocli_version" in saved and isinstance(saved.get("config"), dict)


def foreign_files(root: Path) -> list[Path]:
    """Entries of `root` that no zocli run writes (a symlink is always foreign)."""
    found = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink():
            found.append(entry)
        elif entry.name == "checkpoints" and entry.is_dir():
            found += [
                f
                for f in sorted(entry.iterdir())
                if f.is_symlink()
                or not f.is_file()
                or not (CHECKPOINT_FILE.fullmatch(f.name) or TEMP_FILE.fullmatch(f.name))
            ]
        elif entry.name in TRACKER_DIRS and entry.is_dir():
            found += _foreign_tracker_files(entry, TRACKER_FILES[entry.name])
        elif not entry.is_file() or not (entry.name in ROOT_FILES or TEMP_FILE.fullmatch(entry.name)):
            found.append(entry)
    return found


# What the trackers write in their folders (at any depth for wandb's run folders): anything else is the user's.
TRACKER_FILES = {
    "tensorboard": re.compile(r"events\.out\.tfevents\..+"),
    "wandb": re.compile(r"(offline-)?run-[\w.-]+|latest-run|debug(-internal|-cli\.[\w.-]+)?\.log|settings"),
}


def _foreign_tracker_files(folder: Path, written: re.Pattern) -> list[Path]:
    found = []
    for entry in sorted(folder.iterdir()):
        inside = not entry.is_symlink() or folder.resolve() in entry.resolve().parents
        if folder.name == "wandb" and written.fullmatch(entry.name) and inside:
            continue  # a wandb run folder (its own files, whatever they are), or wandb's link into one
        if entry.is_symlink():
            found.append(entry)
        elif entry.is_dir():
            found += _foreign_tracker_files(entry, written)  # tensorboard's add_hparams: one folder per call
        elif not written.fullmatch(entry.name):
            found.append(entry)
    return found


def _never_started(root: Path) -> bool:
    """Only what a run leaves before its config.json exists: a lock, temp files, an empty checkpoints/."""

    def leftover(f):
        return f.name == LOCK_NAME or bool(TEMP_FILE.fullmatch(f.name))

    return (
        not foreign_files(root)
        and all(leftover(f) or f.name == "checkpoints" for f in root.iterdir())
        and all(TEMP_FILE.fullmatch(f.name) for f in _listing(root / "checkpoints"))
    )


def _listing(directory: Path) -> list[Path]:
    return sorted(directory.iterdir()) if directory.is_dir() else []


def _check_overwritable(root: Path) -> None:
    """--overwrite deletes: only a zocli run, never the cwd or its ancestors, never through a symlink."""
    cwd = Path.cwd().resolve()
    if root.is_symlink():
        raise RunDirError(f"--overwrite refuses {root}: it is a symbolic link; pass the directory itself")
    if root.resolve() == cwd or root.resolve() in cwd.parents:
        raise RunDirError(f"--overwrite refuses {root}: it is the current directory or one of its parents")
    if not is_run(root):
        raise RunDirError(
            f"--overwrite only replaces a zocli run directory, and {root} is not one "
            f"(no config.json written by zocli); choose another --out"
        )
    foreign = foreign_files(root)
    if foreign:
        raise RunDirError(
            f"--overwrite refuses {root}: it holds {str(foreign[0].relative_to(root))!r}"
            f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}, which zocli did not "
            f"write; move it away or choose another --out"
        )


def _clear(root: Path) -> None:
    """Delete a previous run's files, commit point first, so that a kill half-way leaves a run with
    fewer committed tasks, never a manifest naming deleted files. config.json stays: the new run
    replaces it atomically, so the directory is always recognisably a run."""
    checkpoints = _listing(root / "checkpoints")
    doomed = [
        root / "summary.json",
        root / "checkpoints" / "manifest.json",
        root / "checkpoints" / "resume.safetensors",
        *checkpoints,
        root / "metrics.jsonl",
        *(f for f in root.iterdir() if TEMP_FILE.fullmatch(f.name)),
    ]
    for path in doomed:
        path.unlink(missing_ok=True)
    for name in TRACKER_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)


@dataclass(frozen=True)
class RunDir:
    """A run directory; writes go through it only while it holds the run's lock (`create`, `locked`)."""

    root: Path
    lock: RunLock | None = field(default=None, compare=False, repr=False)

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

    # ------------------------------------------------------------------------------------------ opening

    @staticmethod
    def check_available(root: Path, overwrite: bool = False) -> None:
        """Refuse a target that is not free to write (checked before any expensive work, and again under the lock)."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise RunDirError(f"--out {root} exists and is not a directory")
        if not root.is_dir() or _never_started(root):
            return
        if not overwrite:
            raise RunDirError(
                f"run directory {root} is not empty; pass --resume to continue it or --overwrite to replace it"
            )
        _check_overwritable(root)

    @classmethod
    def create(cls, root: Path, identity: dict[str, Any], overwrite: bool = False) -> RunDir:
        """A fresh run, locked, whose first file is config.json = `identity` (the run's zocli marker).

        A failure before config.json is in place leaves nothing that blocks the next attempt: at most
        an empty directory, a lock file and temp files, which a plain `train` reuses.
        """
        root = Path(root)
        cls.check_available(root, overwrite)
        made = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {root}: {exc.strerror or exc}") from None
        lock = RunLock(root)
        try:
            cls.check_available(root, overwrite)  # another process may have written it meanwhile
            _clear(root)
            files.write_json(root / "config.json", identity)
            (root / "checkpoints").mkdir(exist_ok=True)
        except BaseException as exc:
            lock.release()
            if made and _never_started(root):
                shutil.rmtree(root, ignore_errors=True)  # only our own lock and temp files are in it
            if isinstance(exc, OSError):
                raise RunDirError(f"cannot write to run directory {root}: {exc.strerror or exc}") from None
            raise
        return cls(root, lock)

    @classmethod
    def open(cls, root: Path) -> RunDir:
        """An existing run, for reading; anything without zocli's config.json is not a run directory."""
        run = cls(Path(root))
        if not run.root.exists():
            raise RunDirError(f"{root} does not exist")
        if not run.root.is_dir():
            raise RunDirError(f"{root} is not a directory")
        links = [
            p
            for p in (
                run.config,
                run.metrics,
                run.summary,
                run.checkpoints,
                run.manifest,
                run.state_file,
                run.root / LOCK_NAME,
            )
            if p.is_symlink()
        ]
        if links:
            raise RunDirError(f"{links[0]} is a symbolic link; a run directory holds only its own files")
        if not run.config.is_file():
            raise RunDirError(f"{root} is not a zocli run directory (no config.json)")
        if not is_run(run.root):
            raise RunDirError(f"{run.config} was not written by zocli or is damaged (no zocli_version/config)")
        return run

    def locked(self) -> RunDir:
        """This run with its lock held: the only way to get a RunDir that may write."""
        return RunDir(self.root, RunLock(self.root))

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------------------------------ writing

    def check_in_place(self) -> None:
        """Fail before writing if the directory was deleted, moved or replaced under the running process."""
        if self.lock is None:
            raise RunDirError(f"{self.root}: written without holding its lock (a bug)")
        if not self.lock.still_in_place():
            raise RunDirError(
                f"run directory {self.root} was deleted or moved while this run was writing to it; "
                f"stopped without writing more"
            )

    def write_bytes(self, path: Path, data: bytes) -> None:
        self.check_in_place()
        files.atomic_write(path, data)

    def write_json(self, path: Path, obj: Any) -> None:
        self.write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())

    def remove(self, path: Path) -> None:
        self.check_in_place()
        path.unlink(missing_ok=True)

    def log(self, event: dict[str, Any]) -> None:
        """Append one event to metrics.jsonl, flushed to disk before returning."""
        self.check_in_place()
        fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "a") as handle:
            handle.write(json.dumps(event) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def clean_partial_writes(self) -> None:
        """Remove temp files of atomic writes that a killed process never renamed into place."""
        self.check_in_place()  # only the lock holder may: another writer's temp file may be in flight
        for directory in (self.root, self.checkpoints):
            for tmp in _listing(directory):
                if TEMP_FILE.fullmatch(tmp.name) and not tmp.is_symlink() and tmp.is_file():
                    tmp.unlink(missing_ok=True)

    def truncate_log(self, length: int) -> None:
        """Drop metrics.jsonl events written after the last commit point (they will be redone).

        A log shorter than the commit point, or not ending in a whole line there, was cut or edited:
        appending to it would glue new events onto a broken line, so it is refused.
        """
        self.check_in_place()
        size = self.log_size()
        if size < length or (length and self._byte_at(length - 1) != b"\n"):
            raise RunDirError(
                f"{self.metrics} holds {size} bytes, but its last commit point ends a line at "
                f"byte {length}: it was cut or edited; restore it, or start afresh with --overwrite"
            )
        if size > length:
            with open(self.metrics, "r+b") as handle:
                handle.truncate(length)
                os.fsync(handle.fileno())

    def _byte_at(self, offset: int) -> bytes:
        with open(self.metrics, "rb") as handle:
            handle.seek(offset)
            return handle.read(1)

    def log_size(self) -> int:
        return self.metrics.stat().st_size if self.metrics.is_file() else 0

    # ------------------------------------------------------------------------------------------ reading

    def tasks_done(self) -> int:
        """The tasks the manifest counts as committed (0 before the first commit, or for a count that is not
        one), read as plain JSON: checkpoint's strict reader would import torch into the fast checks."""
        if not self.manifest.is_file():
            return 0
        manifest = files.read_json(self.manifest)
        done = manifest.get("tasks_done") if isinstance(manifest, dict) else None
        return done if isinstance(done, int) else 0

    def saved(self) -> dict[str, Any]:
        """config.json: the resolved config, its sources, the zocli version and the ZO plan."""
        return files.read_json(self.config)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        try:
            rows = [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]
        except ValueError as exc:
            raise RunDirError(f"{self.metrics}: not one JSON object per line ({exc})") from None
        return [r for r in rows if kind is None or r.get("event") == kind]

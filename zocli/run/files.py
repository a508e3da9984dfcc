"""Crash-safe files for a run directory: atomic writes that respect the umask, JSON through them, and
`RunDirError`, which every run-directory operation raises.

A kill at any instant leaves a file's old contents or its new ones, never a torn write: at most a temp
file (`TEMP_FILE`) beside it, which the next holder of the run's lock removes.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from zocli.errors import ZocliError


class RunDirError(ZocliError, RuntimeError):
    """The run directory cannot be used as asked (exists, not writable, not a run, in use, gone)."""


TEMP_FILE = re.compile(r"\.[\w.-]+\.[\w]+\.tmp")  # atomic_write's mkstemp names: .NAME.XXXXXXXX.tmp


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory, fsync, rename, fsync the directory.

    The directory must exist: re-creating a deleted run directory would let a run whose directory was
    removed under it carry on writing into a fresh, half-empty copy.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; run files are as shareable as any other
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, and bytes that are not UTF-8
        raise RunDirError(f"{path}: cannot read JSON ({exc})") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

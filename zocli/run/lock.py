"""The run's lock: one process writes a run directory at a time, and learns if it vanishes under it."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from zocli.run.files import RunDirError

LOCK_NAME = ".zocli.lock"


class RunLock:
    """An exclusive POSIX lock on RUN/.zocli.lock, holding the owner's pid.

    fcntl record locks belong to the process (DataLoader workers forked from it do not inherit them)
    and vanish when it dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, root: Path):
        self.path = root / LOCK_NAME
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot lock run directory {root}: {exc.strerror or exc}") from None
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self.fd)
            raise RunDirError(
                f"run directory {root} is in use by another zocli process (pid {holder}); "
                f"wait for it to finish or stop it"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        self.inode = _inode(os.fstat(self.fd))

    def still_in_place(self) -> bool:
        """Is the locked file still the one at RUN/.zocli.lock (the directory not deleted, moved or replaced)?"""
        try:
            return _inode(os.lstat(self.path)) == self.inode
        except OSError:
            return False

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = -1


def _inode(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino

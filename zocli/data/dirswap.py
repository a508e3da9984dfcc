"""Replacing a directory as one step that a kill can interrupt but never leave half done.

`prepare` builds a dataset in a hidden temporary sibling `.NAME.tmp-<pid>-XXXX`, marks the complete copy
`ready`, then moves the old copy aside and the new one in: two atomic renames. A process killed between
them leaves NAME missing; `recover` — run before every prepare and load — finishes that swap (or moves the
old copy back) for every temporary directory whose process is dead, and deletes it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

READY_MARK = "dataset_dict.json"  # what a complete copy holds (datasets.save_to_disk writes it last)


@contextmanager
def staging(target: Path) -> Iterator[Path]:
    """A temporary sibling of `target`, deleted afterwards whatever happens."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # the pid in the name lets a later process tell a dead prepare's leftovers from a live one
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def swap_in(tmp: Path, new: Path, target: Path) -> None:
    """Mark `new` ready, then put it at `target`; an old copy is moved aside into `tmp` first
    (os.replace cannot replace a non-empty directory; both renames are atomic on one filesystem)."""
    os.replace(new, tmp / "ready")
    if target.exists():
        os.replace(target, tmp / "old")
    os.replace(tmp / "ready", target)


def recover(target: Path) -> None:
    """Finish or undo the swaps of dead processes, and delete their temporary directories."""
    if not target.parent.is_dir():
        return
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        if not tmp.is_dir() or _alive(tmp.name.removeprefix(f".{target.name}.tmp-").split("-")[0]):
            continue
        for kept in (tmp / "ready", tmp / "old"):  # the new copy if it was complete, else the old one
            if not target.exists() and (kept / READY_MARK).is_file():
                os.replace(kept, target)
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: str) -> bool:
    """Whether the process that named a temporary directory still runs (an old-style name counts as dead)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True

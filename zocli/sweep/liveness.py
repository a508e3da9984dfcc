"""Is an attempt without a recorded end still running? Answered so it survives hosts and pid reuse.

An attempt records its host, pid, the process's start time (Linux: /proc/PID/stat's starttime, in clock
ticks since boot) and the boot id. On this host, the attempt is running only if a process with that pid
lives *and* started at the recorded time: after the run died its pid may belong to another process (or the
machine rebooted), and that is dead, not running. On another host nothing can be tested from here: the
attempt is "unknown" (a sweep killed inside an allocation, then looked at from the login node); the sweep
leaves it alone unless the user says `--takeover` (README, "Many runs": after a lost allocation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

RUNNING, DEAD, UNKNOWN = "running", "dead", "unknown"


def host() -> str:
    return os.uname().nodename


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def start_time(pid: int) -> int | None:
    """The process's start (clock ticks since boot), or None where /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of proc(5), counted from field 3
    except (IndexError, ValueError):
        return None


def identity(pid: int) -> dict[str, Any]:
    """What an attempt records about the process running it."""
    return {"host": host(), "pid": pid, "pid_start": start_time(pid), "boot": boot_id()}


def liveness(attempt: dict[str, Any]) -> str:
    """running, dead or unknown, for an attempt with no recorded end."""
    if attempt.get("host") != host() or not isinstance(attempt.get("pid"), int):
        return UNKNOWN
    if attempt.get("boot") and boot_id() and attempt["boot"] != boot_id():
        return DEAD  # this machine rebooted since
    pid = attempt["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return DEAD
    except PermissionError:
        pass  # it exists; whose it is, its start time says
    except (OverflowError, ValueError):
        return DEAD
    recorded = attempt.get("pid_start")
    if recorded is not None and start_time(pid) not in (None, recorded):
        return DEAD  # the pid now belongs to another process
    return RUNNING

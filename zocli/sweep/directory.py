"""A sweep's directory: its runs, named under one root, and each run's state, read back from disk.

SWEEP/sweep.json          the manifest: every run's name, presets and flags (written before any run starts)
SWEEP/<name>/             each run's own run directory (zocli train --out)
SWEEP/status/<name>.json  the attempts at that run: action, start and end times, exit code, error
SWEEP/logs/<name>.log     the run's stdout and stderr, attempts appended

A run's state is read from its directory and its attempts, never held in memory: finished (summary.json),
partial (config.json, so `train --resume` continues it), failed (its last attempt's error), running (an
attempt under way) or pending. The runs come from `grid`; launching them (local queue, SLURM) is `launch`.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zocli.data import catalogue
from zocli.errors import ZocliError
from zocli.resolve import resolve
from zocli.run.files import RunDirError, read_json, write_json
from zocli.run.rundir import RunDir, is_run
from zocli.sweep.grid import RunSpec
from zocli.sweep.liveness import RUNNING, UNKNOWN, identity, liveness

MANIFEST = "sweep.json"
FORMAT = 1


class SweepError(ZocliError, RuntimeError):
    """The sweep directory cannot be used as asked (another sweep's runs, damaged manifest)."""


@dataclass(frozen=True)
class Sweep:
    root: Path
    runs: tuple[RunSpec, ...]

    def run_dir(self, name: str) -> Path:
        check_name(name, self.root / MANIFEST)
        return self.root / name

    def status_file(self, name: str) -> Path:
        return self.root / "status" / f"{name}.json"

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def get(self, name: str) -> RunSpec:
        return next(run for run in self.runs if run.name == name)


def create(root: Path, runs: list[RunSpec], data_root: str | None = None) -> Sweep:
    """The sweep at `root`: new, or an existing one extended with new runs. A run name it already holds
    must mean the same config, or the directory holds another sweep."""
    root = Path(root)
    known = {r.name: r for r in _read(root).runs} if (root / MANIFEST).is_file() else {}
    for run in runs:
        if run.name in known and known[run.name].as_dict() != run.as_dict():
            raise SweepError(
                f"{root} already holds a run {run.name!r} with another config "
                f"({_diff(known[run.name], run)}); choose another --out"
            )
    merged = [*known.values(), *(r for r in runs if r.name not in known)]
    if not known and root.exists() and any(root.iterdir()):
        raise SweepError(f"{root} exists and is not a sweep (no {MANIFEST}); choose another --out")
    for folder in ("status", "logs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    previous = read_json(root / MANIFEST) if known else {}
    write_json(
        root / MANIFEST,
        {
            "zocli_sweep": FORMAT,
            "data_root": data_root or previous.get("data_root"),
            "runs": [r.as_dict() for r in merged],
        },
    )
    return Sweep(root, tuple(merged))


def _diff(a: RunSpec, b: RunSpec) -> str:
    keys = sorted(set(a.flags) | set(b.flags))
    changed = [f"{k}: {a.flags.get(k)} vs {b.flags.get(k)}" for k in keys if a.flags.get(k) != b.flags.get(k)]
    return "; ".join(changed) or f"presets {list(a.presets)} vs {list(b.presets)}"


def open_sweep(root: Path) -> Sweep:
    return _read(Path(root))


def repair(sweep: Sweep) -> None:
    """Folders a sweep writes into, made again if deleted (before any run starts)."""
    for folder in ("status", "logs"):
        (sweep.root / folder).mkdir(parents=True, exist_ok=True)


def _read(root: Path) -> Sweep:
    if not (root / MANIFEST).is_file():
        raise SweepError(f"{root} is not a sweep directory (no {MANIFEST})")
    try:
        saved = read_json(root / MANIFEST)
        runs = tuple(RunSpec(r["name"], tuple(r["presets"]), dict(r["flags"])) for r in saved["runs"])
    except (RunDirError, KeyError, TypeError) as exc:
        raise SweepError(f"{root / MANIFEST} is damaged ({exc})") from None
    for run in runs:
        check_name(run.name, root / MANIFEST)
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise SweepError(f"{root / MANIFEST} is damaged (a run name is listed twice)")
    return Sweep(root, runs)


def check_name(name: object, where: Path) -> None:
    """A run name is one plain path component: it names SWEEP/<name>/, status/<name>.json, logs/<name>.log,
    and nothing outside the sweep (no separator, no leading dot, not absolute, not empty)."""
    bad = (
        not isinstance(name, str)
        or not name
        or name.startswith(".")
        or any(c in name for c in "/\\\0")
        or Path(name).is_absolute()
        or len(name.encode("utf-8", "surrogateescape")) > 200
    )
    if bad:
        raise SweepError(
            f"{where}: run name {name!r} is not a plain name (no path separators, no leading dot, at most "
            f"200 bytes); a sweep reads and writes only inside its directory"
        )


def data_root(sweep: Sweep) -> str | None:
    path = sweep.root / MANIFEST
    return read_json(path).get("data_root") if path.is_file() else None


# ----------------------------------------------------------------------------------------------
# state and commands


STATES = ("finished", "partial", "running", "unknown", "failed", "pending")


@dataclass(frozen=True)
class RunState:
    name: str
    state: str  # finished | partial | failed | running | unknown (another host's attempt) | pending
    tasks_done: int
    attempts: int
    error: str | None = None
    tasks_total: int | None = None  # the run's sequence length (None: its benchmark cannot be read yet)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def attempts(sweep: Sweep, name: str) -> list[dict[str, Any]]:
    path = sweep.status_file(name)
    return read_json(path)["attempts"] if path.is_file() else []


def state(sweep: Sweep, name: str) -> RunState:
    from dataclasses import replace

    return replace(_state(sweep, name), tasks_total=_tasks_total(sweep, name))


def _tasks_total(sweep: Sweep, name: str) -> int | None:
    try:
        run = sweep.get(name)
        cfg = resolve(list(run.presets), {**run.flags, "data_root": data_root(sweep) or None}).config
        from zocli.data import location

        return catalogue.split(location.benchmark(cfg), cfg.inc, cfg.base).n_tasks
    except Exception:  # a user benchmark not prepared yet, a preset since renamed: unknown, not an error
        return None


def _state(sweep: Sweep, name: str) -> RunState:
    root, tries = sweep.run_dir(name), attempts(sweep, name)
    last = tries[-1] if tries else {}
    done = _tasks_done(root)
    if (root / "summary.json").is_file():
        return RunState(name, "finished", done, len(tries))
    if last and "ended" not in last:
        alive = liveness(last)
        if alive == RUNNING:
            return RunState(name, "running", done, len(tries))
        if alive == UNKNOWN:
            return RunState(
                name,
                "unknown",
                done,
                len(tries),
                f"an attempt on host {last.get('host')} (pid {last.get('pid')}) has no recorded end and cannot be "
                f"tested from here; if it is gone, continue it with --takeover",
            )
    if last.get("error"):
        return RunState(name, "failed", done, len(tries), last["error"])
    return RunState(name, "partial" if is_run(root) else "pending", done, len(tries))


def _tasks_done(root: Path) -> int:
    try:
        return RunDir(root).tasks_done()
    except RunDirError:  # an unreadable manifest: the run shows as not started, its resume says why
        return 0


def states(sweep: Sweep) -> list[RunState]:
    return [state(sweep, run.name) for run in sweep.runs]


def command(sweep: Sweep, run: RunSpec, where: str | None = None, nproc: int = 1) -> tuple[str, list[str]]:
    """(action, argv): resume a run that has started, else train it fresh; `where` overrides the data root
    the manifest records; `nproc` > 1 runs it on that many ranks (`--nproc`, a place flag like the data root)."""
    base = [sys.executable, "-m", "zocli", "train"]
    where = where or data_root(sweep)
    place = ["--data-root", where] if where else []
    if is_run(sweep.run_dir(run.name)):  # always --nproc: a resume would otherwise take the ranks it had
        ranks = ["--nproc", str(nproc)]
        return "resume", [*base, "--resume", str(sweep.run_dir(run.name)), *place, *ranks, "--json"]
    ranks = ["--nproc", str(nproc)] if nproc > 1 else []
    return "start", [*base, *run.train_args(), *place, *ranks, "--out", str(sweep.run_dir(run.name)), "--json"]


def record_start(sweep: Sweep, name: str, action: str, pid: int, where: str, ranks: int = 1) -> None:
    """A new attempt, with the ranks (processes) the run has in it."""
    tries = attempts(sweep, name)
    if tries and "ended" not in tries[-1]:  # its sweep died before it could record the end
        tries[-1]["outcome"] = "unrecorded (the sweep that ran it was killed)"
    tries.append({"action": action, "started": time.time(), **identity(pid), "where": where, "ranks": ranks})
    write_json(sweep.status_file(name), {"name": name, "attempts": tries})


def record_end(sweep: Sweep, name: str, returncode: int) -> None:
    """The attempt's outcome: 0 done, 130 interrupted (resumable), anything else failed with its error line."""
    tries = attempts(sweep, name)
    tries[-1].update(
        ended=time.time(),
        returncode=returncode,
        error=None if returncode in (0, 130) else _error_line(sweep.log_file(name), returncode),
    )
    write_json(sweep.status_file(name), {"name": name, "attempts": tries})


BOX = "╭╮╰╯─│┌┐└┘━┃"  # the characters of the box Click and Rich draw around a usage error


def _error_line(log: Path, returncode: int) -> str:
    lines = (
        [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.is_file() else []
    )
    errors = [line for line in lines if line.startswith("error:")]
    # a usage error Click draws in a box: its message, never a border line
    content = [line.strip(BOX + " ") for line in lines if line[:1] in BOX or line[-1:] in BOX]
    lines = [line for line in (content if content and not errors else lines) if line.strip(BOX + " ")]
    text = errors[-1] if errors else lines[-1] if lines else ""
    return (
        f"exit {returncode}: {text}"[:500]
        if text
        else f"exit {returncode} (killed by signal {-returncode})"
        if returncode < 0
        else f"exit {returncode}"
    )


def as_json(sweep: Sweep) -> dict[str, Any]:
    found = states(sweep)
    counts = {kind: sum(s.state == kind for s in found) for kind in STATES}
    return {
        "sweep": str(sweep.root),
        "counts": counts,
        "runs": [
            {
                **s.as_dict(),
                **sweep.get(s.name).as_dict(),
                "run_dir": str(sweep.run_dir(s.name)),
                "command": None if s.state == "finished" else command(sweep, sweep.get(s.name))[1],
            }
            for s in found
        ],
    }

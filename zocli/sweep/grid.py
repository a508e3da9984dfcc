"""A sweep: a grid of train configurations × seeds, expanded into named runs under one directory.

SWEEP/sweep.json          the manifest: every run's name, presets and flags (written before any run starts)
SWEEP/<name>/             each run's own run directory (zocli train --out)
SWEEP/status/<name>.json  the attempts at that run: action, start and end times, exit code, error
SWEEP/logs/<name>.log     the run's stdout and stderr, attempts appended

A run's state is read from its directory and its attempts, never held in memory: finished (summary.json),
partial (config.json, so `train --resume` continues it), failed (its last attempt's error), running (an
attempt under way) or pending. Launching (local queue, SLURM) is in `launch`.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zocli.config import KEYS, OPTIONS, Config, ConfigError, did_you_mean, resolve, suggest_key
from zocli.data import catalogue
from zocli.errors import ZocliError
from zocli.flags import NONE_GIVEN
from zocli.run.files import RunDirError, read_json, write_json
from zocli.run.rundir import RunDir, is_run
from zocli.sweep.liveness import RUNNING, UNKNOWN, identity, liveness

MANIFEST = "sweep.json"
FORMAT = 1
MAX_RUNS = 10_000  # configurations × seeds of one sweep: more is a typo (0-9999999), not a plan


class SweepError(ZocliError, RuntimeError):
    """The sweep directory cannot be used as asked (another sweep's runs, damaged manifest)."""


@dataclass(frozen=True)
class RunSpec:
    name: str
    presets: tuple[str, ...]
    flags: dict[str, Any]  # config keys -> values, the seed among them

    def train_args(self) -> list[str]:
        """`zocli train` arguments that give this run its config (without --out)."""
        args = [arg for preset in self.presets for arg in ("--preset", preset)]
        return args + [arg for key, value in self.flags.items() for arg in OPTIONS[key].argv(value)]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "presets": list(self.presets), "flags": self.flags}


@dataclass(frozen=True)
class Grid:
    """What the user asked for: base presets, axes (key -> values; "preset" adds presets) and seeds."""

    presets: tuple[str, ...] = ()
    axes: dict[str, list[Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)


def parse_value(key: str, text: str) -> Any:
    """A `--grid` value as its config field's type (`none` for an unset optional)."""
    if key == "preset":
        return text
    try:
        return OPTIONS[key].parse(text)
    except ValueError as exc:
        raise ConfigError(f"--grid {key}={text}: {exc}") from None


def parse_axes(items: list[str]) -> dict[str, list[Any]]:
    """Repeated `--grid key=v1,v2` as {key: [values]}; a key given twice is an error."""
    axes: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values:
            raise ConfigError(f"--grid {item!r}: write KEY=V1,V2,... (e.g. --grid lr=1e-3,3e-3)")
        _check_key(key, "--grid")
        if key in axes:
            raise ConfigError(f"--grid {key} is given twice; list every value in one --grid {key}=...")
        axes[key] = [parse_value(key, v.strip()) for v in values.split(",")]
    return axes


def parse_seeds(text: str) -> tuple[int, ...]:
    """`0-4`, `0,2,7` or `3` as seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            span = range(int(first), int(last or first) + 1)
        except ValueError:
            raise ConfigError(f"--seeds {text!r}: write a range (0-4) or a list (0,2,7)") from None
        if len(seeds) + len(span) > MAX_RUNS:
            raise ConfigError(f"--seeds {text!r}: more than {MAX_RUNS} seeds; a sweep holds at most {MAX_RUNS} runs")
        seeds += span
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r}: no seeds, or a seed repeated")
    return tuple(seeds)


def load_grid(path: Path) -> Grid:
    """A TOML grid: `presets = [...]`, `seeds = "0-4"`, fixed keys at the top, axes under `[grid]`."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"grid file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    presets = raw.pop("presets", raw.pop("preset", []))
    seeds = raw.pop("seeds", None)
    table = raw.pop("grid", {})
    axes = {}
    for key, values in [*raw.items(), *table.items()]:
        key = key.replace("-", "_")
        _check_key(key, f"grid file {Path(path).name}:")
        axes[key] = list(values) if isinstance(values, list) else [values]
    seeds = parse_seeds(str(seeds)) if isinstance(seeds, (str, int)) else tuple(seeds) if seeds else (0,)
    return Grid(tuple([presets] if isinstance(presets, str) else presets), axes, seeds)


def _check_key(key: str, where: str) -> None:
    if key != "preset" and key not in KEYS:
        raise ConfigError(f"{where} unknown key {key!r}{suggest_key(key) or did_you_mean(key, (*KEYS, 'preset'))}")
    if key in ("seed", "data_root"):
        raise ConfigError(
            f"{where} {key} is not a grid key: use --seeds"
            if key == "seed"
            else f"{where} data_root is where data live, not a grid key: use --data-root"
        )


def expand(grid: Grid) -> list[RunSpec]:
    """Every combination of the axes (in the order given), for every seed; each config is validated here,
    so a bad value is a usage error before any run starts. Names hold the values that vary."""
    keys = list(grid.axes)
    varying = [k for k in keys if len(grid.axes[k]) > 1]
    total = len(grid.seeds)
    for k in keys:
        total *= len(grid.axes[k])
    if total > MAX_RUNS:
        raise ConfigError(f"the grid has {total} runs (configurations × seeds); a sweep holds at most {MAX_RUNS}")
    runs = []
    for combo in itertools.product(*(grid.axes[k] for k in keys)):
        values = dict(zip(keys, combo))
        extra = tuple(p for p in str(values.pop("preset", "")).split("+") if p)
        for seed in grid.seeds:
            flags = {**values, "seed": seed}
            cfg = resolve([*grid.presets, *extra], _as_given(flags)).config
            if not catalogue.is_user(cfg.benchmark):  # the user's classes are known once prepared: the run checks
                catalogue.split(catalogue.get(cfg.benchmark), cfg.inc, cfg.base)  # as `train` checks first
            _check_layers(cfg)
            label = [
                _slug(str(values.get(k, "+".join(extra))) if k == "preset" else f"{k}-{_slug(str(values[k]))}")
                for k in varying
            ]
            runs.append(RunSpec("_".join([*label, f"s{seed}"]), (*grid.presets, *extra), flags))
    names = [run.name for run in runs]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # e.g. lr=0.001,1e-3: the same value twice
        raise ConfigError(f"the grid names two runs {twice[0]!r}: a value is listed twice")
    return runs


def _as_given(flags: dict[str, Any]) -> dict[str, Any]:
    # a None in the grid is `none` on the run's command line: it clears what a preset set
    return {key: NONE_GIVEN if value is None else value for key, value in flags.items()}


def _check_layers(cfg: Config) -> None:
    """--layers-n against the model's depth, as `train` would find only after a run started."""
    if cfg.layers_n is None:
        return
    from zocli.method import backbone
    from zocli.method.plan import frozen_units, zo_units

    depth = backbone.declared_depths(cfg.model, cfg.pretrained)
    if all(isinstance(v, int) for v in depth.values()):
        zo_units(cfg, depth), frozen_units(cfg, depth)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


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

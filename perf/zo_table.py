"""Does ZO learn? Runs named configurations × seeds of `zocli train` and prints mean ± std (prints figures).

The rows × seeds are one `zocli sweep` (zocli.sweep.launch's local queue: a `python -m zocli train --preset demo ...`
process per run, one torch thread each, `--jobs` at a time) under --out; finished runs are skipped and
interrupted ones resume, so an interrupted table continues. Reproduce the README's table:
    python perf/zo_table.py --table acceptance --seeds 0-4 --jobs 2
    python perf/zo_table.py --table select --seeds 0-1 --jobs 2     # how the default rule was chosen
    python perf/zo_table.py --table queries --seeds 0-1 --jobs 2    # ... and its number of directions
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from zocli.config import OPTIONS
from zocli.sweep import directory, grid, launch

PLANS = {  # what is ZO (or frozen): the study's branch-wise settings and one layer-wise one
    "dual": ["--vision", "{m}", "--language", "{m}"],
    "vision": ["--vision", "{m}"],
    "language": ["--language", "{m}"],
    "vision hop-odd": ["--vision", "{m}", "--layers", "hop-odd"],
}
RULES = {  # the controls, the study's literal reading, and the new default
    "frozen": ["frozen"],
    "noise": ["zo", "--zo-rule", "noise"],
    "random-search": ["zo", "--zo-rule", "random-search"],
    "ZO plain (λ=1)": ["zo", "--preset", "paper-literal", "--normalize", "none"],
    "MoZO (paper-literal)": ["zo", "--preset", "paper-literal"],
    "default (zo-adam)": ["zo"],
}


def _flags(plan: str, mode: str) -> list[str]:
    """The flags that make `plan`'s units `mode` (zo, frozen)."""
    return [a.replace("{m}", mode) for a in PLANS[plan]]


def acceptance() -> dict[str, list[str]]:
    table = {"FO": []}
    for plan in PLANS:
        for rule, (mode, *extra) in RULES.items():
            table[f"{plan} · {rule}"] = _flags(plan, mode) + extra
    return table


def select() -> dict[str, list[str]]:
    table = {}
    for plan in ("dual", "vision"):
        flags, table[f"{plan} · frozen"] = _flags(plan, "zo"), _flags(plan, "frozen")
        for scale in ("0.3", "1", "3", "10", "30"):
            for rule in ("adam", "sgd --normalize sign"):
                for mode in ("--conservative", "--aggressive"):
                    name = "sign-sgd" if "sign" in rule else rule
                    table[f"{plan} · {name} {mode[2:]} λ {scale}"] = flags + [
                        "--zo-rule",
                        *rule.split(),
                        "--zo-lr-scale",
                        scale,
                        mode,
                    ]
    return table


def queries() -> dict[str, list[str]]:
    """ZO-Adam with q directions per step (2q estimate forwards): more information per step, at a cost."""
    table = {}
    for plan in ("dual", "vision"):
        flags, table[f"{plan} · frozen"] = _flags(plan, "zo"), _flags(plan, "frozen")
        for scale in ("3", "5"):
            for q in ("1", "2", "4", "8"):
                table[f"{plan} · adam λ {scale} q {q}"] = flags + ["--zo-lr-scale", scale, "--queries", q]
    return table


TABLES = {"acceptance": acceptance, "select": select, "queries": queries}


def run_spec(name: str, flags: list[str], seed: int) -> grid.RunSpec:
    """A table row's `train` flags as a sweep run: the demo preset, then the row's presets and values."""
    presets, values, args = ["demo"], {}, list(flags)
    switches = {
        spelling: (option.name, value)
        for option in OPTIONS.values()
        if option.kind is bool
        for spelling, value in ((option.spelling, True), (option.negative, False))
    }
    while args:
        flag = args.pop(0)
        if flag == "--preset":
            presets.append(args.pop(0))
        elif flag in switches:
            key, value = switches[flag]
            values[key] = value
        else:
            key = flag[2:].replace("-", "_")
            values[key] = grid.parse_value(key, args.pop(0))
    return grid.RunSpec(f"{_slug(name)}_s{seed}", tuple(presets), {**values, "seed": seed})


def run_all(specs: list[grid.RunSpec], out: Path, data_root: str, jobs: int) -> directory.Sweep:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    table = directory.create(out, specs, data_root)
    failed = [s for s in launch.run_local(table, launch.local_slots(None, jobs)) if s.state != "finished"]
    if failed:
        raise SystemExit("\n".join(f"{s.name}: {s.state} {s.error or ''}" for s in failed))
    return table


def row(name: str, runs: list[Path]) -> str:
    summaries = [json.loads((r / "summary.json").read_text()) for r in runs]
    events = [json.loads(line) for r in runs for line in (r / "metrics.jsonl").read_text().splitlines()]
    trains = [e for e in events if e["event"] == "train"]
    cells = [
        _mean_std([s["last"] for s in summaries]),
        _mean_std([s["avg"] for s in summaries]),
        f"{statistics.mean(e['forwards_per_step'] for e in trains):.1f}",
        f"{1000 * statistics.mean(e['step_seconds'] for e in trains):.0f}",
    ]
    deltas = [e["zo_loss_delta"] for e in trains if e.get("zo_loss_delta") is not None]
    cells.append(f"{statistics.mean(deltas):+.4f}" if deltas else "")
    return f"| {name} | " + " | ".join(cells) + " |"


def _mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def _seeds(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", choices=sorted(TABLES), default="acceptance")
    parser.add_argument("--only", default="", help="comma-separated substrings: run just the matching rows")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/zo-table"))
    parser.add_argument("--data-root", default=os.path.expanduser(os.environ.get("ZOCLI_DATA", "~/.cache/zocli")))
    args = parser.parse_args()
    table = {
        k: v for k, v in TABLES[args.table]().items() if not args.only or any(s in k for s in args.only.split(","))
    }
    seeds = _seeds(args.seeds)
    specs = {(n, s): run_spec(n, f, s) for n, f in table.items() for s in seeds}
    done = run_all(list(specs.values()), args.out, args.data_root, args.jobs)
    runs = {key: done.run_dir(spec.name) for key, spec in specs.items()}
    print(f"test-bed demo protocol, seeds {args.seeds}: mean ± std over seeds\n")
    print("| configuration | Last | Avg | forwards/step | ms/step | Σ ZO loss change/task |")
    print("|---|---|---|---|---|---|")
    for name in table:
        print(row(name, [runs[(name, s)] for s in seeds]))


if __name__ == "__main__":
    main()

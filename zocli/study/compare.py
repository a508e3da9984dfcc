"""Side-by-side comparison of finished (or partly finished) runs, read from their run directories.

Nothing is re-evaluated: each row comes from summary.json, or for an unfinished run from the accuracy
rows committed in its manifest. Columns are the config keys whose values differ between the runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zocli.config import KEYS, PLACE_KEYS
from zocli.data import catalogue
from zocli.run.checkpoint import read_manifest
from zocli.run.files import read_json
from zocli.run.metrics import summarize
from zocli.run.rundir import RunDir
from zocli.study import naming


@dataclass(frozen=True)
class RunRow:
    run: str
    config: dict[str, Any]
    tasks_done: int
    tasks_total: int
    last: float | None
    avg: float | None
    forgetting: float | None
    bwt: float | None
    seen_accuracy: list[float]  # A_t after each finished task: the accuracy curve
    peak_memory_bytes: int | None  # the training peak (summary.json's peak_memory.bytes)
    wall_seconds: float | None
    peak_memory_kind: str | None = None  # cuda_max_allocated | process_max_rss
    zero_shot_curve: list[float] | None = None  # the untouched model on the classes seen after each task
    presets: tuple[str, ...] = ()  # the presets the run's config was resolved from, in order
    flagged: tuple[str, ...] = ()  # the keys it set by flag (naming.flagged_keys)
    provenance: dict[str, Any] | None = None  # config.json's protocol and provenance record (DESIGN §8)


@dataclass(frozen=True)
class Comparison:
    differing: tuple[str, ...]  # config keys whose values differ between runs
    rows: tuple[RunRow, ...]

    def as_dict(self) -> dict:
        return {
            "differing": list(self.differing),
            "runs": [
                {
                    **{k: getattr(r, k) for k in r.__dataclass_fields__ if k not in ("config", "provenance")},
                    "config": {k: r.config.get(k) for k in self.differing},
                }
                for r in self.rows
            ],
        }


def compare(roots: list[Path]) -> Comparison:
    rows = [_row(RunDir.open(root)) for root in roots]
    differing = tuple(k for k in KEYS if k not in PLACE_KEYS and len({repr(r.config.get(k)) for r in rows}) > 1)
    return Comparison(differing, tuple(rows))


# What a run depends on beyond its config: a difference between compared runs is worth a warning.
PROVENANCE = {
    "protocol": lambda p: p.get("protocol"),
    "weights sha256": lambda p: (p.get("weights") or {}).get("sha256"),
    "data revision": lambda p: (p.get("data") or {}).get("revision"),
    "data content sha256": lambda p: (p.get("data") or {}).get("content_sha256"),
    "zocli version": lambda p: (p.get("versions") or {}).get("zocli"),
    "torch version": lambda p: (p.get("versions") or {}).get("torch"),
    "open_clip version": lambda p: (p.get("versions") or {}).get("open_clip"),
    "datasets version": lambda p: (p.get("versions") or {}).get("datasets"),
    "device": lambda p: (p.get("device") or {}).get("name"),
}


# Provenance keys that follow from config keys: when those vary, the table's columns already say it.
SHOWN_BY = {
    "protocol": ("benchmark", "inc", "base", "class_order", "prompt", "model", "pretrained"),
    "weights sha256": ("model", "pretrained"),
    "data revision": ("benchmark",),
    "data content sha256": ("benchmark",),
}


def differences(comparison: Comparison) -> list[str]:
    """One line per protocol or provenance key on which the compared runs differ (beyond the config keys
    that vary, which the table shows): numbers that may not be comparable, said before they are read."""
    lines = []
    recorded = [r for r in comparison.rows if r.provenance]
    if len(recorded) < len(comparison.rows) and recorded:
        unrecorded = ", ".join(Path(r.run).name for r in comparison.rows if not r.provenance)
        lines.append(f"no provenance recorded for {unrecorded} (trained by an older zocli): cannot check it")
    for key, read in PROVENANCE.items():
        values: dict[str, list[str]] = {}
        for r in recorded:
            values.setdefault(str(read(r.provenance)), []).append(Path(r.run).name)
        if set(SHOWN_BY.get(key, ())) & set(comparison.differing):  # the table already shows why
            continue
        if len(values) > 1:
            shown = "; ".join(
                f"{_short(v)} ({', '.join(runs[:3])}{', …' if len(runs) > 3 else ''})" for v, runs in values.items()
            )
            lines.append(f"runs differ in {key}: {shown}")
    return lines


def _short(value: str) -> str:
    return value[:12] if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else value


def _row(run: RunDir) -> RunRow:
    saved = read_json(run.config)
    row = _measured(run, saved)
    named = {
        "presets": tuple(saved.get("presets") or ()),
        "flagged": naming.flagged_keys(saved.get("sources") or {}),
        "provenance": saved.get("provenance"),
    }
    return replace(row, **named)


def _measured(run: RunDir, saved: dict) -> RunRow:
    config = saved["config"]
    total = _task_count(config, saved.get("benchmark"))
    if run.summary.is_file():
        s = read_json(run.summary)
        return RunRow(
            str(run.root),
            config,
            len(s["acc_matrix"]),
            total,
            s["last"],
            s["avg"],
            s["forgetting"],
            s["bwt"],
            s["seen_accuracy"],
            s["peak_memory"]["bytes"],
            s["wall_seconds"],
            s["peak_memory"].get("kind"),
            _zero_shot_curve(s),
        )
    manifest = read_manifest(run)
    if not manifest["tasks_done"]:
        return RunRow(str(run.root), config, 0, total, None, None, None, None, [], None, None)
    s = summarize(manifest["acc_matrix"], manifest["task_sizes"], (manifest.get("zero_shot") or {}).get("acc"))
    return RunRow(
        str(run.root),
        config,
        manifest["tasks_done"],
        total,
        s.last,
        s.avg,
        s.forgetting,
        s.bwt,
        list(s.seen_accuracy),
        None,
        manifest.get("wall_seconds"),
    )


def _zero_shot_curve(summary: dict) -> list[float] | None:
    """The untouched model after each task on the seen classes, softmax over them (runs from before it was
    recorded: None — the all-class row would not be comparable with the seen-class curve)."""
    return summary.get("zero_shot_curve")


def _task_count(config: dict, record: dict | None) -> int:
    # A folder:/hf: benchmark is rebuilt from the record config.json keeps, not from its prepared copy.
    bench = (
        catalogue.from_record(record) if catalogue.is_user(config["benchmark"]) else catalogue.get(config["benchmark"])
    )
    return catalogue.split(bench, config["inc"], config["base"]).n_tasks

"""Side-by-side comparison of finished (or partly finished) runs, read from their run directories.

Nothing is re-evaluated: each row comes from summary.json, or for an unfinished run from the accuracy
rows committed in its manifest. Columns are the config keys whose values differ between the runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zocli.config import KEYS, PLACE_KEYS
from zocli.data import catalogue
from zocli.run.checkpoint import read_manifest
from zocli.run.metrics import seen_accuracy, summarize
from zocli.run.rundir import RunDir, read_json


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


@dataclass(frozen=True)
class Comparison:
    differing: tuple[str, ...]  # config keys whose values differ between runs
    rows: tuple[RunRow, ...]

    def as_dict(self) -> dict:
        return {
            "differing": list(self.differing),
            "runs": [
                {
                    **{k: getattr(r, k) for k in r.__dataclass_fields__ if k != "config"},
                    "config": {k: r.config.get(k) for k in self.differing},
                }
                for r in self.rows
            ],
        }


def compare(roots: list[Path]) -> Comparison:
    rows = [_row(RunDir.open(root)) for root in roots]
    differing = tuple(k for k in KEYS if k not in PLACE_KEYS and len({repr(r.config.get(k)) for r in rows}) > 1)
    return Comparison(differing, tuple(rows))


def _row(run: RunDir) -> RunRow:
    saved = read_json(run.config)
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
    row, sizes = summary.get("zero_shot"), summary["task_sizes"]
    return [round(seen_accuracy(row[: t + 1], sizes), 2) for t in range(len(summary["acc_matrix"]))] if row else None


def _task_count(config: dict, record: dict | None) -> int:
    # A folder:/hf: benchmark is rebuilt from the record config.json keeps, not from its prepared copy.
    bench = (
        catalogue.from_record(record) if catalogue.is_user(config["benchmark"]) else catalogue.get(config["benchmark"])
    )
    return catalogue.split(bench, config["inc"], config["base"]).n_tasks

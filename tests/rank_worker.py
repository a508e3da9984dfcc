"""One rank of tests/test_parallel.py's multi-process runs: `python -m torch.distributed.run
--standalone --nproc-per-node W tests/rank_worker.py SPEC.json` (not a test module).

Each rank imports torch and zocli once, then trains every run of the spec in turn, in this one process
group (zocli.run.distributed.setup joins it at the first run and finds it joined at the next): the
launch and the imports, the bulk of a tiny run's cost, are paid once for all the configurations. A run
may name a step at which rank 1 dies (os._exit, as a killed process: no clean-up, no exception), and
the spec may end with runs to resume. Each rank writes what it got to RUN.rankR.json beside the run
directory (outside it: the run directory is rank 0's alone).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

torch.set_num_threads(1)


def main(spec_path: str) -> None:
    from zocli.resolve import resolve
    from zocli.run import distributed
    from zocli.run.train import resume, run

    spec = json.loads(Path(spec_path).read_text())
    for job in spec.get("runs", []):
        out, kill = Path(job["out"]), job.get("kill_rank1_at")  # [task, step]

        def on_event(event, kill=kill):
            at = [event.get("task"), event.get("step")]
            if kill and distributed.rank() == 1 and event["event"] == "step" and at == kill:
                os._exit(9)

        result = run(resolve(job["presets"], job["overrides"]), out, on_event=on_event)
        _record(out, result)
    for root in spec.get("resume", []):
        _record(Path(root), resume(Path(root)))


def _record(out: Path, result) -> None:
    from zocli.run import distributed

    mine = {"acc_matrix": result.acc_matrix, "world": distributed.world()}
    out.with_name(f"{out.name}.rank{distributed.rank()}.json").write_text(json.dumps(mine))


if __name__ == "__main__":
    main(sys.argv[1])

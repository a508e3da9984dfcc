"""The ranks `srun` started, named as torchrun names them (DESIGN §11); no torch here (the CLI reads it first).

`srun --ntasks N zocli train ...` starts N copies of `zocli train`, each with SLURM_PROCID (its rank),
SLURM_STEP_NUM_TASKS (W), SLURM_LOCALID (its rank on its node) and SLURM_STEP_NODELIST. zocli's ranks read
torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT: torch.distributed's env://
rendezvous), so these are derived from SLURM's when torchrun did not set them. The step's task count, not
the job's SLURM_NTASKS: a batch script of a 4-task job runs as one task, and must not wait for 3 others.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping


def torchrun_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables to add for a rank that srun started with W > 1 tasks; {} otherwise (torchrun, one task)."""
    if "WORLD_SIZE" in environ or int(environ.get("SLURM_STEP_NUM_TASKS", "1") or "1") < 2:
        return {}
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "127.0.0.1"
    step = f"{environ.get('SLURM_JOB_ID', '0')}.{environ.get('SLURM_STEP_ID', '0')}"
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ["SLURM_STEP_NUM_TASKS"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": environ.get("MASTER_ADDR") or first_host(nodelist),
        "MASTER_PORT": environ.get("MASTER_PORT") or str(port_of(step)),
    }


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[03-04,07],cpu1" -> "gpu03"."""
    head = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if head is None:
        raise ValueError(f"not a SLURM node list: {nodelist!r}")
    prefix, ranges = head.group(1), head.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def port_of(job: str) -> int:
    """A rendezvous port every rank of one job derives alike (20000-39999), different between jobs."""
    return 20000 + zlib.crc32(job.encode()) % 20000

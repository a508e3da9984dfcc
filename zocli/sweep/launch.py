"""Running a sweep's runs: a local queue of `zocli train` processes, or a SLURM job array through submitit.

Both go through `Attempt`: one run's command — a fresh `train`, or `train --resume` once the run has
started — as a child process whose output is appended to SWEEP/logs/<name>.log and whose outcome goes to
SWEEP/status/<name>.json. A crashed run cannot take the sweep down, and a killed sweep takes its runs
down with it only through their own graceful stop (SIGTERM: commit, exit 130), so they stay resumable.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zocli.sweep.directory import (
    RunState,
    Sweep,
    SweepError,
    command,
    open_sweep,
    record_end,
    record_start,
    repair,
    state,
    states,
)
from zocli.sweep.grid import RunSpec

Event = dict[str, Any]


@dataclass(frozen=True)
class Slot:
    """Where one run at a time executes: its label, the environment it adds, and the ranks of its run."""

    label: str
    env: dict[str, str]
    ranks: int = 1  # processes of one run here (`zocli train --nproc`): one GPU each, or gloo on the CPU


def local_slots(devices: list[str] | None, jobs: int, per_run: int = 1) -> list[Slot]:
    """`jobs` runs per group of `per_run` listed GPUs (each run sees only its group and has a rank on each),
    or `jobs` CPU runs of `per_run` processes each sharing the cores (`--devices cpu`, or no --devices)."""
    if devices and devices != ["cpu"]:
        if len(devices) % per_run:
            raise SweepError(f"--gpus-per-run {per_run} does not divide the {len(devices)} GPUs of --devices")
        groups = [",".join(devices[i : i + per_run]) for i in range(0, len(devices), per_run)]
        return [
            Slot(f"cuda {g}" + (f" #{j}" if jobs > 1 else ""), {"CUDA_VISIBLE_DEVICES": g}, per_run)
            for g in groups
            for j in range(jobs)
        ]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, cores // (jobs * per_run)))  # no oversubscription
    return [Slot(f"cpu #{j}", {"OMP_NUM_THREADS": threads}, per_run) for j in range(jobs)]


def _child_setup() -> None:
    # In the child, before exec. Dies gracefully with its parent (Linux): SIGTERM makes `train` commit and
    # exit 130, so a killed sweep leaves resumable runs, not orphans holding run locks. SIGUSR2 is SLURM's
    # warning to the job (submitit requeues on it); ignored here, the job stops its run itself.
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class Attempt:
    """One try at one run: the child process, its log, its status record."""

    def __init__(
        self,
        sweep: Sweep,
        run: RunSpec,
        env: dict[str, str],
        where: str,
        nproc: int = 1,
        ranks: int | None = None,
        records: bool = True,
    ):
        """`nproc` > 1: the child starts that many ranks itself (`--nproc`); `ranks`: those the run has in
        all (a SLURM job's tasks, each one rank with its own Attempt; only the one that `records` does)."""
        self.sweep, self.run, self.records = sweep, run, records
        self.action, argv = command(sweep, run, nproc=nproc)
        with open(sweep.log_file(run.name), "ab") as log:  # the child keeps its own descriptor
            log.write(
                f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {self.action} on {where}: {shlex.join(argv)}\n".encode()
            )
            log.flush()
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,  # a terminal's Ctrl-C reaches only the sweep
                preexec_fn=_child_setup,
            )
        if records:
            record_start(sweep, run.name, self.action, self.proc.pid, where, ranks or nproc)
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and self.proc.poll() is not None:
            self.returncode = self.proc.returncode
            if self.records:
                record_end(self.sweep, self.run.name, self.returncode)
        return self.returncode

    def stop(self) -> None:
        """Ask the run to stop as Ctrl-C does: finish the step, commit, exit 130."""
        if self.returncode is None:
            self.proc.send_signal(signal.SIGINT)

    def wait(self, poll: float = 0.5) -> int:
        # A polling wait: a signal handler (submitit's preemption hook) may need to wait on the child too.
        while self.poll() is None:
            time.sleep(poll)
        return self.returncode


def run_local(
    sweep: Sweep,
    slots: list[Slot],
    on_event: Callable[[Event], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    poll: float = 0.2,
    takeover: bool = False,
) -> list[RunState]:
    """Run every unfinished run, one per slot, starting the next as a slot frees; returns the final states.

    Finished runs and runs under way are skipped, and so are runs whose last attempt is on another host
    ("unknown") unless `takeover`; started ones resume. When `should_stop` turns true, no run starts and
    the running ones are asked to stop (they commit and stay resumable)."""
    emit, stop = on_event or (lambda event: None), should_stop or (lambda: False)
    repair(sweep)
    todo = []
    for run in sweep.runs:
        now = state(sweep, run.name)
        if not _to_run(now, takeover):
            emit({"event": "skipped", **now.as_dict()})
        else:
            todo.append(run)
    busy: dict[int, Attempt] = {}
    stopping = False
    while todo or busy:
        if stop() and not stopping:
            stopping, todo = True, []
            for attempt in busy.values():
                attempt.stop()
        for i, slot in enumerate(slots):
            if i not in busy and todo:
                run = todo.pop(0)
                busy[i] = Attempt(sweep, run, slot.env, slot.label, slot.ranks)
                emit({"event": "started", "name": run.name, "action": busy[i].action, "slot": slot.label})
        for i, attempt in list(busy.items()):
            if attempt.poll() is not None:
                del busy[i]
                emit({"event": "ended", "returncode": attempt.returncode, **state(sweep, attempt.run.name).as_dict()})
        time.sleep(poll)
    return states(sweep)


# ----------------------------------------------------------------------------------------------
# SLURM (submitit)


@dataclass(frozen=True)
class SlurmOptions:
    """The sbatch-level options `zocli sweep --slurm` exposes (README: "Many runs")."""

    partition: str | None = None  # --partition
    time_min: int = 24 * 60  # --time, minutes per job (a preempted or timed-out job is requeued and resumes)
    gpus: int = 1  # --gpus-per-node, and as many tasks: each run has one rank per GPU
    cpus: int = 8  # --cpus-per-task
    mem_gb: int | None = None  # --mem
    account: str | None = None  # --account
    qos: str | None = None  # --qos
    constraint: str | None = None  # --constraint
    parallel: int = 256  # --array=...%N: jobs of the array running at once
    extra: dict[str, str] = field(default_factory=dict)  # any other #SBATCH --key=value

    def executor_parameters(self) -> dict[str, Any]:
        slurm = {"partition": self.partition, "account": self.account, "qos": self.qos, "constraint": self.constraint}
        return {
            "timeout_min": self.time_min,
            "gpus_per_node": self.gpus,
            "tasks_per_node": max(1, self.gpus),  # submitit's multi-task mode: SlurmRun runs in each task
            "cpus_per_task": self.cpus,
            **({"mem_gb": self.mem_gb} if self.mem_gb else {}),
            "slurm_array_parallelism": self.parallel,
            **{f"slurm_{k}": v for k, v in slurm.items() if v is not None},
            **({"slurm_additional_parameters": dict(self.extra)} if self.extra else {}),
        }


class SlurmRun:
    """The job of one run (pickled by submitit): the same Attempt as the local queue. On preemption or
    time-out submitit calls `checkpoint`: the run commits and stops, and the requeued job resumes it.

    With N tasks (`--slurm-gpus N`), submitit calls it in each: each task's child is one rank, told so in
    torchrun's variables (`rank_env`); task 0's records the attempt. Every task picks start or resume alike:
    the run directory is created by rank 0 only after every rank has joined the process group."""

    def __init__(self, root: str, name: str):
        self.root, self.name = root, name
        self.attempt: Attempt | None = None

    def __call__(self) -> dict[str, Any]:
        sweep = open_sweep(Path(self.root))
        if state(sweep, self.name).state == "finished":
            return state(sweep, self.name).as_dict()
        where = f"slurm {os.environ.get('SLURM_ARRAY_JOB_ID', os.environ.get('SLURM_JOB_ID', 'local'))}"
        env, ranks, rank = rank_env()
        where += f" rank {rank}" if rank else ""
        self.attempt = Attempt(sweep, sweep.get(self.name), env, where, ranks=ranks, records=rank == 0)
        self.attempt.wait()
        return state(sweep, self.name).as_dict()

    def checkpoint(self, *args: Any, **kwargs: Any):
        from submitit.helpers import DelayedSubmission

        if self.attempt is not None:
            self.attempt.stop()
            self.attempt.wait()
        return DelayedSubmission(SlurmRun(self.root, self.name))

    def __getstate__(self) -> dict[str, Any]:  # the attempt (a live process) never travels
        return {"root": self.root, "name": self.name}

    def __setstate__(self, saved: dict[str, Any]) -> None:
        self.root, self.name, self.attempt = saved["root"], saved["name"], None


def rank_env() -> tuple[dict[str, str], int, int]:
    """(torchrun's variables for this task's child, ranks of the run, this task's rank), from submitit's
    view of the job (SLURM's task variables, or its local executor's)."""
    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks == 1:
        return {}, 1, 0
    from zocli.run.slurm import port_of

    env = {
        "RANK": str(job.global_rank),
        "WORLD_SIZE": str(job.num_tasks),
        "LOCAL_RANK": str(job.local_rank),
        "LOCAL_WORLD_SIZE": str(job.num_tasks // job.num_nodes),
        "MASTER_ADDR": job.hostnames[0] if job.num_nodes > 1 else "127.0.0.1",
        "MASTER_PORT": str(port_of(str(job.job_id))),
    }
    return env, job.num_tasks, job.global_rank


def _to_run(now: RunState, takeover: bool) -> bool:
    return now.state not in ("finished", "running") and (now.state != "unknown" or takeover)


def submit(
    sweep: Sweep, options: SlurmOptions, cluster: str = "slurm", takeover: bool = False
) -> list[tuple[str, Any]]:
    """Every unfinished run as one job of a SLURM array; returns (run name, submitit job) pairs.

    `cluster="slurm"` submits with sbatch or refuses (no silent local fallback: on a login node that
    would train there); `cluster="local"` runs the same jobs through submitit's local executor, on
    purpose (`--slurm-local`: tests, debugging)."""
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise SweepError(
            "--slurm: there is no sbatch on this machine (not a SLURM cluster); run without --slurm for the "
            "local queue, or with --slurm-local to run the jobs through submitit's local executor here"
        )
    try:
        import submitit
    except ImportError:
        raise SweepError("--slurm needs submitit: pip install 'zocli[slurm]'") from None
    repair(sweep)
    todo = [run for run in sweep.runs if _to_run(state(sweep, run.name), takeover)]
    if not todo:
        return []
    executor = submitit.AutoExecutor(folder=str(sweep.root / "slurm"), cluster=cluster)
    executor.update_parameters(name=f"zocli-{sweep.root.name}", **options.executor_parameters())
    try:
        with executor.batch():
            jobs = [executor.submit(SlurmRun(str(sweep.root.resolve()), run.name)) for run in todo]
    except (OSError, subprocess.CalledProcessError, RuntimeError) as exc:  # sbatch refused, no controller
        text = " ".join(str(getattr(exc, "output", None) or exc).split())[:300]
        raise SweepError(f"--slurm: sbatch failed, nothing was submitted ({type(exc).__name__}: {text})") from None
    return [(run.name, job) for run, job in zip(todo, jobs)]

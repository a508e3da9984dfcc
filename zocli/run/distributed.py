"""One run on several processes (DESIGN §11): the process group, who writes, and the launcher.

A run with W ranks is W copies of `zocli train` started by torchrun (`torchrun --nproc-per-node W -m
zocli train ...`, or `zocli train --nproc W`, which calls torchrun's own launcher). Every rank builds
the same session, reads the run directory, loads the same batches with the same seeds and keeps the
same θ; `method.ranks.Ranks` says which share of each step this rank computes, with the collectives
injected from here. Rank 0 alone prints, writes the run directory, holds its lock and reports to
trackers; the other ranks get a `Follower` run directory whose writes do nothing.

The backend is NCCL on CUDA (rank r on device LOCAL_RANK) and gloo on the CPU.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from zocli.config import PRECISIONS, Config, ConfigError
from zocli.method.ranks import SOLO, Ranks
from zocli.method.step import resolve_device
from zocli.resolve import Resolved
from zocli.run.rundir import RunDir


def world() -> int:
    """Ranks of this run: torchrun's WORLD_SIZE (1 when not launched by it)."""
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def leads() -> bool:
    """Whether this process prints, writes the run directory and reports to trackers (rank 0)."""
    return rank() == 0


def under_launcher() -> bool:
    """Whether torchrun (or `--nproc`'s launcher, or srun through zocli.run.slurm) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def setup(cfg: Config) -> Config:
    """Join the process group when launched with W > 1 ranks; the config each rank builds its session
    from (on CUDA, rank r's device is cuda:LOCAL_RANK; the recorded config keeps the flag as given)."""
    n = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.nproc not in (1, n) and under_launcher():
        raise ConfigError(f"--nproc {cfg.nproc}, but torchrun started {n} rank(s); give one or the other")
    if n == 1:
        return cfg
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        cfg = replace(cfg, device=f"cuda:{local}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return cfg


def recorded(resolved: Resolved) -> Resolved:
    """The resolved config with the ranks the run started with (config.json says how many it had), and
    the ZO precision rank 0 chose (the fidelity check may flip on a device's round-off; all ranks must agree)."""
    cfg, sources = resolved.config, dict(resolved.sources)
    if world() > 1:
        choice = torch.tensor([PRECISIONS.index(cfg.zo_precision)], dtype=torch.int64)
        _sum_from_leader(choice)
        if cfg.nproc != world():
            sources["nproc"] = "torchrun"
        cfg = replace(cfg, nproc=world(), zo_precision=PRECISIONS[int(choice)])
    return replace(resolved, config=cfg, sources=sources)


def ranks(cfg: Config) -> Ranks:
    """This rank's share of a step under `--parallelism` (auto: ZO evaluations dealt and the FO pass sharded)."""
    if world() == 1:
        return SOLO
    mode = cfg.parallelism
    return Ranks(rank(), world(), mode in ("auto", "directions"), mode in ("auto", "data"), _sum_, _gather)


def agreed(should_stop: Callable[[], bool] | None) -> Callable[[], bool]:
    """A stop request that every rank sees at the same call (one rank's signal stops them all at the
    same commit point, instead of leaving the others waiting in a collective)."""
    ask = should_stop or (lambda: False)
    if world() == 1:
        return ask

    def stop() -> bool:
        flag = torch.tensor([float(ask())], dtype=torch.float64)
        _sum_(flag)
        return bool(flag.item() > 0)

    return stop


def share_rows(rows: list[int], batch_size: int) -> tuple[list[int], int, int]:
    """This rank's evaluation batches of `rows`: batch i is rank i mod W's. Returns its rows (whole
    batches, so each is the one-process batch), the number of batches and this rank's first index."""
    starts = range(0, len(rows), batch_size)
    mine = [i for i in range(len(starts)) if i % world() == rank()]
    return [r for i in mine for r in rows[starts[i] : starts[i] + batch_size]], len(starts), rank()


def sum_counts_(*tensors: torch.Tensor) -> None:
    """Sum integer counts (or per-batch values, each non-zero on one rank) over the ranks, in place."""
    if world() > 1:
        for t in tensors:
            _sum_(t)


@dataclass(frozen=True)
class Follower(RunDir):
    """The run directory as a rank other than 0 sees it: reads as usual, every write does nothing."""

    def check_in_place(self) -> None:
        pass

    def write_bytes(self, path, data) -> None:
        pass

    def log(self, event) -> None:
        pass

    def clean_partial_writes(self) -> None:
        pass

    def truncate_log(self, length: int) -> None:
        pass

    def remove(self, path) -> None:
        pass

    def release(self) -> None:
        pass


def created(root, identity: dict, overwrite: bool) -> RunDir:
    """A fresh run directory: created and locked by rank 0; the others follow it."""
    return RunDir.create(root, identity, overwrite) if leads() else Follower(root)


def opened(root) -> RunDir:
    """An existing run directory to resume: opened and locked by rank 0; the others read it."""
    run = RunDir.open(root)
    return run.locked() if leads() else Follower(run.root)


# ---------------------------------------------------------------------------------------------- launching


def launch(nproc: int, argv: Sequence[str]) -> int:
    """`zocli ARGV` on `nproc` ranks of this machine through torchrun's launcher (standalone rendezvous),
    this process waiting; returns the exit code: 0, or the first failed rank's (128 + signal if killed).
    A SIGINT or SIGTERM to this process (Ctrl-C, a sweep stopping its runs) reaches the ranks through the
    launcher, which they answer by stopping at the same commit: 130, resumable, as one process."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    args = parse_args(["--standalone", "--nproc-per-node", str(nproc), "--module", "zocli", "--", *argv])
    try:
        torchrun(args)
    except ChildFailedError as failed:
        codes = [f.exitcode for _, f in sorted(failed.failures.items())]
        return next((c if c > 0 else 128 - c for c in codes if c), 1)
    except SignalException as stopped:
        return 130 if stopped.sigval in (signal.SIGINT, signal.SIGTERM) else 128 + int(stopped.sigval)
    return 0


# ---------------------------------------------------------------------------------------------- collectives


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _sum_(tensor: torch.Tensor) -> None:
    here = tensor.to(_device())
    dist.all_reduce(here)
    if here is not tensor:
        tensor.copy_(here)


def _sum_from_leader(tensor: torch.Tensor) -> None:
    if not leads():
        tensor.zero_()
    _sum_(tensor)


def _gather(tensor: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """The rows of every rank in rank order; rank r holds counts[r] rows (padded to the largest to gather)."""
    width = max(counts)
    padded = torch.zeros((width, *tensor.shape[1:]), dtype=tensor.dtype, device=_device())
    padded[: len(tensor)] = tensor
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded)
    return torch.cat([piece[:n] for piece, n in zip(pieces, counts)]).to(tensor.device)

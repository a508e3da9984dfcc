"""One run on several ranks (DESIGN §11): the same seed gives the same run at W = 1, 2 and 3.

- Direction parallelism, in one process: W ranks as W threads, each with its own copy of the model and a
  barrier standing in for the all-reduce (the collectives are injected, so the step code is the real
  one). Dual ZO at q = 8 must give bit-identical adapters at W = 3 (which divides nothing evenly) as at 1.
- Real processes, in the default suite (torchrun, gloo, CPU, 2 ranks): one launch of
  tests/rank_worker.py trains dual ZO (q = 8), vision ZO and FO on the tiny model and digits (2 tasks, 2
  steps each) in one process group, then a vision-ZO run whose rank 1 dies mid-task. Each rank imports
  torch once for all four, which is what makes this cost seconds (a launch per run costs ~10 s of
  imports on 2 cores). They must equal the one-process runs (built meanwhile in this process): the
  same checkpoint tensors (ZO bit for bit, FO within FO_ATOL), the same accuracy matrix on every rank,
  one writer (metrics.jsonl's events once each, one TensorBoard run); the killed run resumes at W = 1
  (here) and at W = 2 (through the SLURM test's 2-task job) to the uninterrupted run.
- Sweeps: `--devices 0,1,2,3 --gpus-per-run 2` slots and argv; `--slurm --slurm-gpus 2` through submitit's local
  executor (2 tasks, each one rank), resuming the killed run to the one-process run; srun's variables as torchrun's.
- Through the CLI (`slow`: each torchrun launch imports torch in every rank for one run):
  `zocli train --nproc 2` killed and resumed at W = 1, and `torchrun ... -m zocli train` for FO.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

from zocli.method.adapters import MoEAdapter, batch_shard
from zocli.method.attach import build_model
from zocli.method.ranks import Ranks
from zocli.method.step import Stepper

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------- in process


class Group:
    """An all-reduce (sum) over W threads: what torch.distributed does over W processes."""

    def __init__(self, size: int):
        self.size, self.barrier, self.slots = size, threading.Barrier(size), [None] * size

    def sum_for(self, rank: int):
        def sum_(tensor: torch.Tensor) -> None:
            self.slots[rank] = tensor.clone()
            self.barrier.wait()
            total = self.slots[0].clone()
            for other in self.slots[1:]:
                total += other
            self.barrier.wait()
            tensor.copy_(total)

        return sum_


def _steps(cfg, size: int, seed_of=lambda rank, step: step) -> list[dict[str, torch.Tensor]]:
    """Two dual-ZO steps on W thread-ranks; each rank's adapters after them. `seed_of(rank, step)`:
    the step seed a rank uses (train passes every rank derive_seed(cfg.seed, "zo", task, step))."""
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 2, (8,), generator=g)
    models = [build_model(cfg, "cpu") for _ in range(size)]  # built one after another: init forks the RNG
    tokens = models[0].tokenizer(["a bad photo of a zero.", "a bad photo of a one."])
    group, errors = Group(size), []

    def rank_main(rank: int) -> None:
        try:
            ranks = Ranks(rank, size, True, True, group.sum_for(rank)) if size > 1 else Ranks()
            stepper = Stepper(models[rank], cfg, ranks)
            for step in range(2):
                stats = stepper.step(images, labels, tokens, 1e-2, seed_of(rank, step))
                assert stats.forwards == 35  # every rank's evaluations: 2 blocks x 2q, and 3 candidates
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return [{k: v.clone() for k, v in m.units.state_dict().items()} for m in models]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def dual():
    return replace(tiny_config(vision="zo", language="zo"), queries=8)


def test_direction_parallelism_is_bit_identical_at_w_1_and_3(dual):
    """W = 2 is checked on real processes below; here W = 3, which divides nothing evenly."""
    (one,) = _steps(dual, 1)
    assert not _same(one, build_model(dual, "cpu").units.state_dict())  # the steps moved θ
    for size in (3,):
        assert all(_same(one, adapters) for adapters in _steps(dual, size)), f"W={size} differs from W=1"


def test_a_rank_drawing_its_own_seed_would_be_caught(dual):
    """What guards against it: every rank gets the step seed train derives from the run's config alone
    (`derive_seed(cfg.seed, "zo", task, step)` in run/task.py's `train_task`), and `_measure_own`
    draws each direction from `derive_seed(seed, block.name, query)`, never from anything per rank.
    Here rank 1 is given its own seed: its ±εz forwards are then along other directions, so the shared
    losses no longer match anyone's z, and the adapters leave W = 1's (the check above would fail)."""
    (one,) = _steps(dual, 1)
    diverged = _steps(dual, 2, seed_of=lambda rank, step: step + 1000 * rank)
    assert not _same(one, diverged[0]) and not _same(one, diverged[1])


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_each_evaluation_is_dealt_to_exactly_one_rank_round_robin(size):
    for n, first in ((35, 0), (3, 32), (2, 5)):
        shares = [Ranks(r, size).deal(n, first) for r in range(size)]
        assert sorted(i for share in shares for i in share) == list(range(n))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # even: a block's evaluations cost the same


def test_a_data_shard_gets_the_noise_its_rows_get_in_one_process():
    """batch_shard: gating noise and dropout drawn for the whole batch, each rank keeping its rows."""
    torch.manual_seed(0)
    moe = MoEAdapter(16, bottleneck=8).train()
    for expert in moe.experts:
        torch.nn.init.normal_(expert.up.weight)  # non-zero, so dropout shows in the output
    x = torch.randn(6, 3, 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        whole = moe(x)
    ranks = Ranks(0, 3)
    pieces = []
    for r in range(3):
        rows = replace(ranks, rank=r).rows(6)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            with batch_shard(rows, 6):
                pieces.append(moe(x[rows]))
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- end to end

TINY = ["--preset", "digits-demo", "--inc", "5", "--max-steps", "4", "--seed", "3", "--json"]


def _tensors(run: Path, task: int) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoints" / f"task_{task:02d}.safetensors")


def _reference(tmp_path: Path, digits_root: Path, **flags) -> Path:
    """The one-process run, in this process."""
    from zocli.resolve import resolve
    from zocli.run.train import run

    presets = ["digits-demo"]
    overrides = {"inc": 5, "max_steps": 4, "seed": 3, "data_root": str(digits_root), **flags}
    out = tmp_path / "reference"
    run(resolve(presets, overrides), out)
    return out


def _ranks_of(parent: int) -> dict[int, int]:
    """{rank: pid} of the torchrun workers below `parent` (read from /proc: their RANK)."""
    found, todo = {}, [parent]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        todo += [int(c) for c in children]
        rank = next((e[5:] for e in env if e.startswith(b"RANK=")), None)
        if rank is not None and pid != parent:
            found.setdefault(int(rank), pid)
    return found


@pytest.mark.slow  # two launches of torchrun with 2 ranks: ~50 s on the shared 2-core machine
def test_a_killed_rank_stops_the_job_and_resume_at_w1_finishes_the_same_run(tmp_path, digits_root):
    ref = _reference(tmp_path, digits_root, vision="zo", queries=2)
    out = tmp_path / "ranks2"
    args = [*TINY, "--vision", "zo", "--queries", "2", "--save-every", "1", "--data-root", str(digits_root)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "zocli", "train", *args, "--nproc", "2", "--out", str(out)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    while not (out / "checkpoints" / "task_00.safetensors").is_file() and proc.poll() is None:
        assert time.monotonic() < deadline, "no task committed in time"
        time.sleep(0.05)
    ranks = _ranks_of(proc.pid)
    if proc.poll() is None and 1 in ranks:
        os.kill(ranks[1], signal.SIGKILL)  # mid-run: the job must stop, losing nothing committed
        _, err = proc.communicate(timeout=120)
        assert proc.returncode != 0 and not (out / "summary.json").exists(), err.decode()[-2000:]
    else:  # the run outran the poll (a loaded machine): there is nothing to kill, it must have finished
        proc.communicate(timeout=120)
    resumed = subprocess.run(
        [sys.executable, "-m", "zocli", "train", "--resume", str(out), "--nproc", "1", "--json"],
        env=ENV,
        capture_output=True,
        timeout=180,
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    for task in (0, 1):
        assert _same(_tensors(ref, task), _tensors(out, task)), f"task {task} adapters differ"
    assert json.loads(resumed.stdout)["acc_matrix"] == json.loads((ref / "summary.json").read_text())["acc_matrix"]
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["nproc"] == 2 and saved["config"]["parallelism"] == "auto"
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["zero_shot", "train", "eval", "train", "eval"]  # one writer


# Data parallelism: each rank's FO pass sums its rows' cross-entropy; the sum over ranks reassociates
# the batch sum in fp32 and the matmuls over fewer rows round differently: ~1e-7 relative per gradient.
# AdamW divides by √v̂, which for coordinates whose gradient is near zero magnifies that round-off; after
# 8 steps at lr 1e-2 the adapters differ by ~1e-4 at most (measured), so the bound is 1e-3: a tenth of one
# AdamW step (lr) per coordinate, far below what a different batch or different noise moves (~lr per step).
FO_ATOL = 1e-3


@pytest.mark.slow  # one launch of torchrun with 2 ranks: ~35 s on the shared 2-core machine
def test_fo_data_parallel_matches_one_process_within_round_off(tmp_path, digits_root):
    ref = _reference(tmp_path, digits_root)
    out = tmp_path / "fo2"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*torchrun, "-m", "zocli", "train", *TINY, "--data-root", str(digits_root), "--out", str(out)],
        env=ENV,
        capture_output=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout)["acc_matrix"] == json.loads((ref / "summary.json").read_text())["acc_matrix"]
    for task in (0, 1):
        a, b = _tensors(ref, task), _tensors(out, task)
        assert a.keys() == b.keys()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst <= FO_ATOL, f"task {task}: adapters differ by {worst}"
    assert done.stdout.decode().count("acc_matrix") == 1  # only rank 0 prints


# ---------------------------------------------------------------------------------------------- processes

WORKER = Path(__file__).with_name("rank_worker.py")
STEPS = {"inc": 5, "max_steps": 2, "seed": 3}  # 2 tasks of 2 steps: each step crosses every collective
CONFIGS = {
    "dual": {"vision": "zo", "language": "zo", "queries": 8},  # 35 loss evaluations a step, dealt 18/17
    "vision": {"vision": "zo"},  # q = 1: 2 + 3 evaluations, dealt 3/2
    "fo": {},  # FO on both branches: data parallel, each rank 16 of the 32 rows
}
KILLED_AT = [1, 1]  # rank 1 dies at task 1's last step: after the mid-task commit of step 1 (--save-every 1)


def _torchrun(spec: dict, where: Path, **popen) -> subprocess.Popen:
    path = where / f"spec{len(list(where.glob('spec*.json')))}.json"
    path.write_text(json.dumps(spec))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.Popen([*torchrun, str(WORKER), str(path)], env=ENV, **popen)


def _events(run: Path) -> list[tuple]:
    return [(e["event"], e.get("task")) for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits_root):
    """{name: (W = 1 run, W = 2 run)}, and the killed W = 2 run: the 2-rank launch works while this
    process trains the references (a rank waiting in a collective leaves it a core)."""
    from zocli.resolve import resolve
    from zocli.run.train import run

    where = tmp_path_factory.mktemp("ranks")
    base = {**STEPS, "data_root": str(digits_root)}
    jobs = [
        {"out": str(where / f"{name}2"), "presets": ["digits-demo"], "overrides": {**base, **flags}}
        for name, flags in CONFIGS.items()
    ]
    jobs[0]["overrides"]["report_to"] = "tensorboard"  # a tracker: rank 0's alone (tracking only, same run)
    killed = {**base, **CONFIGS["vision"], "save_every": 1}
    jobs.append({"out": str(where / "killed"), "presets": ["digits-demo"], "overrides": killed})
    jobs[-1]["kill_rank1_at"] = KILLED_AT
    proc = _torchrun({"runs": jobs}, where, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for name, flags in CONFIGS.items():
            run(resolve(["digits-demo"], {**base, **flags}), where / f"{name}1")
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    # the last run's rank 1 died: torchrun stops the job and fails (the runs before it finished)
    assert proc.returncode != 0, err.decode()[-3000:]
    assert all((where / f"{name}2" / "summary.json").is_file() for name in CONFIGS), err.decode()[-3000:]
    return {name: (where / f"{name}1", where / f"{name}2") for name in CONFIGS} | {"killed": where / "killed"}


def _acc(run: Path) -> list[list[float]]:
    return json.loads((run / "summary.json").read_text())["acc_matrix"]


def _every_rank_got(run: Path, acc: list[list[float]], world: int = 2) -> None:
    for r in range(world):
        got = json.loads(run.with_name(f"{run.name}.rank{r}.json").read_text())
        assert got == {"acc_matrix": acc, "world": world}, f"rank {r} of {run.name}"


@pytest.mark.parametrize("name", ["dual", "vision"])
def test_zo_on_two_processes_is_the_one_process_run_bit_for_bit(runs, name):
    one, two = runs[name]
    for task in (0, 1):
        assert _same(_tensors(one, task), _tensors(two, task)), f"{name}: task {task} adapters differ"
    assert _acc(two) == _acc(one)
    _every_rank_got(two, _acc(one))
    saved = json.loads((two / "config.json").read_text())["config"]
    assert saved["nproc"] == 2 and saved["parallelism"] == "auto"


def test_fo_on_two_processes_is_the_one_process_run_within_round_off(runs):
    one, two = runs["fo"]
    for task in (0, 1):
        a, b = _tensors(one, task), _tensors(two, task)
        assert a.keys() == b.keys()
        worst = max((a[k] - b[k]).abs().max().item() for k in a)
        assert worst <= FO_ATOL, f"task {task}: adapters differ by {worst}"
    assert _acc(two) == _acc(one)
    _every_rank_got(two, _acc(one))


def test_one_rank_writes(runs):
    """Rank 1 ran every event through the same code with a Follower run directory: had it written,
    metrics.jsonl would hold each event twice, and tensorboard/ two event files."""
    one, two = runs["dual"]
    # the W = 2 run reports to TensorBoard, so it also logs a train_step record each step of its 2-step tasks
    assert _events(two) == [
        ("zero_shot", None), ("train_step", 0), ("train_step", 0), ("train", 0), ("eval", 0),
        ("train_step", 1), ("train_step", 1), ("train", 1), ("eval", 1),
    ]  # fmt: skip
    assert _events(one) == [e for e in _events(two) if e[0] != "train_step"]
    assert len(list((two / "tensorboard").iterdir())) == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir()) + ["tensorboard"]


def test_a_rank_killed_in_the_shared_launch_stops_it_and_one_process_resumes_the_same_run(runs, tmp_path):
    """Rank 1 died at task 1 (the launch failed, `runs`); resumed on one process. The resume on 2 ranks is
    the SLURM test's run below (one launch for both)."""
    from zocli.run.train import resume

    killed, (ref, _) = runs["killed"], runs["vision"]
    assert not (killed / "summary.json").exists() and not (killed / "checkpoints" / "task_01.safetensors").exists()
    assert (killed / "checkpoints" / "resume.safetensors").is_file()  # task 1's mid-task commit
    at1 = tmp_path / "at1"
    shutil.copytree(killed, at1)
    resume(at1, {"nproc": 1})
    for task in (0, 1):
        assert _same(_tensors(ref, task), _tensors(at1, task)), f"task {task} adapters differ"
    assert _acc(at1) == _acc(ref) and _events(at1) == _events(ref)


# ---------------------------------------------------------------------------------------------- sweeps


def test_a_sweep_gives_each_multi_rank_run_its_gpus_and_nproc(tmp_path):
    from zocli.sweep import directory, launch
    from zocli.sweep.grid import Grid, expand

    slots = launch.local_slots(["0", "1", "2", "3"], 1, 2)  # --devices 0,1,2,3 --gpus-per-run 2
    assert [(s.env["CUDA_VISIBLE_DEVICES"], s.ranks) for s in slots] == [("0,1", 2), ("2,3", 2)]
    cpu = launch.local_slots(["cpu"], 1, 2)  # --devices cpu --gpus-per-run 2: 2 gloo ranks per run
    assert [s.ranks for s in cpu] == [2] and "CUDA_VISIBLE_DEVICES" not in cpu[0].env
    with pytest.raises(directory.SweepError, match="does not divide"):
        launch.local_slots(["0", "1", "2"], 1, 2)
    (run,) = expand(Grid(("digits-demo",)))
    sweep = directory.Sweep(tmp_path, (run,))
    action, argv = directory.command(sweep, run, nproc=2)
    assert (
        action == "start"
        and argv[argv.index("--nproc") + 1] == "2"
        and argv[-3:-1] == ["--out", str(tmp_path / run.name)]
    )
    assert "--nproc" not in directory.command(sweep, run)[1]  # one rank: the argv as before
    # the CLI: the plan shows each run's --nproc; a GPU list the groups do not divide, or nproc in the grid, is refused
    result = _cli(
        "sweep",
        "--preset",
        "digits-demo",
        "--seeds",
        "0,1",
        "--devices",
        "0,1,2,3",
        "--gpus-per-run",
        "2",
        "--out",
        tmp_path / "s",
        "--dry-run",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert all(r["command"][r["command"].index("--nproc") + 1] == "2" for r in json.loads(result.stdout)["runs"])
    for bad in (["--devices", "0,1,2", "--gpus-per-run", "2"], ["--grid", "nproc=2"]):
        result = _cli("sweep", "--preset", "digits-demo", *bad, "--out", tmp_path / "s", "--dry-run")
        assert result.exit_code != 0 and ("does not divide" in result.output or "gpus-per-run" in result.output)


def _cli(*args):
    from typer.testing import CliRunner

    from zocli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], prog_name="zocli")


def test_srun_tasks_become_torchrun_ranks():
    from zocli.run.slurm import first_host, torchrun_env

    srun = {
        "SLURM_PROCID": "3",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "77",
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NODELIST": "gpu[03-04,07]",
    }
    env = torchrun_env(srun)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")} == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu03",
    }
    assert env["MASTER_PORT"] == torchrun_env({**srun, "SLURM_PROCID": "0"})["MASTER_PORT"]  # every rank alike
    assert torchrun_env({**srun, "SLURM_STEP_NUM_TASKS": "1"}) == {}  # one task (a batch script): no group
    assert torchrun_env({**srun, "WORLD_SIZE": "4"}) == {}  # torchrun under srun: its own variables
    assert [first_host(n) for n in ("a1", "n[9-12]", "x-y[001,5],z")] == ["a1", "n9", "x-y001"]


# slow: a third 2-process job (~12 CPU-s) would take the default suite past its 3-minute budget; the
# killed run's resume at W = 1 and the srun variables stay in the default suite.
@pytest.mark.slow
def test_slurm_resumes_the_killed_run_on_two_ranks_through_submitits_tasks(tmp_path, digits_root, runs):
    """--slurm --slurm-gpus 2 through submitit's local executor (tasks_per_node = 2, as on SLURM; no GPU here,
    so the ranks use gloo), on a sweep whose run is a copy of the run whose rank 1 was killed: each task's child
    is one rank, both choose `train --resume`, task 0 alone records the attempt (2 ranks), and the resumed run
    is the uninterrupted one-process run: resume at W = 2, and the SLURM path, in one launch."""
    pytest.importorskip("submitit")
    from zocli.sweep import directory, launch
    from zocli.sweep.grid import Grid, expand

    axes = {key: [value] for key, value in {**STEPS, **CONFIGS["vision"], "save_every": 1}.items() if key != "seed"}
    grid = Grid(("digits-demo",), axes, (STEPS["seed"],))
    opened = directory.create(tmp_path / "s", expand(grid), str(digits_root))
    (spec,) = opened.runs
    shutil.copytree(runs["killed"], opened.run_dir(spec.name))
    options = launch.SlurmOptions(gpus=2, cpus=1, time_min=5)
    assert options.executor_parameters()["tasks_per_node"] == 2
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OMP_NUM_THREADS", "1")
        ((name, job),) = launch.submit(opened, options, cluster="local")
    assert [r["state"] for r in job.results()] == ["finished", "finished"], job.stderr()
    (attempt,) = directory.attempts(opened, name)
    assert attempt["action"] == "resume" and attempt["ranks"] == 2 and attempt["returncode"] == 0
    assert attempt["where"].startswith("slurm")
    run, one = opened.run_dir(name), runs["vision"][0]
    assert _events(run) == _events(one) and _acc(run) == _acc(one)  # one writer; the same run
    for task in (0, 1):
        assert _same(_tensors(one, task), _tensors(run, task)), f"task {task} adapters differ"

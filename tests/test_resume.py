"""`zocli train` survives interruption (DESIGN §8-9): SIGKILL or Ctrl-C, then `--resume`, ends identical.

Every variant is a real `python -m zocli train` subprocess on the demo preset (digits, zocli-tiny, CPU,
5 tasks of 12 steps, a mid-task state committed every 3 steps), compared with one uninterrupted
reference run. To land a kill at a precise commit point the test polls the run directory, freezes the
process with SIGSTOP, re-checks what is on disk (the run may have moved on between poll and stop),
and only then kills it — or lets it continue and polls again.

Run with `pytest -s tests/test_resume.py` to see the timings.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

TRAIN = ["--preset", "digits-demo", "--max-steps", "12", "--save-every", "3", "--seed", "0"]
# One intra-op thread: on the shared 2-core test machine torch's default (one thread per core) made a
# demo run ~10x slower (90 s instead of 9 s) through contention with the other jobs.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# summary.json keys that legitimately differ between an interrupted+resumed run and the reference:
#   run_dir       - each run has its own directory;
#   wall_seconds  - wall-clock time (the resumed run adds the time committed before the kill, but the
#                   work between the last commit and the kill is lost and redone, and timing varies);
#   peak_memory   - on CPU it is the max RSS of the *last* process (the resuming one), not of the run.
VOLATILE_SUMMARY = ("run_dir", "wall_seconds", "peak_memory")


# ---------------------------------------------------------------------------------------------- helpers


def _train(args: list[str], tmp: Path, name: str) -> subprocess.Popen:
    with open(tmp / f"{name}.stdout", "w") as out, open(tmp / f"{name}.stderr", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "zocli", "train", *args], env=ENV, stdout=out, stderr=err, stdin=subprocess.DEVNULL
        )  # the child keeps its own copies of the two files


def _finish(proc: subprocess.Popen, tmp: Path, name: str, timeout: float = 240) -> tuple[int, str, str]:
    code = proc.wait(timeout=timeout)
    return code, (tmp / f"{name}.stdout").read_text(), (tmp / f"{name}.stderr").read_text()


def _tasks_done(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints" / "manifest.json").read_text())["tasks_done"]
    except (OSError, json.JSONDecodeError, KeyError):
        return 0


def _state_point(run: Path) -> tuple[int, int] | None:
    """(task, step) of the committed mid-task state, or None when there is none."""
    path = run / "checkpoints" / "resume.safetensors"
    try:
        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata()
        return int(meta["task"]), int(meta["step"])
    except Exception:
        return None


def _mid_task(run: Path) -> bool:
    """A later task (≥ 1) is half-trained: its mid-task state is the newest commit."""
    done, state = _tasks_done(run), _state_point(run)
    return done >= 1 and state is not None and state[0] == done


def _between_tasks(run: Path) -> bool:
    """At least two tasks committed and the next one has no mid-task state yet."""
    done, state = _tasks_done(run), _state_point(run)
    return done >= 2 and (state is None or state[0] < done)


def _freeze_at(proc: subprocess.Popen, run: Path, condition, timeout: float = 240) -> None:
    """Poll until `condition(run)`, SIGSTOP the process, and return once the condition holds while frozen."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before reaching the kill point")
        if condition(run):
            proc.send_signal(signal.SIGSTOP)
            if condition(run):
                return
            proc.send_signal(signal.SIGCONT)  # moved on between poll and stop: keep polling
        time.sleep(0.003)
    pytest.fail("kill point not reached in time")


def _describe_point(run: Path) -> str:
    state = _state_point(run)
    where = f"task {state[0]} step {state[1]}" if state else "no mid-task state"
    return f"tasks_done={_tasks_done(run)}, {where}"


def _resume(run: Path, tmp: Path) -> tuple[dict, float]:
    began = time.perf_counter()
    code, stdout, stderr = _finish(_train(["--resume", str(run), "--json"], tmp, "resume"), tmp, "resume")
    seconds = time.perf_counter() - began
    assert code == 0, stderr
    return json.loads(stdout), seconds


def _checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    return load_file(str(path)), meta


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _without(mapping: dict, keys: tuple[str, ...]) -> dict:
    return {k: v for k, v in mapping.items() if k not in keys}


def assert_same_run(ref: Path, run: Path, printed: dict) -> None:
    """`run` (interrupted + resumed) holds exactly what the uninterrupted `ref` holds."""
    ref_summary = json.loads((ref / "summary.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    assert printed == summary  # --json prints the summary that was written
    assert summary["run_dir"] == str(run)
    assert _without(summary, VOLATILE_SUMMARY) == _without(ref_summary, VOLATILE_SUMMARY)
    assert set(ref_summary) == set(summary)

    assert json.loads((run / "config.json").read_text()) == json.loads((ref / "config.json").read_text())

    # Checkpoints are compared as loaded tensors + metadata, not as bytes: safetensors writes the
    # __metadata__ map in the order of a Rust HashMap with a per-process random seed. Verified with
    # safetensors 0.8.0: saving the same tensors and metadata in four fresh processes gave four
    # different metadata key orders and four different sha256s (tensor entries are sorted and stable).
    # The same is why the manifest's sha256 values differ between two otherwise identical runs.
    ckpt, ref_ckpt = run / "checkpoints", ref / "checkpoints"
    names = sorted(p.name for p in ref_ckpt.glob("task_*.safetensors"))
    assert names == [f"task_{t:02d}.safetensors" for t in range(5)]
    assert sorted(p.name for p in ckpt.glob("task_*.safetensors")) == names
    assert not (ckpt / "resume.safetensors").exists()  # the final task commit drops the mid-task state
    for name in names:
        tensors, meta = _checkpoint(ckpt / name)
        ref_tensors, ref_meta = _checkpoint(ref_ckpt / name)
        assert meta == ref_meta, name
        assert tensors.keys() == ref_tensors.keys(), name
        for key, value in ref_tensors.items():
            assert torch.equal(tensors[key], value), f"{name}: {key}"

    manifest = json.loads((ckpt / "manifest.json").read_text())
    ref_manifest = json.loads((ref_ckpt / "manifest.json").read_text())
    for entry in manifest["files"].values():  # the hashes are those of the files actually there
        assert hashlib.sha256((ckpt / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    # metrics_bytes differs because "train" events carry measured step times of varying text length.
    volatile = ("files", "wall_seconds", "metrics_bytes", "peaks")  # peaks: measured memory, per process
    assert _without(manifest, volatile) == _without(ref_manifest, volatile)
    assert {t: e["file"] for t, e in manifest["files"].items()} == {
        t: e["file"] for t, e in ref_manifest["files"].items()
    }

    events, ref_events = _events(run), _events(ref)
    # the same events in the same order: nothing duplicated by the redo, nothing lost
    assert [(e["event"], e.get("task")) for e in events] == [(e["event"], e.get("task")) for e in ref_events]
    measured = ("step_seconds", "train_bytes", "eval_bytes")  # time and memory: never equal across processes
    assert [_without(e, measured) for e in events if e["event"] == "eval"] == [
        _without(e, measured) for e in ref_events if e["event"] == "eval"
    ]
    assert [_without(e, measured) for e in events] == [_without(e, measured) for e in ref_events]  # all else equal
    assert manifest["metrics_bytes"] == (run / "metrics.jsonl").stat().st_size


# ---------------------------------------------------------------------------------------------- tests


@pytest.fixture
def spawn(tmp_path, digits_root):
    """Start a fresh `zocli train` into tmp_path/run; whatever is still running (or frozen) at teardown is killed."""
    started: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        started.append(
            _train([*TRAIN, "--data-root", str(digits_root), "--out", str(tmp_path / "run"), "--json"], tmp_path, name)
        )
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class Reference:
    """The uninterrupted run, started in the background so it overlaps the first interrupted run."""

    def __init__(self, tmp: Path, data_root: Path):
        self.tmp, self.run, self.seconds = tmp, tmp / "run", None
        self.began = time.perf_counter()
        self.proc = _train([*TRAIN, "--data-root", str(data_root), "--out", str(self.run), "--json"], tmp, "ref")

    def get(self) -> tuple[Path, float]:
        if self.seconds is None:
            code, stdout, stderr = _finish(self.proc, self.tmp, "ref")
            self.seconds = time.perf_counter() - self.began
            assert code == 0, stderr
            assert json.loads(stdout)["run_dir"] == str(self.run)
            print(f"\n[resume] reference run: {self.seconds:.1f} s (overlapping the first interrupted run)")
        return self.run, self.seconds


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_root):
    ref = Reference(tmp_path_factory.mktemp("resume-ref"), digits_root)
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.wait()


@pytest.mark.parametrize("point", ["mid-task", "between-tasks"])
def test_sigkill_then_resume_is_identical(point, reference, spawn, tmp_path):
    run = tmp_path / "run"
    began = time.perf_counter()
    proc = spawn("killed")
    _freeze_at(proc, run, _mid_task if point == "mid-task" else _between_tasks)
    killed_at = time.perf_counter() - began
    where = _describe_point(run)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (run / "summary.json").exists()

    printed, resume_seconds = _resume(run, tmp_path)
    ref, ref_seconds = reference.get()
    print(
        f"\n[resume] SIGKILL {point}: reference {ref_seconds:.1f} s; killed after {killed_at:.1f} s at "
        f"{where}; resume took {resume_seconds:.1f} s"
    )
    assert_same_run(ref, run, printed)


def test_ctrl_c_commits_exits_130_and_resumes_identically(reference, spawn, tmp_path):
    run = tmp_path / "run"
    began = time.perf_counter()
    proc = spawn("int")
    _freeze_at(proc, run, _mid_task)
    where = _describe_point(run)
    proc.send_signal(signal.SIGINT)  # delivered on SIGCONT, like a Ctrl-C in the middle of a task
    proc.send_signal(signal.SIGCONT)
    code, stdout, stderr = _finish(proc, tmp_path, "int")
    stopped_at = time.perf_counter() - began
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert f"zocli train --resume {run}" in stderr.replace("\n", "")
    assert stdout == ""  # no summary: the run is not finished
    assert not (run / "summary.json").exists()
    state = _state_point(run)  # the stop committed the step it was in as a mid-task state
    assert state is not None and state[0] == _tasks_done(run)

    printed, resume_seconds = _resume(run, tmp_path)
    ref, ref_seconds = reference.get()
    print(
        f"\n[resume] SIGINT mid-task: reference {ref_seconds:.1f} s; signalled at {where}, stopped after "
        f"{stopped_at:.1f} s at task {state[0]} step {state[1]}; resume took {resume_seconds:.1f} s"
    )
    assert_same_run(ref, run, printed)


def test_second_ctrl_c_aborts_at_once_and_still_says_how_to_resume(spawn, tmp_path):
    run = tmp_path / "run"
    proc = spawn("int2")
    baseline: list = [None]

    def just_committed(run: Path) -> bool:  # a new mid-task state appeared: a whole step is still ahead
        point = _state_point(run)
        fresh = _mid_task(run) and baseline[0] is not None and point != baseline[0]
        if not fresh:
            baseline[0] = point
        return fresh

    _freeze_at(proc, run, just_committed)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    time.sleep(0.005)  # the first Ctrl-C is being honoured (finish the step, commit): abort now
    proc.send_signal(signal.SIGINT)
    code, stdout, stderr = _finish(proc, tmp_path, "int2")
    assert code == 130, stderr
    assert "Traceback" not in stderr and stdout == ""
    done = _tasks_done(run)  # whatever was committed is intact: the run stays resumable
    manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
    assert done >= 1 and sorted(manifest["files"]) == [str(t) for t in range(done)]
    assert f"zocli train --resume {run}" in stderr.replace("\n", "")


def test_a_stop_asked_during_evaluation_stops_at_that_task_commit(digits_root, tmp_path, monkeypatch):
    # Found: a first Ctrl-C during evaluation was honoured only one step into the next task.
    from zocli.resolve import resolve
    from zocli.run import train
    from zocli.run.rundir import Interrupted

    asked = {"stop": False}
    evaluate_row = train.evaluate_row  # a task's evaluation (the zero-shot one calls evaluate_seen)

    def ctrl_c_while_evaluating(session, task):
        asked["stop"] = asked["stop"] or task == 0
        return evaluate_row(session, task)

    monkeypatch.setattr(train, "evaluate_row", ctrl_c_while_evaluating)
    run = tmp_path / "run"
    flags = {"data_root": str(digits_root), "max_steps": 2}
    with pytest.raises(Interrupted):
        train.run(resolve(["digits-demo"], flags), run, should_stop=lambda: asked["stop"])
    assert _tasks_done(run) == 1
    assert _state_point(run) is None  # no step of task 1 was taken
    assert [(e["event"], e.get("task")) for e in _events(run)] == [("zero_shot", None), ("train", 0), ("eval", 0)]

"""End to end on digits with the tiny CLIP: every FO/ZO configuration trains all five tasks, writes
five checkpoints and a summary, re-evaluates to the same accuracy matrix, records its ZO plan, and
logs per-task step statistics that match the configuration."""

from __future__ import annotations

import json

import pytest
import torch

from zocli.method.backbone import shipped_record
from zocli.resolve import resolve
from zocli.run import evaluate, train
from zocli.run.checkpoint import load_task, read_manifest
from zocli.run.rundir import RunDir

N_TASKS = 5
DEPTH = 4  # zocli-tiny: 4 vision and 4 language blocks
ALL = [1, 2, 3, 4]

# id: (flags, expected ZO layers per branch on the tiny model). The layer schemes ride along with the
# estimator options to keep the set small: hop-odd, hop-even, prefix and suffix each appear once or more.
CASES = {
    "fo": ({}, {"vision": [], "language": []}),
    "dual-zo": ({"vision": "zo", "language": "zo"}, {"vision": ALL, "language": ALL}),
    "vision-zo": ({"vision": "zo"}, {"vision": ALL, "language": []}),
    "language-zo": ({"language": "zo"}, {"vision": [], "language": ALL}),
    "mozo-dual-hop-even": (
        {"vision": "zo", "language": "zo", "layers": "hop-even", "mozo": True},
        {"vision": [2, 4], "language": [2, 4]},
    ),
    "joint-dual-prefix": (
        {"vision": "zo", "language": "zo", "layers": "prefix", "granularity": "joint"},
        {"vision": [1, 2], "language": [1, 2]},
    ),
    "layer-dual-suffix3": (
        {"vision": "zo", "language": "zo", "layers": "suffix", "layers_n": 3, "granularity": "layer"},
        {"vision": [2, 3, 4], "language": [2, 3, 4]},
    ),
    "one-sided-vision-hop-odd": (
        {"vision": "zo", "layers": "hop-odd", "estimator": "one-sided"},
        {"vision": [1, 3], "language": []},
    ),
    "queries2-language-hop-even": (
        {"language": "zo", "layers": "hop-even", "queries": 2},
        {"vision": [], "language": [2, 4]},
    ),
    "aggressive-dual-zo": ({"vision": "zo", "language": "zo", "conservative": False}, {"vision": ALL, "language": ALL}),
    "lora-vision-zo": ({"adapter": "lora", "vision": "zo"}, {"vision": ALL, "language": []}),
}


def expected_forwards(cfg, plan) -> float:
    """Loss evaluations per step: FO pass (1 if any unit is FO) + per block 2q (two-sided) or q + 1
    (one-sided) + 3 candidates (conservative)."""
    n_zo = sum(len(layers) for layers in plan.values())
    has_fo = n_zo < 2 * DEPTH
    if n_zo == 0:
        return 1.0
    blocks = {"branch": sum(1 for layers in plan.values() if layers), "joint": 1, "layer": n_zo}[cfg.granularity]
    per_block = 2 * cfg.queries if cfg.estimator == "two-sided" else cfg.queries + 1
    return float(has_fo + blocks * per_block + 3 * cfg.conservative)


@pytest.mark.parametrize("case", list(CASES))
def test_train_end_to_end(case, digits_root, tmp_path):
    flags, plan = CASES[case]
    resolved = resolve(
        ["digits-demo"], {"data_root": str(digits_root), "max_steps": 3, "epochs": 1, "batch_size": 16, **flags}
    )
    cfg = resolved.config
    out = tmp_path / "run"
    result = train.run(resolved, out)

    # all five tasks, a lower-triangular accuracy matrix of percentages
    assert len(result.acc_matrix) == N_TASKS
    assert [len(row) for row in result.acc_matrix] == list(range(1, N_TASKS + 1))
    assert all(0.0 <= a <= 100.0 for row in result.acc_matrix for a in row)

    # five committed checkpoints, each recording the ZO plan; the summary
    run = RunDir.open(out)
    manifest = read_manifest(run)
    assert manifest["tasks_done"] == N_TASKS and sorted(manifest["files"]) == [str(t) for t in range(N_TASKS)]
    assert len(list(out.rglob("task_*.safetensors"))) == N_TASKS
    for task in range(N_TASKS):
        _, meta = load_task(run, task)
        assert meta["zo_plan"] == plan
        assert meta["config"]["vision"] == cfg.vision and meta["config"]["language"] == cfg.language
    assert json.loads((out / "config.json").read_text())["zo_plan"] == plan
    summary = json.loads(run.summary.read_text())
    assert summary["acc_matrix"] == result.acc_matrix
    assert summary["last"] == result.summary.last

    # the checkpoints alone reproduce the accuracy matrix exactly
    again = evaluate.reevaluate(out, overrides={"data_root": str(digits_root)})
    assert again.acc_matrix == result.acc_matrix

    # per-task train events with statistics that fit the configuration
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trains = [e for e in events if e["event"] == "train"]
    assert [e["task"] for e in trains] == list(range(N_TASKS))
    has_zo = any(plan.values())
    has_fo = sum(len(v) for v in plan.values()) < 2 * DEPTH
    for e in trains:
        assert e["steps"] == 3
        assert e["forwards_per_step"] == expected_forwards(cfg, plan)
        assert e["step_seconds"] > 0
        if has_zo and cfg.conservative:
            assert 0.0 <= e["acceptance_rate"] <= 1.0
        else:
            assert e["acceptance_rate"] is None
        assert e["zo_update_norm"] >= 0.0 and (has_zo or e["zo_update_norm"] == 0.0)
        assert (e["fo_grad_norm"] > 0.0) == has_fo
        assert e["loss_first"] == e["loss_first"] and e["loss_last"] == e["loss_last"]  # finite, not NaN
        assert e["loss_kind"] == ("train_mode" if has_fo else "deterministic")  # named, never mixed
        assert e["zo_rule"] == (cfg.zo_rule_name if has_zo else None)

    # the comparable loss and the peaks: per task, training and evaluation apart, labelled
    evals = [e for e in events if e["event"] == "eval"]
    assert all(e["test_loss"] > 0 and e["train_bytes"] > 0 and e["eval_bytes"] > 0 for e in evals)
    peak = summary["peak_memory"]
    assert peak["kind"] == "process_max_rss" and "RSS" in peak["what"]
    assert [p["task"] for p in peak["per_task"]] == list(range(N_TASKS))
    assert peak["bytes"] == peak["train_bytes"] == max(p["train_bytes"] for p in peak["per_task"])
    if has_zo:
        assert sum(e["zo_update_norm"] for e in trains) > 0  # ZO units did move at some point


def test_hybrid_training_is_deterministic(digits_root, tmp_path):
    """Same config, same seed: bit-identical adapters and metrics (ZO directions come from seeds,
    the FO pass's gating noise from the run seed)."""
    flags = {
        "data_root": str(digits_root),
        "max_steps": 2,
        "epochs": 1,
        "batch_size": 16,
        "vision": "zo",
        "language": "zo",
        "layers": "hop-odd",
        "mozo": True,
    }
    results = [train.run(resolve(["digits-demo"], flags), tmp_path / name) for name in ("a", "b")]
    assert results[0].acc_matrix == results[1].acc_matrix
    runs = [RunDir.open(tmp_path / name) for name in ("a", "b")]
    for task in range(N_TASKS):
        (ta, _), (tb, _) = (load_task(run, task) for run in runs)
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta)

    def train_events(name):
        events = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in e.items() if k != "step_seconds"} for e in events if e["event"] == "train"]

    assert train_events("a") == train_events("b")


def test_fo_adapters_learn_beyond_zero_shot_on_the_testbed(testbed_root, tmp_path):
    """The regression test that training works: a short FO run on the test-bed beats zero-shot CLIP,
    whose row is measured before task 0 and matches the accuracy recorded with the shipped weights."""
    flags = {"data_root": str(testbed_root), "base": 50, "inc": 50, "max_steps": 40}
    result = train.run(resolve(["demo"], flags), tmp_path / "run")
    documented = shipped_record("zocli-tiny", "testbed")["zero_shot"]["seen"]
    assert result.zero_shot_seen == pytest.approx(documented, abs=1.0)
    assert len(result.zero_shot) == 2
    assert result.summary.last >= result.zero_shot_seen + 8, (result.summary, result.zero_shot_seen)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["zero_shot_seen"] == result.zero_shot_seen and summary["zero_shot"] == result.zero_shot

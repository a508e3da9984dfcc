"""zocli.study.memory: the live-tensor tracker, per-configuration step memory on the tiny model, plan parsing, CLI.

A row's `peak_bytes` includes the frozen CLIP weights, and zocli-tiny's are dominated by its 49408×32
token embedding (~7.4 MB of ~7.8 MB frozen + adapters), so whole peaks barely differ between configurations.
The properties below compare what the step itself adds: `peak - frozen_weights - trainable`
(activations + gradients + optimizer state).

Measured when this was written (zocli-tiny, MoE, digits 2 prompts, batch 32, cpu tracker), step bytes:
    fo 12.22 M · dual 3.05 M (4.0× less) · vision 3.04 M · language 11.81 M (2 prompts: the text tower's
    activations are small, so language ZO saves little) · dual-hop-odd 8.38 M · dual-hop-even 11.40 M
    meta (upper bound) fo: 13.06 M ≥ cpu 12.22 M.
At batch 8 dual is only 2.9× below FO (the fixed ZO chunk workspace dominates), so batch 32 is where
"dual < FO / 3" is a real statement about activations; at batch 64 dual stays ~3.2 M (chunked) while FO doubles.
"""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from typer.testing import CliRunner

from zocli.cli import app
from zocli.config import ConfigError
from zocli.resolve import resolve
from zocli.study import memory
from zocli.study.memory import LiveTensorTracker, MemoryReport, MemoryRow, measure, plan_for

BATCH = 32
CONFIGS = ("fo", "dual", "vision", "language", "dual-hop-odd", "dual-hop-even", "vision-hop-odd", "language-hop-even")
REPORT_KEYS = {"model", "adapter", "benchmark", "batch_size", "prompts", "image_size", "device", "upper_bound", "rows"}
ROW_KEYS = {
    "config",
    "peak_bytes",
    "frozen_weights",
    "trainable",
    "gradients",
    "optimizer_state",
    "activations",
    "reduction_vs_fo",
}


def step_bytes(row: MemoryRow) -> int:
    """What the step adds on top of the resident model: activations + gradients + optimizer state."""
    return row.peak_bytes - row.frozen_weights - row.trainable


def rows_of(report: MemoryReport) -> dict[str, MemoryRow]:
    return {row.config: row for row in report.rows}


@pytest.fixture(scope="module")
def cpu_report() -> MemoryReport:
    return measure(tiny_config(batch_size=BATCH), CONFIGS, device="cpu")


@pytest.fixture(scope="module")
def meta_report() -> MemoryReport:
    return measure(tiny_config(batch_size=BATCH), ("fo",), device="meta")


# ----------------------------------------------------------------------------------------------
# the tracker


def _known_pattern() -> tuple[list[int], int, int]:
    tracker = LiveTensorTracker()
    log = []
    with tracker:
        a = torch.empty(1000)  # +4000
        log.append(tracker.current)
        b = torch.zeros(500, dtype=torch.float64)  # +4000
        log.append(tracker.current)
        v, w, at = a.view(10, 100), a[:10], a.view(10, 100).t()  # views: no new storage
        a.add_(1.0)  # in place: no new storage
        log.append(tracker.current)
        c = a * 2  # +4000 (peak 12000)
        log.append(tracker.current)
        del a, v, w, at  # the storage dies with its last view: -4000
        log.append(tracker.current)
        d = torch.ones(3000, dtype=torch.uint8)  # +3000
        log.append(tracker.current)
        del b, c, d
        log.append(tracker.current)
    return log, tracker.peak, len(tracker.live)


def test_tracker_counts_a_known_allocation_pattern_exactly():
    log, peak, still_live = _known_pattern()
    assert log == [4000, 8000, 8000, 12000, 8000, 11000, 0]
    assert peak == 12000
    assert still_live == 0


def test_tracker_is_identical_on_two_runs():
    assert _known_pattern() == _known_pattern()


def test_tracker_splits_out_gradients():
    weight = torch.zeros(100, requires_grad=True)  # made outside the mode: not counted
    tracker = LiveTensorTracker()
    hook = weight.register_post_accumulate_grad_hook(lambda p: tracker.mark_gradient(p.grad))
    with tracker:
        (weight * 2.0).sum().backward()
        assert tracker.gradient_bytes == 400  # the .grad tensor is live and marked
        weight.grad = None
        assert tracker.gradient_bytes == 0
    hook.remove()
    assert tracker.peak >= 400 and tracker.gradients_at_peak <= 400


def test_measure_is_deterministic(cpu_report):
    again = measure(tiny_config(batch_size=BATCH), ("fo", "dual"), device="cpu")
    assert rows_of(again) == {name: rows_of(cpu_report)[name] for name in ("fo", "dual")}


# ----------------------------------------------------------------------------------------------
# the paper's memory claims, on the tiny model


def test_report_rows_and_breakdown_sum(cpu_report, meta_report):
    for report in (cpu_report, meta_report):
        for row in report.rows:
            parts = row.frozen_weights + row.trainable + row.optimizer_state + row.gradients + row.activations
            assert row.peak_bytes == parts, row
            assert min(row.frozen_weights, row.trainable, row.gradients, row.optimizer_state, row.activations) >= 0
    assert [r.config for r in cpu_report.rows] == list(CONFIGS)
    fo, dual = rows_of(cpu_report)["fo"], rows_of(cpu_report)["dual"]
    assert fo.reduction_vs_fo == 0.0
    assert dual.optimizer_state == 0 and dual.gradients == 0  # no FO unit: no AdamW state, no backward
    # AdamW: exp_avg + exp_avg_sq per FO parameter, plus one scalar fp32 `step` tensor per parameter tensor
    assert 2 * fo.trainable < fo.optimizer_state <= 2 * fo.trainable + 4 * 1000
    assert (cpu_report.batch_size, cpu_report.prompts, cpu_report.image_size) == (BATCH, 2, 32)
    assert (cpu_report.device, cpu_report.upper_bound, meta_report.upper_bound) == ("cpu", False, True)


def test_dual_zo_step_memory_is_below_a_third_of_fo(cpu_report):
    rows = rows_of(cpu_report)
    fo, dual = step_bytes(rows["fo"]), step_bytes(rows["dual"])
    assert dual < fo / 3, f"dual {dual} vs fo {fo} (ratio {fo / dual:.2f})"
    assert rows["dual"].peak_bytes < rows["fo"].peak_bytes


@pytest.mark.parametrize("branch", ["vision", "language"])
def test_branch_zo_step_memory_is_below_fo(cpu_report, branch):
    rows = rows_of(cpu_report)
    assert step_bytes(rows[branch]) < step_bytes(rows["fo"])
    assert rows[branch].peak_bytes < rows["fo"].peak_bytes


def test_vision_zo_saves_the_vision_activations(cpu_report):
    # digits has 2 prompts against 32 images: the vision tower holds nearly all activations
    rows = rows_of(cpu_report)
    assert step_bytes(rows["vision"]) < step_bytes(rows["fo"]) / 3


@pytest.mark.parametrize("name", ["dual-hop-odd", "dual-hop-even", "vision-hop-odd", "language-hop-even"])
def test_hop_schemes_are_reported_and_at_most_fo(cpu_report, name):
    row = rows_of(cpu_report)[name]
    assert row.peak_bytes > row.frozen_weights + row.trainable
    assert step_bytes(row) <= step_bytes(rows_of(cpu_report)["fo"])
    assert row.reduction_vs_fo is not None and row.reduction_vs_fo >= 0.0


def test_meta_is_an_upper_bound_of_cpu_for_fo(cpu_report, meta_report):
    cpu, meta = rows_of(cpu_report)["fo"], rows_of(meta_report)["fo"]
    assert (meta.frozen_weights, meta.trainable, meta.optimizer_state) == (
        cpu.frozen_weights,
        cpu.trainable,
        cpu.optimizer_state,
    )
    assert meta.peak_bytes >= cpu.peak_bytes
    assert meta_report.device == "meta"


def test_dual_zo_memory_stays_bounded_as_the_batch_grows(cpu_report):
    # ZO forwards run in micro-batches (DESIGN §6): doubling the batch barely moves dual's peak
    double = rows_of(measure(tiny_config(batch_size=2 * BATCH), ("dual",), device="cpu"))["dual"]
    assert step_bytes(double) < 1.25 * step_bytes(rows_of(cpu_report)["dual"])


def test_report_json_schema_is_stable(cpu_report):
    data = json.loads(json.dumps(cpu_report.as_dict()))
    assert set(data) == REPORT_KEYS
    for row in data["rows"]:
        assert set(row) == ROW_KEYS
        assert all(isinstance(row[k], int) for k in ROW_KEYS - {"config", "reduction_vs_fo"})


# ----------------------------------------------------------------------------------------------
# plan names


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fo", {"vision": "fo", "language": "fo", "layers": "all", "mozo": False}),
        ("dual", {"vision": "zo", "language": "zo", "layers": "all", "mozo": False}),
        ("vision-hop-odd", {"vision": "zo", "language": "fo", "layers": "hop-odd", "mozo": False}),
        ("language-prefix", {"vision": "fo", "language": "zo", "layers": "prefix", "mozo": False}),
        (
            "dual-hop-even+mozo",
            {
                "vision": "zo",
                "language": "zo",
                "layers": "hop-even",
                "mozo": True,
                "normalize": "sign",
                "eps_vision": 5e-4,
            },
        ),
    ],
)
def test_plan_for(name, expected):
    assert plan_for(name) == expected


def test_plan_for_rejects_mozo_without_a_zo_branch():
    with pytest.raises(ConfigError):
        plan_for("fo+mozo")


@pytest.mark.parametrize(("name", "suggestion"), [("fo-hop-odd", "hop-odd"), ("visoin", "'vision'")])
def test_plan_for_rejects_bad_names_with_a_suggestion(name, suggestion):
    with pytest.raises(ConfigError, match="did you mean") as info:
        plan_for(name)
    assert name in str(info.value) and suggestion in str(info.value)


def test_mozo_row_measures_a_mozo_step(monkeypatch):
    seen = []

    class Recording(memory.Stepper):
        def __init__(self, model, cfg):
            seen.append(cfg)
            super().__init__(model, cfg)

    monkeypatch.setattr(memory, "Stepper", Recording)
    measure(tiny_config(batch_size=4), ("dual+mozo",), device="cpu")
    expected = resolve(["digits-demo"], {"vision": "zo", "language": "zo", "mozo": True}).config
    assert seen and seen[0].sign == expected.sign  # True
    assert seen[0].eps_for("vision") == expected.eps_for("vision")  # 5e-4


# ----------------------------------------------------------------------------------------------
# CLI


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], prog_name="zocli")


def test_cli_memory_json_is_one_document():
    result = invoke(
        "memory", "--preset", "digits-demo", "--batch-size", "8", "--configs", "fo,dual", "--device", "cpu", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the whole stdout, nothing else
    assert set(data) == REPORT_KEYS
    assert [row["config"] for row in data["rows"]] == ["fo", "dual"]
    assert all(set(row) == ROW_KEYS for row in data["rows"])
    assert (data["batch_size"], data["device"], data["model"]) == (8, "cpu", "zocli-tiny")


def test_cli_memory_reports_progress_per_configuration():
    # Found: on meta it ran 35 s - 2 min with no output while its help said "instant".
    result = invoke(
        "memory", "--preset", "digits-demo", "--batch-size", "4", "--configs", "fo,dual", "--device", "meta"
    )
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("measuring")] == [
        "measuring fo (1/2) ...",
        "measuring dual (2/2) ...",
    ]
    assert "instant" not in invoke("memory", "--help").stdout


def test_cli_memory_unknown_config_is_a_usage_error():
    result = invoke("memory", "--preset", "digits-demo", "--configs", "nonsense", "--device", "cpu")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "nonsense" in result.stderr and "Traceback" not in result.stderr


def test_cli_memory_unknown_config_error_is_one_line():
    result = invoke("memory", "--preset", "digits-demo", "--configs", "nonsense", "--device", "cpu")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# ----------------------------------------------------------------------------------------------
# ViT-B/16 (random init, no weights: the meta tracker needs no storage)


@pytest.mark.slow
def test_vit_b16_dual_zo_step_memory_is_below_a_fifth_of_fo():
    # Measured when written (meta, MoE, cifar100 10 prompts, batch 16): step fo 2620 MB, dual 189 MB (13.9×).
    cfg = resolve([], {"pretrained": "none", "batch_size": 16, "device": "cpu"}).config
    report = measure(cfg, ("fo", "dual"), device="meta")
    rows = rows_of(report)
    assert rows["fo"].trainable == 4_027_392 * 4  # DESIGN §3's parameter count, fp32
    fo, dual = step_bytes(rows["fo"]), step_bytes(rows["dual"])
    assert dual < fo / 5, f"dual {dual} vs fo {fo}"


@pytest.mark.slow
def test_the_memory_table_quoted_in_the_readme_and_docs_is_what_memory_computes():
    """README's and docs/measurements.md's MoE column is `zocli memory --preset cifar100-inc10 --device meta`."""
    root = Path(__file__).resolve().parents[1]
    cfg = resolve(["cifar100-inc10"], {"pretrained": "none", "device": "cpu"}).config
    report = measure(cfg, ("fo", "dual", "vision", "language"), device="meta")
    names = {"fo": "all FO", "dual": "Dual ZO", "vision": "Vision ZO", "language": "Language ZO"}
    for row in report.rows:
        quoted = f"| {names[row.config]} | {row.peak_bytes / 1e9:.2f} GB"
        for page in ("README.md", "docs/measurements.md"):
            assert quoted in (root / page).read_text(), (page, quoted)

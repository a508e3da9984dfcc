"""zocli.run.fidelity: the finite-difference fidelity check, and train's gate on its first batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from conftest import tiny_config

from zocli.data import catalogue
from zocli.resolve import resolve
from zocli.run import fidelity
from zocli.run.session import open_session
from zocli.study.memory import synthetic_batch

DUAL = {"vision": "zo", "language": "zo"}


def test_check_on_cpu_fp32_reference_tf32_identical_bf16_rejected(tiny_model):
    cfg = tiny_config(**DUAL)
    torch.manual_seed(0)
    images, labels, tokens = synthetic_batch(tiny_model, catalogue.get(cfg.benchmark), 8, 2, "cpu")
    images.normal_()  # zeros would make every image the same
    state = {k: v.clone() for k, v in tiny_model.units.state_dict().items()}
    flags = [p.requires_grad for p in tiny_model.adapter_parameters()]
    report = fidelity.measure(tiny_model, cfg, [(images, labels, tokens)], ["tf32", "bf16"], 4, seed=0)
    rows = {row.precision: row for row in report.precisions}
    assert list(rows) == ["fp32", "tf32", "bf16"] and {b.block for b in rows["fp32"].blocks} == {"vision", "language"}
    for block in rows["fp32"].blocks:  # the fp32 reference against float64: rounding only
        assert block.rel_error_fp64 < 0.01 and block.cosine_fp64 > 0.9999
    assert all(b.rel_error == 0.0 and b.cosine == pytest.approx(1.0) for b in rows["tf32"].blocks)  # = fp32 on a CPU
    assert not rows["bf16"].passed and max(b.rel_error for b in rows["bf16"].blocks) > fidelity.MAX_REL_ERROR
    for row in report.precisions:  # the verdict is the documented rule
        rule = all(b.rel_error <= report.max_rel_error and b.cosine >= report.min_cosine for b in row.blocks)
        assert row.passed == (row.precision == "fp32" or rule)
    after = tiny_model.units.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())  # the model exactly as found
    assert [p.requires_grad for p in tiny_model.adapter_parameters()] == flags


@pytest.fixture(scope="module")
def session(digits_root):
    return open_session(tiny_config(data_root=str(digits_root), **DUAL))


def test_train_gate_auto_explicit_and_refused(session):
    resolved = resolve(["digits-demo"], {"data_root": session.cfg.data_root, **DUAL})
    chosen, report = fidelity.choose_zo_precision(session, resolved)
    assert chosen.config.zo_precision == "fp32" and chosen.sources["zo_precision"] == "auto" and report is None
    tf32 = replace(resolved, config=replace(resolved.config, zo_precision="tf32"))
    assert fidelity.choose_zo_precision(session, tf32) == (tf32, None)  # tf32 is fp32 on a CPU: nothing to check


def test_train_refuses_a_failing_zo_precision_before_creating_the_run(digits_root, tmp_path):
    from zocli.cli._shared import classify
    from zocli.run.train import run

    resolved = resolve(["digits-demo"], {"data_root": str(digits_root), "vision": "zo", "zo_precision": "bf16"})
    with pytest.raises(fidelity.FidelityFailed, match="bf16 fails the finite-difference fidelity check") as failed:
        run(resolved, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert classify(failed.value)[0] == 2  # a usage error on the command line


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_check_on_cuda_measures_tf32_and_bf16_against_fp32():
    from zocli.method.attach import build_model

    cfg = tiny_config(device="cuda", **DUAL)
    model = build_model(cfg, "cuda")
    images, labels, tokens = synthetic_batch(model, catalogue.get(cfg.benchmark), 8, 2, "cuda")
    images.normal_()
    report = fidelity.measure(model, cfg, [(images, labels, tokens)], ["tf32", "bf16"], 4, seed=0)
    assert [row.precision for row in report.precisions] == ["fp32", "tf32", "bf16"]
    assert all(b.rel_error_fp64 is None for row in report.precisions for b in row.blocks)  # no fp64 on CUDA
    for row in report.precisions:
        rule = all(b.rel_error <= report.max_rel_error and b.cosine >= report.min_cosine for b in row.blocks)
        assert row.passed == (row.precision == "fp32" or rule)

"""zocli.method.precision: what each --precision does to a matmul, and that the loss stays fp32 under bf16."""

from __future__ import annotations

import pytest
import torch

from zocli.method.precision import at_least_fp32, full_precision, matmuls, peak_tflops, zo_default


def _matmul_dtype(precision: str, device: str) -> torch.dtype:
    x, w = torch.randn(4, 8, device=device), torch.randn(8, 3, device=device)
    with matmuls(precision, device):
        return (x @ w).dtype


def test_cpu_bf16_autocasts_and_fp32_tf32_stay_ieee():
    assert _matmul_dtype("bf16", "cpu") == torch.bfloat16
    assert _matmul_dtype("fp32", "cpu") == _matmul_dtype("tf32", "cpu") == torch.float32
    x, w = torch.randn(16, 32), torch.randn(32, 8)
    with matmuls("tf32", "cpu"):
        tf32 = x @ w
    assert torch.equal(tf32, x @ w)  # tf32 is exactly fp32 on a CPU
    assert not torch.is_autocast_enabled("cpu")  # the context does not leak


def test_full_precision_inside_bf16_keeps_the_loss_fp32():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with matmuls("bf16", "cpu"):
        features = x @ w
        with full_precision("cpu"):
            logits = at_least_fp32(features) @ torch.randn(3, 5)
    assert features.dtype == torch.bfloat16 and logits.dtype == torch.float32
    assert at_least_fp32(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64  # the fp64 reference stays


def test_auto_candidates_and_peaks():
    assert zo_default("cpu") == ("fp32",)
    assert zo_default("cuda") == ("bf16", "tf32", "fp32")
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.0 and peak_tflops("Some CPU", "fp32") is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_tf32_flags_are_scoped():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with matmuls("tf32", "cuda"):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    with matmuls("fp32", "cuda"):
        assert not torch.backends.cuda.matmul.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before
    assert _matmul_dtype("bf16", "cuda") == torch.bfloat16

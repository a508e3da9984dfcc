"""Matmul precision of the frozen backbone: fp32 (IEEE), tf32 (CUDA tensor cores) or bf16 (autocast).

Only the backbone's forwards change: adapter parameters, optimizer state, perturbation arithmetic and
the loss (logits and cross-entropy, `full_precision`) stay fp32 whatever the setting.

  fp32  IEEE float32 matmuls, TF32 off (PyTorch's default): the study's baseline and the ZO reference.
  tf32  CUDA: float32 tensors, matmuls and convolutions on TF32 tensor cores (10-bit mantissa inputs).
        CPU: identical to fp32 — TF32 is a CUDA tensor-core format, and zocli does not let oneDNN
        lower fp32 matmuls on a CPU, so a CPU run at tf32 computes exactly what fp32 computes.
  bf16  `torch.autocast(dtype=bfloat16)` on the device (CPU too): matmuls and convolutions in bf16,
        reductions and normalisation in fp32, as autocast lists them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

# Dense peak TFLOP/s (no sparsity) per precision, for "% of peak": NVIDIA's H100 SXM data sheet.
PEAK_TFLOPS = {"H100": {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0}}


@contextmanager
def matmuls(precision: str, device: torch.device | str) -> Iterator[None]:
    """Run the enclosed backbone forwards at `precision` on `device`; global flags restored after."""
    kind = torch.device(device).type
    if precision == "bf16" and kind in ("cpu", "cuda"):
        with torch.autocast(kind, dtype=torch.bfloat16):
            yield
        return
    if kind != "cuda":  # fp32 and tf32 on a CPU (or meta): IEEE fp32, nothing to switch
        yield
        return
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def full_precision(device: torch.device | str):
    """Autocast off inside `matmuls("bf16")`: for the logits and the loss, which stay fp32."""
    kind = torch.device(device).type
    return torch.autocast(kind, enabled=False) if kind in ("cpu", "cuda") else nullcontext()


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 features as fp32; fp32 and fp64 (the fidelity check's reference) unchanged."""
    return x.float() if x.is_floating_point() and x.element_size() < 4 else x


def zo_default(device: torch.device | str) -> tuple[str, ...]:
    """The ZO precisions `--zo-precision auto` tries, fastest first; the first that passes the
    finite-difference fidelity check is used. A CPU gets fp32 alone: bf16 autocast is not faster on
    CPUs without bf16 matrix units (README, "Precision"), and tf32 is fp32 there."""
    return ("bf16", "tf32", "fp32") if torch.device(device).type == "cuda" else ("fp32",)


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The dense peak of a known device for `precision` (matched by name), else None."""
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in device_name.lower():
            return peaks[precision]
    return None

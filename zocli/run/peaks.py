"""A run's memory high-water marks: CUDA allocations per phase, or the process's peak RSS on a CPU."""

from __future__ import annotations

import resource
from typing import Any

import torch


def peak(device: torch.device) -> int:
    """Bytes at the high-water mark: CUDA allocations since the last reset, or on CPU the process's peak
    RSS, which cannot be reset (so it is the high-water mark of the whole process so far)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


PEAK_KINDS = {  # what each peak figure is, written beside it
    "cuda_max_allocated": "torch.cuda.max_memory_allocated, reset before each task's training and before its "
    "evaluation; bytes = the training peak",
    "process_max_rss": "process peak RSS (includes ~1 GB of torch and libraries; never reset, so each figure is the "
    "high-water mark so far); bytes = the training peak",
}


def peak_memory(device: torch.device, peaks: list[dict[str, int]]) -> dict[str, Any]:
    kind = "cuda_max_allocated" if device.type == "cuda" else "process_max_rss"
    train = max((p["train_bytes"] for p in peaks), default=peak(device))
    evaluation = max((p["eval_bytes"] for p in peaks), default=None)
    return {
        "kind": kind,
        "what": PEAK_KINDS[kind],
        "bytes": train,
        "train_bytes": train,
        "eval_bytes": evaluation,
        "per_task": peaks,
    }

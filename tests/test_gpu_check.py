"""perf/gpu_check.py (`make gpu-check`) on a CPU: a dry run of its plan, said in one line, exit 0; and
scripts/wheels.py (`make wheels`): the offline install's requirements never include PyTorch itself."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is what a machine without CUDA does")
def test_without_cuda_gpu_check_prints_its_plan_says_so_and_exits_0(tmp_path, capsys):
    check = _load(ROOT / "perf" / "gpu_check.py")
    assert check.main(["--out", str(tmp_path / "report")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("gpu-check: no CUDA device") and "dry run" in lines[-1]
    plan = "\n".join(lines[:-1])
    for item in (
        "-m gpu",
        "memory",
        "--adapter moe",
        "--adapter lora",
        "--device cuda",
        "--flops",
        "bf16",
        "--fidelity",
    ):
        assert item in plan, item
    assert "--pipeline testbed" in plan and "parallel.py" not in plan  # W = 1 vs N only with several devices
    assert not (tmp_path / "report").exists()  # nothing ran, nothing written
    with_two = [c.name for c in check.plan("python", "/data", 2)]
    assert with_two[-1] == "ranks W=1 vs W=2" and len(with_two) == len(lines)  # lines: the plan and the note


def test_the_offline_wheels_leave_pytorch_to_the_node():
    wheels = _load(ROOT / "scripts" / "wheels.py")
    found = wheels.closure(["open_clip_torch", "pytest"])
    assert {"open-clip-torch", "timm", "pytest"} <= found.keys()  # timm: open_clip's, pulled in
    assert not any(wheels.KEPT.match(name) for name in found)  # torch, torchvision, triton, nvidia-*: the node's


def test_the_reports_memory_table_puts_the_papers_figures_beside_the_measured_ones():
    check = _load(ROOT / "perf" / "gpu_check.py")
    report = {
        "adapter": "moe",
        "rows": [
            {"config": "fo", "peak_bytes": 20_000_000_000, "reduction_vs_fo": 0.0},
            {"config": "dual", "peak_bytes": 1_000_000_000, "reduction_vs_fo": 95.0},
        ],
    }
    table = "\n".join(check._memory_table(report))
    assert "| fo | 20.00 | 19.96 | 0.0 % |" in table and "| dual | 1.00 | 2.17 | 95.0 % |" in table

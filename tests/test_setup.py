"""Set-up: `make` picks a torch build that fits the machine, and the package builds without warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _make_dry_run(tmp_path: Path, gpu_listing: str, *overrides: str) -> str:
    """`make -n` of the venv target with a stand-in `nvidia-smi` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '{gpu_listing}'\n")
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    proc = subprocess.run(
        ["make", "-n", "-B", f"{venv}/bin/zocli", f"VENV={venv}", *overrides],
        cwd=ROOT,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_installs_the_cpu_torch_build_without_a_gpu(tmp_path):
    # Found: `make demo` on a CPU-only machine installed the CUDA build (a 6.1 GB venv).
    commands = _make_dry_run(tmp_path, "", "CPU_INDEX_UP=yes")  # as if PyTorch's CPU index answered
    assert f"--index-url {CPU_INDEX} torch==" in commands
    assert f"from {CPU_INDEX}" in commands  # make says which build it picked


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_falls_back_to_pypi_where_the_cpu_index_does_not_answer(tmp_path):
    # CI and these machines reach PyPI alone: an unreachable --index-url would fail the install.
    assert "--index-url" not in _make_dry_run(tmp_path, "", "CPU_INDEX_UP=")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_keeps_the_cuda_build_with_a_gpu_or_when_asked(tmp_path):
    assert "--index-url" not in _make_dry_run(tmp_path / "gpu", "GPU 0: NVIDIA H100 (UUID: x)\\n")
    assert "--index-url" not in _make_dry_run(tmp_path / "asked", "", "TORCH_INDEX=")


def test_the_package_builds_without_setuptools_warnings_and_ships_its_data(tmp_path):
    # Found: two screens of "Package 'zocli.resources' is absent from the `packages` configuration".
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    shutil.copytree(ROOT / "zocli", source / "zocli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr and "would be ignored" not in proc.stderr, proc.stderr
    names = zipfile.ZipFile(next((tmp_path / "dist").glob("*.whl"))).namelist()
    shipped = {
        p.relative_to(ROOT).as_posix()
        for folder in ("resources", "model_configs", "weights")
        for p in (ROOT / "zocli" / folder).iterdir()
    }
    assert shipped <= set(names)

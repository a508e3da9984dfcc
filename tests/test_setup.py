"""Set-up: `make` picks a torch build that fits the machine, and the package builds without warnings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
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


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory) -> tuple[Path, str]:
    """(the wheel, the build's stderr), built offline from a copy of the package alone."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    shutil.copytree(ROOT / "zocli", source / "zocli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run([*pip_wheel, "-w", str(tmp / "dist"), str(source)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return next((tmp / "dist").glob("*.whl")), proc.stderr


def test_the_package_builds_without_setuptools_warnings_and_ships_its_data(wheel_build):
    # Found: two screens of "Package 'zocli.resources' is absent from the `packages` configuration".
    wheel, stderr = wheel_build
    assert "Warning" not in stderr and "would be ignored" not in stderr, stderr
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {
        p.relative_to(ROOT).as_posix()
        for folder in ("resources", "model_configs", "weights", "presets")
        for p in (ROOT / "zocli" / folder).iterdir()
    }
    assert shipped <= set(names)


@pytest.fixture(scope="module")
def installed(wheel_build, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(a working directory outside the repository, the environment of a fresh venv holding only the wheel).

    The venv sees this environment's dependencies through a .pth line naming their site-packages; .pth
    files inside that folder are not run, so this environment's editable zocli stays out of sight."""
    tmp = tmp_path_factory.mktemp("installed")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site_packages,) = venv.glob("lib/python*/site-packages")
    dependencies = [p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir()]
    (site_packages / "dependencies.pth").write_text("".join(f"{p}\n" for p in dependencies))
    python = venv / "bin" / "python"
    pip_install = [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed"]
    subprocess.run([*pip_install, str(wheel_build[0])], check=True, capture_output=True)
    work = tmp / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "ZOCLI_DATA")}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}", "HF_HUB_OFFLINE": "1", "HOME": str(tmp / "home")}
    env["OMP_NUM_THREADS"] = "1"  # a tiny model: more threads only spin against the other test workers
    return work, env


def zocli(installed, *args: str) -> subprocess.CompletedProcess:
    work, env = installed
    return subprocess.run(["zocli", *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)


def test_the_installed_package_is_the_wheel_not_the_source_tree(installed):
    work, env = installed
    where = subprocess.run(
        ["python", "-c", "import zocli; print(zocli.__file__)"], cwd=work, env=env, capture_output=True, text=True
    )
    assert where.returncode == 0, where.stderr
    location = Path(where.stdout.strip())
    assert location.is_relative_to(work.parent / "venv") and not location.is_relative_to(ROOT)


def test_the_installed_package_lists_its_presets(installed):
    listed = zocli(installed, "presets", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {"demo", "fo", "digits-demo"} <= set(json.loads(listed.stdout))


def test_the_installed_package_trains_evaluates_and_plans_a_sweep(installed, tmp_path):
    # The demo preset's data (the generated test-bed) and weights ship in the wheel: nothing to download.
    # Two tasks of one step each keep it to seconds; what it proves is that every file it needs is installed.
    data = ["--data-root", str(tmp_path / "data")]
    fast = ["--inc", "50", "--max-steps", "1"]
    trained = zocli(installed, "train", "--preset", "demo", *fast, "--out", str(tmp_path / "run"), *data)
    assert trained.returncode == 0, trained.stderr
    evaluated = zocli(installed, "eval", str(tmp_path / "run"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert len(json.loads(evaluated.stdout)["acc_matrix"]) == 2
    grid = ["--grid", "lr=1e-3,3e-3", "--seeds", "0-1", "--out", str(tmp_path / "sweep"), *data]
    planned = zocli(installed, "sweep", "--preset", "demo", *grid, "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    assert len(json.loads(planned.stdout)["runs"]) == 4


@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning])
def test_a_deprecation_raised_from_zocli_fails_the_tests_and_one_from_elsewhere_does_not(category):
    with pytest.raises(category):
        warnings.warn_explicit("old API", category, "zocli/run/train.py", 1, module="zocli.run.train")
    with pytest.warns(category):
        warnings.warn_explicit("old API", category, "thirdparty.py", 1, module="thirdparty")

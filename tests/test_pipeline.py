"""examples/pipeline.sh end to end: a lab script that reads only JSON from zocli's stdout (offline, CPU)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


# slow: ten zocli processes, each importing torch (60 s, a third of the default suite's budget); the
# commands it chains are each covered in the default suite (test_cli, test_json_outputs, and test_setup's
# installed wheel); `make test-all` runs the script itself.
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_pipeline_script_runs_offline(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        # one intra-op thread per process: the script's ten zocli processes run one after another on a
        # shared 2-core machine, where torch's default thread count made each step ~10x slower
        "OMP_NUM_THREADS": "1",
    }
    env.pop("ZOCLI_DATA", None)
    began = time.perf_counter()
    script = ROOT / "examples" / "pipeline.sh"
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "work")],
        env=env,
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )
    print(f"\n[pipeline] {time.perf_counter() - began:.1f} s")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"pipeline ok: {tmp_path / 'work'}" in proc.stdout
    assert "Traceback" not in proc.stderr
    for plan in ("fo", "dual-zo", "vision-hop-odd", "dual-hop-even-mozo"):
        assert f"train {plan}: Last " in proc.stdout
        assert (tmp_path / "work" / "runs" / plan / "summary.json").is_file()
    assert not (tmp_path / "runs").exists()  # every run went where the script said

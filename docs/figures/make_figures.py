"""Every figure zocli draws, from test-bed runs, into docs/figures/ (what docs/figures/README.md shows).

    PYTHONPATH=. HF_HUB_OFFLINE=1 python docs/figures/make_figures.py [--steps N] [--out DIR]

Offline, CPU: the demo run (one run's heatmap), a 3-configuration × 2-seed sweep on the test-bed (run
curves and mean ± std curves, PNG and PDF), and the probe-variance histogram. `--steps` caps the steps
per task (default 6: minutes, not the demo's full tasks; the figures' shapes, not their numbers, are
the point here).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = "fo,vision-zo,dual-hop-even-mozo"  # three of the study's presets


def zocli(*args: str) -> None:
    command = [sys.executable, "-m", "zocli", *args]
    print("$ zocli " + " ".join(args), flush=True)
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="steps per task (the demo itself: 38)")
    parser.add_argument("--out", type=Path, default=HERE, help="where the figures go")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zocli-figures-") as tmp:
        runs, steps = Path(tmp), ["--max-steps", str(args.steps)]
        zocli("train", "--preset", "demo", *steps, "--out", str(runs / "demo"), "--json")
        zocli("eval", str(runs / "demo"), "--plot", str(out / "heatmap.png"))
        zocli("eval", str(runs / "demo"), "--plot", str(out / "heatmap.pdf"))
        sweep = runs / "sweep"
        zocli(
            "sweep",
            "--preset",
            "demo",
            "--grid",
            f"preset={CONFIGS}",
            "--grid",
            f"max-steps={args.steps}",
            "--seeds",
            "0-1",
            "--out",
            str(sweep),
            "--json",
        )
        for suffix in ("png", "pdf"):
            zocli("eval", str(sweep), "--plot", str(out / f"seed-curves.{suffix}"))
            zocli("eval", str(sweep), "--by-run", "--plot", str(out / f"run-curves.{suffix}"))
        zocli(
            "probe-variance",
            "--preset",
            "demo",
            "--preset",
            "dual-zo",
            "--batches",
            "2",
            "--draws",
            "4",
            "--plot",
            str(out / "probe-variance.png"),
        )
        zocli("eval", str(sweep), "--markdown")
    print(f"figures in {out}")


if __name__ == "__main__":
    main()

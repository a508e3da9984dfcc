"""`make gpu-check`: every check that needs CUDA, on one device, in one command; one Markdown + JSON report.

In order, each a subprocess with its own time limit (all together under 8 minutes on one H100):
 1. the `gpu`-marked tests (pytest -m gpu);
 2. `zocli memory --device cuda` for the study's configurations (fo, dual, vision, language) with MoE and LoRA
    adapters at the paper's setting (ViT-B/16, CIFAR-100 10 prompts, batch 128), beside the paper's figures;
 3. the step-time benchmark (perf/step_time.py --flops) on ViT-B/16 (random init) at fp32, tf32 and bf16:
    s/step and % of the device's dense peak for the precision;
 4. the finite-difference fidelity check of tf32 and bf16 against fp32 on ViT-B/16 (random init);
 5. the device input pipeline's images/s on the test-bed (generated here: nothing is downloaded);
 6. with several devices, W = 1 against W = N step times (perf/parallel.py, one GPU per rank).
On a machine without CUDA it prints the plan, says so in one line and exits 0 (a dry run); `--dry-run` does
the same anywhere. Needs PyTorch with CUDA and zocli (and pytest) installed; on an air-gapped node those come
from a folder of wheels (`make wheels` elsewhere; README, "Development").

    python perf/gpu_check.py --out gpu-check     # gpu-check/report.md and gpu-check/report.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60  # the whole check; a check that would start past it is skipped and reported so
PRECISIONS = ("fp32", "tf32", "bf16")
PAPER = {"model": "ViT-B-16", "benchmark": "cifar100", "inc": "10", "batch_size": "128"}


@dataclass
class Check:
    name: str
    argv: list[str]
    limit_s: int
    parse: str = "text"  # text | json: how the report keeps its stdout
    result: dict = field(default_factory=dict)


def plan(python: str, data_root: str, devices: int) -> list[Check]:
    """The checks, in order, for a machine with `devices` CUDA devices (0: what a GPU machine would run)."""
    zocli = [python, "-m", "zocli"]
    step_time = [python, str(ROOT / "perf" / "step_time.py"), "--model", "ViT-B-16", "--device", "cuda"]
    checks = [Check("gpu-marked tests", [python, "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests")], 150)]
    for adapter in ("moe", "lora"):
        paper = [f"--{k.replace('_', '-')}={v}" for k, v in PAPER.items()]
        memory = [*zocli, "memory", *paper, "--adapter", adapter, "--configs", "fo,dual,vision,language"]
        checks.append(Check(f"memory {adapter}", [*memory, "--device", "cuda", "--json"], 60, "json"))
    for precision in PRECISIONS:
        argv = [*step_time, "--batch-size", "32", "--configs", "fo,dual,vision", "--steps", "3", "--flops"]
        checks.append(
            Check(f"step time {precision}", [*argv, "--precision", precision, "--zo-precision", precision], 60)
        )
    checks.append(Check("fidelity tf32 bf16", [python, __file__, "--fidelity"], 60, "json"))
    prepare = [*zocli, "prepare", "--benchmark", "testbed", "--data-root", data_root]
    checks.append(Check("prepare test-bed", prepare, 60))
    pipeline = ["--configs", "", "--pipeline", "testbed", "--data-root", data_root, "--batch-size", "128"]
    checks.append(Check("input pipeline", [*step_time, *pipeline, "--workers", "4"], 60))
    if devices > 1:
        argv = [python, str(ROOT / "perf" / "parallel.py"), "--device", "cuda", "--model", "ViT-B-16"]
        argv += ["--pretrained", "none", "--batch-size", "32", "--steps", "5", "--worlds", f"1,{devices}"]
        checks.append(Check(f"ranks W=1 vs W={devices}", argv, 120))
    return checks


def fidelity() -> None:
    """Check 4, in its own process: tf32 and bf16 against fp32, 8 directions per block, on a random batch."""
    import torch

    from zocli.data import catalogue
    from zocli.method.attach import build_model
    from zocli.resolve import resolve
    from zocli.run import fidelity as check
    from zocli.study.memory import synthetic_batch

    flags = {"model": "ViT-B-16", "pretrained": "none", "device": "cuda", "vision": "zo", "language": "zo"}
    cfg = resolve([], flags).config
    model = build_model(cfg, "cuda")
    torch.manual_seed(0)
    images, labels, tokens = synthetic_batch(model, catalogue.get(cfg.benchmark), 32, 10, "cuda")
    images.normal_()
    report = check.measure(model, cfg, [(images, labels, tokens)], ["tf32", "bf16"], 8, seed=0)
    print(json.dumps(report.as_dict()))


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
    }


def run(checks: list[Check]) -> None:
    began = time.monotonic()
    for check in checks:
        left = BUDGET_S - (time.monotonic() - began)
        if left < 10:
            check.result = {"status": "skipped", "why": f"the {BUDGET_S} s budget is spent"}
            continue
        print(f"gpu-check: {check.name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            done = subprocess.run(
                check.argv, capture_output=True, text=True, timeout=min(check.limit_s, left), cwd=ROOT, check=False
            )
            status, out, err = (
                ("ok" if done.returncode == 0 else f"failed (exit {done.returncode})"),
                done.stdout,
                done.stderr,
            )
        except subprocess.TimeoutExpired as late:
            status, out, err = f"timed out ({late.timeout:.0f} s)", _text(late.stdout), _text(late.stderr)
        check.result = {"status": status, "seconds": round(time.monotonic() - start, 1), "stdout": out[-6000:]}
        if status != "ok":
            check.result["stderr"] = err[-3000:]
        if check.parse == "json" and status == "ok":
            check.result["data"] = json.loads(out.strip().splitlines()[-1])


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value or ""


def markdown(env: dict, checks: list[Check]) -> str:
    lines = [
        f"# zocli gpu-check on {', '.join(env['devices']) or 'no CUDA device'}",
        "",
        f"{env['date']} · host {env['host']} · Python {env['python']} · torch {env['torch']} · CUDA {env['cuda']}",
        "",
        "| check | status | seconds |",
        "|---|---|---|",
        *(f"| {c.name} | {c.result.get('status')} | {c.result.get('seconds', '')} |" for c in checks),
    ]
    for c in checks:
        lines += ["", f"## {c.name}: {c.result.get('status')}", "", f"`{shlex.join(c.argv)}`", ""]
        data = c.result.get("data")
        if data and c.name.startswith("memory"):
            lines += _memory_table(data)
        elif data and c.name.startswith("fidelity"):
            lines += _fidelity_table(data)
        elif c.result.get("stdout"):
            lines += ["```", c.result["stdout"].rstrip()[-4000:], "```"]
        if c.result.get("stderr"):
            lines += ["", "stderr (tail):", "```", c.result["stderr"].rstrip()[-2000:], "```"]
    return "\n".join(lines) + "\n"


def _memory_table(report: dict) -> list[str]:
    from zocli.cli.render_measure import PAPER_GB

    paper = PAPER_GB.get(report["adapter"], {})
    rows = ["| config | peak GB (measured) | paper GB | reduction vs FO |", "|---|---|---|---|"]
    for r in report["rows"]:
        measured = r["peak_bytes"] / 1e9
        rows.append(f"| {r['config']} | {measured:.2f} | {paper.get(r['config'], '–')} | {r['reduction_vs_fo']} % |")
    return rows


def _fidelity_table(report: dict) -> list[str]:
    rows = ["| precision | block | rel. error of d | cos(ĝ, ĝ fp32) | passes |", "|---|---|---|---|---|"]
    for p in report["precisions"]:
        for b in p["blocks"]:
            rows.append(
                f"| {p['precision']} | {b['block']} | {b['rel_error']:.4f} | {b['cosine']:.5f} | {p['passed']} |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check", help="report directory (report.md, report.json)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter the checks run with")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    parser.add_argument("--fidelity", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fidelity:
        fidelity()
        return 0
    import torch

    devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with tempfile.TemporaryDirectory(prefix="zocli-gpu-check-") as data_root:
        checks = plan(args.python, data_root, devices)
        if args.dry_run or not devices:
            for i, check in enumerate(checks, 1):
                print(f"{i:2d}. {check.name} (≤ {check.limit_s} s): {shlex.join(check.argv)}")
            if not devices:
                print(
                    f"gpu-check: no CUDA device (torch {torch.__version__}): the plan above is a dry run, ran nothing"
                )
            return 0
        env = environment()
        run(checks)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(env, checks))
    report = {"environment": env, "checks": [{"name": c.name, "argv": c.argv, **c.result} for c in checks]}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    failed = [c.name for c in checks if c.result.get("status") != "ok"]
    print(
        f"gpu-check: {len(checks) - len(failed)}/{len(checks)} ok; report in {out}/report.md"
        + (f"; not ok: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

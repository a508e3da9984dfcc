"""`zocli memory` and `zocli probe-variance`: the study's two measurements."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional


from .. import render
from ._shared import Opt, app, err, errors, out, plot_to, plots_check, precheck

@app.command("probe-variance")
def probe_variance_cmd(
    run_dir: Annotated[Optional[Path], Opt("--run", help="Probe a run's checkpoint (with --task K) instead of a fresh model.")] = None,
    task: Annotated[Optional[int], Opt("--task", help="Checkpoint after task K, and the task whose batches are drawn (default: last / 0).")] = None,
    preset: Annotated[Optional[list[str]], Opt("--preset", "-p", help="Fresh model: presets to resolve.")] = None,
    benchmark: Annotated[Optional[str], Opt()] = None,
    inc: Annotated[Optional[int], Opt()] = None,
    model: Annotated[Optional[str], Opt()] = None,
    pretrained: Annotated[Optional[str], Opt()] = None,
    adapter: Annotated[Optional[str], Opt()] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    batches: Annotated[int, Opt(min=1, help="Batches N to draw from the task.")] = 4,
    draws: Annotated[int, Opt(min=2, help="ZO estimates per batch.")] = 8,
    queries: Annotated[int, Opt(min=1, help="Directions Q averaged in each estimate.")] = 1,
    eps: Annotated[Optional[float], Opt()] = None,
    eps_vision: Annotated[Optional[float], Opt()] = None,
    eps_language: Annotated[Optional[float], Opt()] = None,
    estimator: Annotated[Optional[str], Opt(help="one-sided | two-sided.")] = None,
    seed: Annotated[Optional[int], Opt()] = None,
    data_root: Annotated[Optional[str], Opt()] = None,
    device: Annotated[Optional[str], Opt()] = None,
    plot: Annotated[Optional[Path], Opt("--plot", help="Write the variance distributions to this PNG.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Per-branch and per-layer variance of ZO gradient estimates, against FO gradients."""
    measuring = {"eps": eps, "eps_vision": eps_vision, "eps_language": eps_language, "estimator": estimator,
                 "seed": seed, "batch_size": batch_size, "device": device,
                 "data_root": data_root or os.environ.get("ZOCLI_DATA")}
    with errors():
        plots_check(plot)
        if run_dir is not None:
            session, probe_task = _run_session(run_dir, task, measuring)
        else:
            flags = {"benchmark": benchmark, "inc": inc, "model": model, "pretrained": pretrained,
                     "adapter": adapter, **measuring}
            session, probe_task = _fresh_session(preset or [], flags), task or 0
        from ..probe import probe_variance

        report = probe_variance(session, probe_task, batches, draws, queries)
        if plot is not None:
            plot_to(lambda plots: plots.variance_histogram(report, plot))
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(render.variance(report))
    if plot is not None:
        out.print(f"plot: {plot}")


def _run_session(run_dir: Path, task: Optional[int], measuring: dict):
    """A run's model after task K (default: its last), probed on task K's batches (default: task 0)."""
    from ..preflight import check_run

    check_run(run_dir, task, measuring)  # before the heavy imports
    from ..evaluate import open_run, restore

    run, session, tasks = open_run(run_dir, task, measuring)
    restore(run, session, tasks[-1])
    return session, tasks[-1] if task is not None else 0


def _fresh_session(presets: list[str], flags: dict):
    from .. import preflight
    from ..config import resolve

    cfg = resolve(presets, flags).config
    precheck(cfg)
    preflight.check_device(cfg.device)
    preflight.check_data(cfg)
    from ..session import open_session

    return open_session(cfg)


@app.command("memory")
def memory_cmd(
    preset: Annotated[Optional[list[str]], Opt("--preset", "-p", help="Take model/benchmark/batch from presets.")] = None,
    model: Annotated[Optional[str], Opt(help="open_clip model (default ViT-B-16).")] = None,
    adapter: Annotated[Optional[str], Opt(help="moe | lora.")] = None,
    benchmark: Annotated[Optional[str], Opt(help="Sets prompts per task and image size.")] = None,
    inc: Annotated[Optional[int], Opt(help="Classes (prompts) per task.")] = None,
    batch_size: Annotated[Optional[int], Opt()] = None,
    zo_chunk: Annotated[Optional[int], Opt(help="Images per ZO micro-batch.")] = None,
    configs: Annotated[str, Opt(help="Comma list: fo, dual, vision, language, each optionally -hop-odd/-hop-even/-prefix/-suffix, +mozo.")] = ",".join(("fo", "dual", "vision", "language", "dual-hop-odd", "dual-hop-even", "dual-prefix", "dual-suffix")),
    device: Annotated[str, Opt(help="meta (upper bound, no compute; 10-30 s per config for ViT-B-16) | cpu (exact tracker, real compute) | cuda.")] = "meta",
    as_json: Annotated[bool, Opt("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Peak memory of one training step per FO/ZO configuration, with a breakdown (no weights or data needed)."""
    flags = {"model": model, "adapter": adapter, "benchmark": benchmark, "inc": inc, "batch_size": batch_size,
             "zo_chunk": zo_chunk}
    with errors():
        from ..config import resolve
        from ..preflight import check_device

        cfg = resolve(preset or [], flags).config
        precheck(cfg)
        check_device(device)
        from ..memory import measure
        from ..step import resolve_device

        if device.startswith("cuda"):
            resolve_device(device)
        note = None if as_json else (lambda name, i, n: err.print(f"measuring {name} ({i + 1}/{n}) ...", highlight=False))
        report = measure(cfg, [c.strip() for c in configs.split(",") if c.strip()], device, on_progress=note)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(render.memory(report))



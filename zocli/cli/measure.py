"""`zocli memory` and `zocli probe-variance`: the study's two measurements."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

from zocli.cli import render_measure as render
from zocli.cli._shared import CfgOpt, Opt, app, err, errors, out, plot_to, plots_check, precheck


@app.command("probe-variance")
def probe_variance_cmd(
    run_dir: Annotated[
        Path | None,
        Opt("--run", metavar="RUN_DIR", help="Probe a run's checkpoint (with --task K) instead of a fresh model."),
    ] = None,
    task: Annotated[
        int | None,
        Opt(
            "--task",
            metavar="K",
            help="Checkpoint after task K, and the task whose batches are drawn (default: last / 0).",
        ),
    ] = None,
    preset: Annotated[
        list[str] | None,
        Opt("--preset", "-p", metavar="NAME|FILE", help="Fresh model: presets to resolve, in order."),
    ] = None,
    benchmark: Annotated[str | None, CfgOpt("benchmark", "Fresh model: the benchmark whose batches are drawn.")] = None,
    inc: Annotated[int | None, CfgOpt("inc", "Fresh model: classes per task.")] = None,
    model: Annotated[str | None, CfgOpt("model", "Fresh model: open_clip ViT model.")] = None,
    pretrained: Annotated[
        str | None, CfgOpt("pretrained", "Fresh model: weights (tag, PATH, local-dir:DIR or none).")
    ] = None,
    adapter: Annotated[str | None, CfgOpt("adapter", "Fresh model: adapter.")] = None,
    batch_size: Annotated[int | None, CfgOpt("batch_size", "Images per probed batch.")] = None,
    batches: Annotated[int, Opt(min=1, metavar="N", help="Batches N to draw from the task.")] = 4,
    draws: Annotated[int, Opt(min=2, metavar="R", help="ZO estimates per batch.")] = 8,
    queries: Annotated[
        int | None,
        Opt(min=1, metavar="Q", help="Directions Q averaged in each estimate. \\[default: the config's --queries]"),
    ] = None,
    eps: Annotated[float | None, CfgOpt("eps", "Perturbation scale ε of both branches.")] = None,
    eps_vision: Annotated[float | None, CfgOpt("eps_vision", "ε of the vision branch.")] = None,
    eps_language: Annotated[float | None, CfgOpt("eps_language", "ε of the language branch.")] = None,
    estimator: Annotated[str | None, CfgOpt("estimator", "Finite-difference form.")] = None,
    seed: Annotated[int | None, CfgOpt("seed", "Seed of the batches and ZO directions.")] = None,
    data_root: Annotated[str | None, CfgOpt("data_root", "Where prepared data lives.")] = None,
    device: Annotated[str | None, CfgOpt("device", "auto, cpu, cuda or cuda:N.")] = None,
    precision: Annotated[
        str | None,
        Opt(
            "--precision",
            metavar="LIST",
            help="Instead of the variance: the finite-difference fidelity check at these precisions (comma list of fp32, tf32, bf16), R directions per batch.",
        ),
    ] = None,
    plot: Annotated[
        Path | None, Opt("--plot", metavar="FILE.png", help="Write the variance distributions to this PNG.")
    ] = None,
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Per-branch and per-layer variance of ZO gradient estimates, against FO gradients."""
    measuring = {
        "eps": eps,
        "eps_vision": eps_vision,
        "eps_language": eps_language,
        "estimator": estimator,
        "seed": seed,
        "batch_size": batch_size,
        "device": device,
        "data_root": data_root or os.environ.get("ZOCLI_DATA"),
    }
    with errors():
        precisions = _precisions(precision, plot, queries)
        plots_check(plot)
        if run_dir is not None:
            session, probe_task = _run_session(run_dir, task, measuring)
        else:
            flags = {
                "benchmark": benchmark,
                "inc": inc,
                "model": model,
                "pretrained": pretrained,
                "adapter": adapter,
                **measuring,
            }
            session, probe_task = _fresh_session(preset or [], flags), task or 0
        if precisions:
            from zocli.run.fidelity import probe

            report = probe(session, probe_task, precisions, batches, draws)
        else:
            from zocli.study.probe import probe_variance

            # the estimator the configuration trains with (q = 8 by default), unless asked otherwise
            report = probe_variance(session, probe_task, batches, draws, queries or session.cfg.queries)
        if plot is not None:
            plot_to(lambda plots: plots.variance_histogram(report, plot))
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(render.fidelity(report) if precisions else render.variance(report))
    if plot is not None:
        out.print(f"plot: {plot}")


def _precisions(precision: str | None, plot: Path | None, queries: int | None) -> tuple[str, ...]:
    """The fidelity mode's precisions, checked before anything heavy loads; () in variance mode."""
    from zocli.config import PRECISIONS, ConfigError

    if precision is None:
        return ()
    names = tuple(p.strip() for p in precision.split(",") if p.strip())
    bad = [p for p in names if p not in PRECISIONS]
    if bad or not names:
        raise ConfigError(f"--precision takes a comma list of {', '.join(PRECISIONS)}; got {precision!r}")
    if plot is not None or queries is not None:
        raise ConfigError("--plot and --queries belong to the variance probe, not to --precision")
    return names


def _run_session(run_dir: Path, task: int | None, measuring: dict):
    """A run's model after task K (default: its last), probed on task K's batches (default: task 0)."""
    from zocli.run.preflight import check_run

    check_run(run_dir, task, measuring)  # before the heavy imports
    from zocli.run.evaluate import open_run, restore

    run, session, tasks = open_run(run_dir, task, measuring)
    restore(run, session, tasks[-1])
    return session, tasks[-1] if task is not None else 0


def _fresh_session(presets: list[str], flags: dict):
    from zocli.config import resolve
    from zocli.run import preflight

    cfg = resolve(presets, flags).config
    precheck(cfg)
    preflight.check_device(cfg.device)
    preflight.check_data(cfg)
    from zocli.run.session import open_session

    return open_session(cfg)


@app.command("memory")
def memory_cmd(
    preset: Annotated[
        list[str] | None, Opt("--preset", "-p", metavar="NAME|FILE", help="Take model/benchmark/batch from presets.")
    ] = None,
    model: Annotated[str | None, CfgOpt("model", "open_clip ViT model.")] = None,
    adapter: Annotated[str | None, CfgOpt("adapter", "Adapter in every block.")] = None,
    benchmark: Annotated[str | None, CfgOpt("benchmark", "Sets the prompts per task and the image size.")] = None,
    inc: Annotated[int | None, CfgOpt("inc", "Classes (prompts) per task.")] = None,
    batch_size: Annotated[int | None, CfgOpt("batch_size", "Images per step.")] = None,
    zo_chunk: Annotated[int | None, CfgOpt("zo_chunk", "Images per ZO micro-batch.")] = None,
    configs: Annotated[
        str,
        Opt(
            metavar="LIST",
            help="Comma list: fo, dual, vision, language, each optionally -hop-odd/-hop-even/-prefix/-suffix, +mozo.",
        ),
    ] = ",".join(
        ("fo", "dual", "vision", "language")  # the paper's rows, then each branch's layer-wise schemes
        + tuple(f"{b}-{s}" for b in ("dual", "vision", "language") for s in ("hop-odd", "hop-even", "prefix", "suffix"))
    ),
    device: Annotated[
        str,
        Opt(
            metavar="meta|cpu|cuda",
            help="meta (upper bound, no compute; 10-30 s per config for ViT-B-16) | cpu (exact tracker, real compute) | cuda.",
        ),
    ] = "meta",
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Peak memory of one training step per FO/ZO configuration, with a breakdown (no weights or data needed)."""
    flags = {
        "model": model,
        "adapter": adapter,
        "benchmark": benchmark,
        "inc": inc,
        "batch_size": batch_size,
        "zo_chunk": zo_chunk,
        "data_root": os.environ.get("ZOCLI_DATA"),
    }  # where a folder:/hf: record lives
    with errors():
        from zocli.config import resolve
        from zocli.run.preflight import check_device

        cfg = resolve(preset or [], flags).config
        precheck(cfg)
        check_device(device)
        from zocli.method.step import resolve_device
        from zocli.study.memory import measure

        if device.startswith("cuda"):
            resolve_device(device)
        note = (
            None if as_json else (lambda name, i, n: err.print(f"measuring {name} ({i + 1}/{n}) ...", highlight=False))
        )
        report = measure(cfg, [c.strip() for c in configs.split(",") if c.strip()], device, on_progress=note)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(render.memory(report))

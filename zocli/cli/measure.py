"""`zocli memory` and `zocli probe-variance`: the study's two measurements."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

from zocli.cli import render_measure as render
from zocli.cli._shared import ConfigFlags, Opt, app, config_options, err, errors, out, plot_to, plots_check, precheck

# what a probe of a run's checkpoint may set too; the rest build a fresh model
MEASURING = ("batch_size", "eps", "eps_vision", "eps_language", "estimator", "seed", "data_root", "device")


@app.command("probe-variance")
@config_options("benchmark", "inc", "model", "pretrained", "adapter", *MEASURING)
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
    batches: Annotated[int, Opt(min=1, metavar="N", help="Batches N to draw from the task.")] = 4,
    draws: Annotated[int, Opt(min=2, metavar="R", help="ZO estimates per batch.")] = 8,
    queries: Annotated[
        int | None,
        Opt(min=1, metavar="Q", help="Directions Q averaged in each estimate. \\[default: the config's --queries]"),
    ] = None,
    precision: Annotated[
        str | None,
        Opt(
            "--precision",
            metavar="LIST",
            help="Instead of the variance: the finite-difference fidelity check at these precisions "
            "(comma list of fp32, tf32, bf16), R directions per batch.",
        ),
    ] = None,
    plot: Annotated[
        Path | None, Opt("--plot", metavar="FILE.png", help="Write the variance distributions to this PNG.")
    ] = None,
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print the report as JSON on stdout.")] = False,
    *,
    flags: ConfigFlags,
) -> None:
    """Per-branch and per-layer variance of ZO gradient estimates, against FO gradients.

    Of a run's checkpoint (--run), or of a fresh model: the presets and the Data and Model flags."""
    measuring = {key: flags.pop(key) for key in MEASURING}
    measuring["data_root"] = measuring["data_root"] or os.environ.get("ZOCLI_DATA")
    with errors():
        precisions = _precisions(precision, plot, queries)
        plots_check(plot)
        if run_dir is not None:
            session, probe_task = _run_session(run_dir, task, measuring)
        else:
            session, probe_task = _fresh_session(preset or [], {**flags, **measuring}), task or 0
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

    run, session, tasks, _ = open_run(run_dir, task, measuring)
    restore(run, session, tasks[-1])
    return session, tasks[-1] if task is not None else 0


def _fresh_session(presets: list[str], flags: dict):
    from zocli.resolve import resolve
    from zocli.run import preflight

    cfg = resolve(presets, flags).config
    precheck(cfg)
    preflight.check_device(cfg.device)
    preflight.check_data(cfg)
    from zocli.run.session import open_session

    return open_session(cfg)


@app.command("memory")
@config_options("model", "adapter", "benchmark", "inc", "batch_size", "zo_chunk")
def memory_cmd(
    preset: Annotated[
        list[str] | None, Opt("--preset", "-p", metavar="NAME|FILE", help="Take model/benchmark/batch from presets.")
    ] = None,
    configs: Annotated[
        str | None,
        Opt(
            metavar="LIST",
            help="Comma list: fo, dual, vision, language, each optionally -hop-odd/-hop-even/-prefix/-suffix, "
            "+mozo. \\[default: the paper's four rows, then each branch's hop-odd, hop-even, prefix and suffix]",
        ),
    ] = None,
    device: Annotated[
        str,
        Opt(
            metavar="meta|cpu|cuda",
            help="meta (upper bound, no compute; 10-30 s per config for ViT-B-16) | "
            "cpu (exact tracker, real compute) | cuda.",
        ),
    ] = "meta",
    as_json: Annotated[bool, Opt("--json", metavar="", help="Print the report as JSON on stdout.")] = False,
    *,
    flags: ConfigFlags,
) -> None:
    """Peak memory of one training step per FO/ZO configuration, with a breakdown (no weights or data needed)."""
    flags["data_root"] = os.environ.get("ZOCLI_DATA")  # where a folder:/hf: record lives
    with errors():
        from zocli.resolve import resolve
        from zocli.run.preflight import check_device

        cfg = resolve(preset or [], flags).config
        precheck(cfg)
        check_device(device)
        from zocli.method.step import resolve_device
        from zocli.study.memory import DEFAULT_CONFIGS, measure

        if device.startswith("cuda"):
            resolve_device(device)
        note = (
            None if as_json else (lambda name, i, n: err.print(f"measuring {name} ({i + 1}/{n}) ...", highlight=False))
        )
        chosen = [c.strip() for c in configs.split(",") if c.strip()] if configs else DEFAULT_CONFIGS
        report = measure(cfg, chosen, device, on_progress=note)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    out.print(render.memory(report))

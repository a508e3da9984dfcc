"""`zocli sweep`: a grid of train configurations × seeds, run by a local queue or as a SLURM array."""

from __future__ import annotations

import json
import os
import shlex
import time
from pathlib import Path
from typing import Annotated

import typer

from zocli.cli import render
from zocli.cli._shared import ConfigFlags, Opt, app, config_options, err, errors, out
from zocli.cli.signals import graceful_stop
from zocli.config import KEYS, OPTIONS, ConfigError
from zocli.flags import given

S = "SLURM (with --slurm; needs the slurm extra)"
# every train flag fixes its value in every run, except those the sweep sets itself (--seeds, --data-root,
# and --gpus-per-run / --slurm-gpus for --nproc: where each run goes decides its ranks)
FIXED_KEYS = tuple(key for key in KEYS if key not in ("seed", "data_root", "nproc"))


@app.command("sweep")
@config_options(*FIXED_KEYS)
def sweep_cmd(
    grid_file: Annotated[
        Path | None,
        typer.Argument(
            metavar="GRID.toml",
            help='Grid file: presets = [...], seeds = "0-4", fixed keys, and \\[grid] KEY = \\[values].',
        ),
    ] = None,
    preset: Annotated[
        list[str] | None,
        Opt(
            "--preset",
            "-p",
            metavar="NAME|FILE",
            help="Preset of every run; repeatable, applied in order before the grid's.",
        ),
    ] = None,
    grid: Annotated[
        list[str] | None,
        Opt(
            "--grid",
            "-g",
            metavar="KEY=V1,V2",
            help="An axis of the grid over any train flag (or preset=A,B); repeatable; one value fixes the key.",
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        Opt(
            "--seeds",
            metavar="0-4",
            help="Seeds of every configuration: a range or a list. \\[default: 0, or the grid file's]",
        ),
    ] = None,
    out_dir: Annotated[
        Path | None,
        Opt(
            "--out",
            "-o",
            metavar="DIR",
            help="Sweep directory; run again to continue it. \\[default: runs/<grid file name> or runs/sweep]",
        ),
    ] = None,
    data_root: Annotated[
        str | None,
        Opt(
            metavar="DIR",
            help=f"Prepared data root of every run. \\[default: {OPTIONS['data_root'].shown_default}]",
        ),
    ] = None,
    devices: Annotated[
        str | None,
        Opt(
            metavar="0,1",
            help="GPUs to use: runs go to them one at a time each (CUDA_VISIBLE_DEVICES); cpu: the CPU's cores.",
        ),
    ] = None,
    per_run: Annotated[
        int,
        Opt(
            "--gpus-per-run",
            metavar="N",
            min=1,
            help="Ranks of each run (zocli train --nproc N): N GPUs of --devices each, or N CPU processes.",
        ),
    ] = 1,
    jobs: Annotated[
        int, Opt(metavar="N", min=1, help="Runs at once (per GPU with --devices); CPU runs share the cores.")
    ] = 1,
    dry_run: Annotated[
        bool, Opt("--dry-run", metavar="", help="List the runs and their commands; run nothing.")
    ] = False,
    status: Annotated[
        bool, Opt("--status", metavar="", help="Show the state of each run of the sweep; run nothing.")
    ] = False,
    as_json: Annotated[
        bool, Opt("--json", metavar="", help="Print the sweep's state (or the plan, with --dry-run) as JSON on stdout.")
    ] = False,
    slurm: Annotated[
        bool,
        Opt(
            "--slurm",
            metavar="",
            help="Submit the unfinished runs as a SLURM job array (submitit) and return.",
            rich_help_panel=S,
        ),
    ] = False,
    slurm_local: Annotated[
        bool,
        Opt(
            "--slurm-local",
            metavar="",
            help="Run the --slurm jobs through submitit's local executor on this machine (debugging).",
            rich_help_panel=S,
        ),
    ] = False,
    takeover: Annotated[
        bool,
        Opt(
            "--takeover",
            metavar="",
            help="Also continue runs whose last attempt is on another host and cannot be checked (state unknown: "
            "a lost allocation).",
        ),
    ] = False,
    partition: Annotated[
        str | None, Opt("--slurm-partition", metavar="NAME", help="sbatch --partition.", rich_help_panel=S)
    ] = None,
    time_min: Annotated[
        int,
        Opt(
            "--slurm-time",
            metavar="MIN",
            help="sbatch --time per run, minutes; a timed-out run is requeued and resumes.",
            rich_help_panel=S,
        ),
    ] = 24 * 60,
    gpus: Annotated[
        int,
        Opt(
            "--slurm-gpus",
            metavar="N",
            min=0,
            help="sbatch --gpus-per-node; each run has N ranks (submitit's tasks, one GPU each).",
            rich_help_panel=S,
        ),
    ] = 1,
    cpus: Annotated[int, Opt("--slurm-cpus", metavar="N", help="sbatch --cpus-per-task.", rich_help_panel=S)] = 8,
    mem_gb: Annotated[int | None, Opt("--slurm-mem", metavar="GB", help="sbatch --mem.", rich_help_panel=S)] = None,
    account: Annotated[
        str | None, Opt("--slurm-account", metavar="NAME", help="sbatch --account.", rich_help_panel=S)
    ] = None,
    qos: Annotated[str | None, Opt("--slurm-qos", metavar="NAME", help="sbatch --qos.", rich_help_panel=S)] = None,
    constraint: Annotated[
        str | None, Opt("--slurm-constraint", metavar="EXPR", help="sbatch --constraint.", rich_help_panel=S)
    ] = None,
    parallel: Annotated[
        int, Opt("--slurm-parallel", metavar="N", help="Array jobs running at once (--array=...%N).", rich_help_panel=S)
    ] = 256,
    extra: Annotated[
        list[str] | None,
        Opt(
            "--slurm-opt",
            metavar="KEY=VALUE",
            help="Any other sbatch option (--slurm-opt mail-type=END); repeatable.",
            rich_help_panel=S,
        ),
    ] = None,
    *,
    flags: ConfigFlags,
) -> None:
    """Run a grid of `zocli train` configurations × seeds as named runs under one sweep directory.

    Running it again skips finished runs, resumes interrupted ones and retries failed ones; a failed run
    does not stop the others; Ctrl-C stops every run at a commit point (again: at once). Compare the runs
    with `zocli eval SWEEP_DIR` (mean ± std over seeds). A train flag given here sets its value in every run."""
    fixed = given(flags)
    with errors():
        from zocli.sweep import directory
        from zocli.sweep.grid import expand

        if out_dir is not None and str(out_dir) in ("", "."):
            raise ConfigError(f"--out {str(out_dir)!r} names the current directory; give a sweep directory")
        root = (out_dir or Path("runs") / (grid_file.stem if grid_file else "sweep")).expanduser()
        listed = _device_list(devices) or []
        if listed != ["cpu"] and len(listed) % per_run:
            raise ConfigError(f"--gpus-per-run {per_run} does not divide the {len(listed)} GPUs of --devices {devices}")
        asked = grid_file or preset or grid or seeds or fixed
        if not asked and not (root / directory.MANIFEST).is_file():
            raise ConfigError(
                f"nothing to sweep: give a grid (GRID.toml, --grid, --preset, --seeds), or --out of an "
                f"existing sweep ({root} is not one)"
            )
        if asked and not status:
            runs = expand(_grid(grid_file, preset or [], grid or [], seeds, fixed))
            where = data_root or os.environ.get("ZOCLI_DATA")
            where = str(Path(where).expanduser().resolve()) if where else None  # recorded absolute
            if dry_run:
                _print_plan(root, runs, where, as_json, 1 if slurm else per_run)
                return
            sweep = directory.create(root, runs, where)
        else:  # continue the sweep already in --out
            sweep = directory.open_sweep(root)
            if dry_run:
                _print_plan(root, list(sweep.runs), directory.data_root(sweep), as_json, 1 if slurm else per_run)
                return
        if status:
            _print_state(directory.as_json(sweep), as_json)
            return
        if slurm or slurm_local:
            options = (partition, time_min, gpus, cpus, mem_gb, account, qos, constraint, parallel, extra or [])
            _submit(sweep, *options, cluster="local" if slurm_local else "slurm", takeover=takeover)
            return
        final = _run_local(sweep, devices, jobs, per_run, quiet=as_json, takeover=takeover)
    state = directory.as_json(sweep)
    _print_state(state, as_json)
    if final["stopped"]:
        err.print(f"stopped; run the same command again to continue the sweep in {root}", highlight=False)
        raise typer.Exit(130)
    if state["counts"]["failed"]:
        raise typer.Exit(1)


def _grid(grid_file, presets, items, seeds, fixed: dict):
    from zocli.sweep.grid import Grid, load_grid, parse_axes, parse_seeds

    base = load_grid(grid_file) if grid_file else Grid()
    gridded = parse_axes(items)
    both = [OPTIONS[key].spelling for key in gridded if key in fixed]
    if both:
        raise ConfigError(
            f"{both[0]} is given both as a flag and as --grid {both[0][2:]}: give its values in one place"
        )
    axes = {**base.axes, **{key: [value] for key, value in fixed.items()}, **gridded}
    if "nproc" in axes:
        raise ConfigError("a sweep's runs get their ranks from --gpus-per-run (or --slurm-gpus), not from nproc")
    return Grid((*presets, *base.presets), axes, parse_seeds(seeds) if seeds else base.seeds)


def _print_plan(root: Path, runs, data_root, as_json: bool, nproc: int) -> None:
    from zocli.sweep.cost import estimate
    from zocli.sweep.directory import Sweep, command

    sweep = Sweep(root, tuple(runs))
    costs = [estimate(r.presets, r.flags, data_root) for r in runs]
    plan = [
        {
            "name": r.name,
            "run_dir": str(sweep.run_dir(r.name)),
            "command": command(sweep, r, data_root, nproc)[1],
            "forwards_per_step": c.forwards_per_step,
            "steps": c.steps,
            "forwards": c.forwards,
        }
        for r, c in zip(runs, costs)
    ]
    known = [c.forwards for c in costs if c.forwards is not None]
    if as_json:
        print(json.dumps({"sweep": str(root), "runs": plan, "forwards": sum(known) if known else None}))
        return
    for item in plan:
        out.print(f"{item['name']}: {shlex.join(item['command'])}", highlight=False, soft_wrap=True)
    for item in plan:
        steps = f"{item['steps']:,} steps" if item["steps"] is not None else "steps unknown (data not prepared)"
        total = f" = {item['forwards']:,} forwards" if item["forwards"] is not None else ""
        out.print(
            f"cost {item['name']}: {item['forwards_per_step']} forwards per step × {steps}{total}",
            highlight=False,
        )
    if known:
        unknown = len(costs) - len(known)
        out.print(
            f"total: {sum(known):,} forwards over {len(known)} runs"
            + (f" (+ {unknown} unknown)" if unknown else "")
            + " (a forward: one loss evaluation; the FO forward + backward counts one, and costs more)",
            highlight=False,
        )


def _print_state(state: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(state))
    else:
        out.print(render.sweep_state(state))


def _device_list(devices: str | None) -> list[str] | None:
    """--devices as a list ("0, 1" -> ["0", "1"]); None when not given."""
    return [d.strip() for d in devices.split(",") if d.strip()] if devices else None


def _run_local(sweep, devices: str | None, jobs: int, per_run: int, quiet: bool, takeover: bool = False) -> dict:
    from zocli.sweep.launch import local_slots, run_local

    slots = local_slots(_device_list(devices), jobs, per_run)
    total = len(sweep.runs)
    counter = {"done": 0, "ran": 0, "settled": 0, "began": time.monotonic()}

    def eta() -> str:
        """Overall ETA from the runs this invocation finished (their mean wall time, over the slots)."""
        left = total - counter["settled"]
        if not counter["ran"] or not left:
            return ""
        seconds_per_run = (time.monotonic() - counter["began"]) / counter["ran"]
        seconds = int(seconds_per_run * left)
        return f" · ETA {seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"

    def on_event(event: dict) -> None:
        if event["event"] == "skipped":
            counter["done"] += event["state"] == "finished"
            counter["settled"] += 1
            line = f"skip {event['name']}: {event['state']}" + (f" ({event['error']})" if event.get("error") else "")
        elif event["event"] == "started":
            line = f"{event['action']} {event['name']} on {event['slot']} · {counter['done']}/{total} finished"
        else:
            counter["done"] += event["state"] == "finished"
            counter["ran"] += 1
            counter["settled"] += 1
            line = (
                f"{event['state']} {event['name']}"
                + (f": {event['error']}" if event["error"] else "")
                + f" · {counter['done']}/{total} finished{eta()}"
            )
        if not quiet or (event["event"] == "ended" and event["error"]):
            err.print(line, highlight=False)

    with graceful_stop(_abort) as should_stop:
        run_local(sweep, slots, on_event, should_stop, takeover=takeover)
        return {"stopped": should_stop()}


def _abort() -> None:
    # A second Ctrl-C: exit now. The runs get SIGTERM as their parent dies — after the SIGINT already
    # forwarded, a second stop request for them: each aborts at once, its last commit intact.
    os.write(2, b"aborted; run the same command again to continue the sweep\n")
    os._exit(130)


def _submit(
    sweep, partition, time_min, gpus, cpus, mem_gb, account, qos, constraint, parallel, extra, cluster, takeover
) -> None:
    from zocli.sweep.launch import SlurmOptions, submit

    pairs = [item.partition("=") for item in extra]
    if any(not sep for _, sep, _ in pairs):
        raise ConfigError("--slurm-opt takes KEY=VALUE (e.g. --slurm-opt mail-type=END)")
    options = SlurmOptions(
        partition,
        time_min,
        gpus,
        cpus,
        mem_gb,
        account,
        qos,
        constraint,
        parallel,
        {key.replace("-", "_"): value for key, _, value in pairs},
    )
    jobs = submit(sweep, options, cluster, takeover)
    for name, job in jobs:
        err.print(f"submitted {name}: job {job.job_id}", highlight=False)
    err.print(
        f"{len(jobs)} runs submitted; `zocli sweep --out {sweep.root} --status` shows their state", highlight=False
    )

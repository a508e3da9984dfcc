"""Shared pieces of the `zocli` command line: the Typer app, consoles, error classification.

Exit codes: 0 ok, 1 runtime error (missing data, weights unavailable, corrupt checkpoint, divergence),
2 usage error, 130 interrupted. Heavy imports (torch, open_clip, datasets) happen inside commands so
`--help` and usage errors stay instant.
"""

from __future__ import annotations

import functools
import sys
import typing
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from zocli import __version__

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Zeroth-order / first-order continual learning of CLIP adapters.",
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line in logs
STATE = {"debug": False}

USAGE_ERRORS = {"zocli.config": ("ConfigError",), "zocli.method.backbone": ("UnknownModel",)}
RUNTIME_ERRORS = {
    "zocli.method.backbone": ("WeightsUnavailable",),
    "zocli.run.checkpoint": ("CheckpointError",),
    "zocli.data.store": ("DataMissing", "SourceError"),
    "zocli.run.rundir": ("RunDirError",),
    "zocli.method.step": ("DeviceUnavailable",),
    "zocli.run.train": ("Diverged",),
    "zocli.data.location": ("NotReady",),
    "zocli.data.loader": ("CorruptImage",),
    "zocli.run.tracking": ("TrackingUnavailable",),
    "zocli.sweep.grid": ("SweepError",),
}


def _classes(table: dict[str, tuple[str, ...]]) -> tuple[type[BaseException], ...]:
    # Only modules already imported: an exception's class was imported with it, and importing the rest
    # here would cost the seconds of torch/datasets imports that the fast checks exist to avoid.
    return tuple(
        getattr(sys.modules[module], name) for module, names in table.items() if module in sys.modules for name in names
    )


@contextmanager
def errors():
    """Every failure becomes one line on stderr and an exit code; --debug shows the traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:
        if STATE["debug"]:
            raise
        code, text = classify(exc)
        err.print(f"[red]error:[/red] {escape(one_line(text))}", highlight=False)
        raise typer.Exit(code) from None


def classify(exc: Exception) -> tuple[int, str]:
    """(exit code, message): 2 for usage errors, 1 for everything else."""
    if isinstance(exc, _classes(USAGE_ERRORS)):
        return 2, str(exc)
    if isinstance(exc, _classes(RUNTIME_ERRORS)):
        return 1, str(exc)
    if isinstance(exc, OSError):  # disk full, I/O error, read-only filesystem, a file where a folder goes
        where = f"{exc.filename}: " if exc.filename else ""
        return 1, f"{where}{exc.strerror or exc}"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc) or "can't allocate memory" in str(exc):
        return (
            1,
            f"out of memory ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
            f"lower --batch-size, --eval-batch-size or --zo-chunk",
        )
    # A bug: still one line (the README's contract), with the way to the traceback.
    return 1, f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback, and report it)"


def one_line(text: str) -> str:
    """An error message as one line; of an error re-raised from a DataLoader worker, its last line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if "Original Traceback" in text and lines:
        return lines[-1]
    return " ".join(lines)


def _print_version(value: bool) -> None:
    # Eager: runs while the options are parsed, before Typer asks for a command.
    if value:
        out.print(__version__, highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for expected errors.")] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", is_eager=True, callback=_print_version, expose_value=False
        ),
    ] = False,
) -> None:
    STATE["debug"] = debug


# ----------------------------------------------------------------------------------------------
# train

Opt = typer.Option

# How a default reads in --help where the Config value alone (None) would not say it.
DEFAULT_WORDS = {
    "base": "= --inc",
    "class_order": "the benchmark's",
    "eval_future": "off",
    "max_steps": "full epochs",
    "layers_n": "half the layers",
    "eps_vision": "--eps (5e-4 with --mozo)",
    "eps_language": "--eps",
    "zo_chunk": "32",
    "workers": "0 on CPU, ≤ 8 on CUDA",
    "mozo": "off",
    "conservative": "conservative",
    "data_root": "$ZOCLI_DATA or ~/.cache/zocli",
    "zo_lr": "λ·lr",
    "report_to": "none",
    "log_every": "min(50, steps/10) with --report-to, else off",
}


@functools.cache
def _defaults():
    from zocli.config import Config

    return Config()


def CfgOpt(key: str, help: str, *decls: str, panel: str | None = None):  # noqa: N802 - reads like typer.Option
    """An option for Config field `key`: its choices as the metavar and its built-in default in the help.

    The option itself defaults to None, so that presets can set what the flag leaves unset."""
    from typing import get_args, get_origin, get_type_hints

    from zocli.config import Config
    from zocli.data import catalogue

    kind = get_type_hints(Config)[key]
    if get_origin(kind) not in (typing.Literal, None):  # X | None
        kind = next(a for a in get_args(kind) if a is not type(None))
    choices = (
        get_args(kind)
        if get_origin(kind) is typing.Literal
        else (*catalogue.BUILDERS, "folder:DIR", "hf:ID")
        if key == "benchmark"
        else ()
    )
    metavar = "|".join(choices) if choices else {int: "INT", float: "FLOAT", str: "TEXT", bool: ""}[kind]
    default = DEFAULT_WORDS.get(key, getattr(_defaults(), key))
    return typer.Option(*decls, help=f"{help} \\[default: {default}]", metavar=metavar, rich_help_panel=panel)


def precheck(cfg) -> None:
    # Usage errors must surface before any expensive import or model build.
    from zocli.data import catalogue, location

    catalogue.split(location.benchmark(cfg), cfg.inc, cfg.base)


def plots_check(path) -> None:
    from zocli.study.plots import check_path

    check_path(path)


def plot_to(draw) -> None:
    from zocli.study import plots

    try:
        draw(plots)
    except plots.PlotUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None

"""Shared pieces of the `zocli` command line: the Typer app, consoles, error classification.

Exit codes: 0 ok, 1 runtime error (missing data, weights unavailable, corrupt checkpoint, divergence),
2 usage error, 130 interrupted. Heavy imports (torch, open_clip, datasets) happen inside commands so
`--help` and usage errors stay instant.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

from .. import __version__
from ..config import ConfigError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Zeroth-order / first-order continual learning of CLIP adapters.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line in logs
STATE = {"debug": False}

USAGE_ERRORS = (ConfigError,)


def runtime_errors() -> tuple[type[BaseException], ...]:
    from ..backbone import UnknownModel, WeightsUnavailable
    from ..checkpoint import CheckpointError
    from ..data import DataMissing, SourceError
    from ..rundir import RunDirError
    from ..step import DeviceUnavailable
    from ..train import Diverged

    return (WeightsUnavailable, CheckpointError, DataMissing, SourceError, RunDirError, Diverged, UnknownModel,
            DeviceUnavailable)


@contextmanager
def errors():
    """Expected failures become one line on stderr and an exit code; --debug shows the traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - classified just below
        if STATE["debug"]:
            raise
        code = 2 if isinstance(exc, USAGE_ERRORS) or type(exc).__name__ == "UnknownModel" else \
            1 if isinstance(exc, runtime_errors()) else None
        if code is None:
            raise
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(code) from None


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for expected errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    STATE["debug"] = debug
    if version:
        out.print(__version__)
        raise typer.Exit()


# ----------------------------------------------------------------------------------------------
# train

Opt = typer.Option

def precheck(cfg) -> None:
    # Usage errors must surface before any expensive import or model build.
    from .. import benchmarks

    benchmarks.split(benchmarks.get(cfg.benchmark), cfg.inc, cfg.base)


def plot_to(draw) -> None:
    from .. import plots

    try:
        draw(plots)
    except plots.PlotUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None



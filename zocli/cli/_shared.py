"""Shared pieces of the `zocli` command line: the Typer app, consoles, error classification.

Exit codes: 0 ok, 1 runtime error (missing data, weights unavailable, corrupt checkpoint, divergence),
2 usage error, 130 interrupted. Heavy imports (torch, open_clip, datasets) happen inside commands so
`--help` and usage errors stay instant.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from zocli import __version__
from zocli.config import KEYS, OPTIONS
from zocli.errors import ZocliError
from zocli.flags import NONE_GIVEN

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    help="Zeroth-order / first-order continual learning of CLIP adapters.",
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)  # one-line errors stay one line in logs
STATE = {"debug": False}


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
    """(exit code, message): a ZocliError's own code, 1 for everything else."""
    if isinstance(exc, ZocliError):
        return exc.exit_code, str(exc)
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
# Config flags

Opt = typer.Option
ConfigFlags = dict[str, Any]  # Config field -> its flag's value; None where the flag was left out


def config_options(*keys: str, shown_default: str | None = None):
    """Give a command an option for each Config field in `keys` (every field when none), made from the
    field's flag (zocli.flags), and pass their values to it as one dict, its `flags` parameter;
    `shown_default` is what --help says of every default where the command has defaults of its own.

    Typer reads a command's options from its signature, so the options replace `flags` there (declared
    `*, flags`: keyword-only, as it follows parameters with defaults). They default to None, so that
    presets fill what no flag sets (defaults < presets < flags)."""

    def decorate(command):
        names = keys or KEYS
        signature = inspect.signature(command, eval_str=True)
        params = list(signature.parameters.values())
        at = [p.name for p in params].index("flags")

        @functools.wraps(command)
        def with_flags(**kwargs):
            flags = {name: kwargs.pop(name) for name in names}
            return command(**kwargs, flags=flags)

        options = [_parameter(OPTIONS[name], params[at].kind, shown_default) for name in names]
        with_flags.__signature__ = signature.replace(parameters=[*params[:at], *options, *params[at + 1 :]])
        return with_flags

    return decorate


# A metavar longer than this is one unbreakable word that --help at 80 columns would cut mid-choice:
# such choices are listed in the help text instead, where they wrap between words.
MAX_METAVAR = 14


def _parameter(option, kind, shown_default: str | None) -> inspect.Parameter:
    metavar, choices = _metavar(option), ""
    if len(metavar) > MAX_METAVAR and "|" in metavar:
        metavar, choices = "CHOICE", f" One of: {', '.join(metavar.split('|'))}."
    info = typer.Option(
        *option.decls,
        help=f"{option.flag.help}{choices} \\[default: {shown_default or option.shown_default}]",
        metavar=metavar,
        rich_help_panel=option.flag.panel,
        parser=_none_or(option) if option.optional else None,
    )
    return inspect.Parameter(
        option.name,
        kind,
        default=None,
        annotation=Annotated[option.kind | None, info],
    )


def _metavar(option) -> str:
    return benchmark_metavar() if option.name == "benchmark" else option.metavar


def benchmark_metavar() -> str:
    # the shipped benchmarks are the data layer's, above the config
    from zocli.data import catalogue

    return "|".join((*catalogue.BUILDERS, "folder:DIR", "hf:ID"))


def _none_or(option):
    """An optional field's parser: `none` is NONE_GIVEN, a value set to None over the presets."""

    def parse(text: str):
        try:
            value = option.parse(text)
        except ValueError as exc:  # the message as it is, not as typer rewords a ValueError
            raise typer.BadParameter(str(exc)) from None
        return NONE_GIVEN if value is None else value

    return parse


def precheck(cfg) -> None:
    # Usage errors must surface before any expensive import or model build.
    from zocli.data import catalogue, location

    catalogue.split(location.benchmark(cfg), cfg.inc, cfg.base)


def plots_check(path) -> None:
    from zocli.study.plots import check_path

    check_path(path)


def plot_to(draw) -> None:
    from zocli.study import plots

    draw(plots)

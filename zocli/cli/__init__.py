"""The `zocli` command line: parse, resolve the config, call one core function, render.

The only package that imports Typer, prints or exits; each module registers its commands on `app`,
in the order `--help` lists them.
"""

from zocli.cli import train, prepare, results, sweep, measure  # noqa: F401, I001  (registers the commands, in this order)
from zocli.cli._shared import app

__all__ = ["app"]

"""`python -m zocli.cli.reference` writes docs/cli.md: every flag of the main commands, read from the
commands themselves, with its default as `--help` shows it (tests/test_reference.py keeps it current)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from zocli.cli import app

COMMANDS = ("train", "sweep", "eval", "prepare", "memory", "probe-variance")
DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
REGENERATE = "python -m zocli.cli.reference"
DEFAULT_IN_HELP = re.compile(r"\s*\\\[default: (.*)\]$")


def markdown() -> str:
    group = typer.main.get_command(app)
    lines = [
        "# zocli command-line reference",
        "",
        f"Generated from the commands by `{REGENERATE}`; do not edit. Each `train` flag is defined once, on its",
        "`Config` field (`zocli/config.py`); `sweep` takes the same flags as values fixed for every run.",
    ]
    for name in COMMANDS:
        lines += _section(name, group.commands[name])
    return "\n".join(lines) + "\n"


def _section(name: str, command) -> list[str]:
    ctx = typer.Context(command, info_name=name)
    about = [" ".join(paragraph.split()) for paragraph in (command.help or "").split("\n\n")]
    lines = ["", f"## `zocli {name}`", "", "\n\n".join(about)]
    params = [p for p in command.params if p.name != "help"]
    for panel in dict.fromkeys(_panel(p) for p in params):  # in the order --help shows them
        lines += ["", f"**{panel}**", "", "| flag | value | default | meaning |", "|---|---|---|---|"]
        lines += [_row(p, ctx) for p in params if _panel(p) == panel]
    return lines


def _panel(param) -> str:
    default = "Arguments" if param.param_type_name == "argument" else "Options"
    return getattr(param, "rich_help_panel", None) or default


def _row(param, ctx: typer.Context) -> str:
    spelling = " / ".join([*param.opts, *param.secondary_opts]) if param.param_type_name == "option" else ""
    help_text, default = _help_and_default(param, ctx)
    cells = [_code(spelling), _code(param.metavar or ""), _code(default), help_text]
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _help_and_default(param, ctx: typer.Context) -> tuple[str, str]:
    """The help without its `[default: …]`, and that default, or else the one Typer adds (as its --help does)."""
    text = " ".join((getattr(param, "help", None) or "").split())
    found = DEFAULT_IN_HELP.search(text)
    if found:
        return _unescape(text[: found.start()]), found.group(1)
    return _unescape(text), _typer_default(param, ctx)


def _typer_default(param, ctx: typer.Context) -> str:
    # what typer.rich_utils prints after the help
    value = param._extract_default_help_str(ctx=ctx)
    by_text = isinstance(param.show_default, str)
    if not by_text and (value is None or not (param.show_default or ctx.show_default)):
        return ""
    return param._get_default_string(ctx=ctx, show_default_is_str=by_text, default_value=value) or ""


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _unescape(text: str) -> str:
    return text.replace("\\[", "[")


if __name__ == "__main__":
    DOC.write_text(markdown(), encoding="utf-8")
    print(f"wrote {DOC}")

"""zocli.cli.reference: docs/cli.md is the flag reference the commands generate."""

import re

import pytest

from zocli.cli.reference import COMMANDS, DOC, REGENERATE, markdown
from zocli.config import OPTIONS


def test_the_committed_cli_reference_is_current():
    assert DOC.read_text(encoding="utf-8") == markdown(), f"docs/cli.md is stale: regenerate it with `{REGENERATE}`"


def test_the_reference_lists_every_train_flag_with_its_help_default():
    text = markdown()
    assert [f"## `zocli {name}`" in text for name in COMMANDS] == [True] * len(COMMANDS)
    train = text[text.index("## `zocli train`") : text.index("## `zocli sweep`")]
    for option in OPTIONS.values():
        row = next(line for line in train.splitlines() if line.startswith(f"| `{option.decls[0].split('/')[0]}"))
        assert f"`{option.shown_default.replace('|', chr(92) + '|')}`" in row, row


def _help_defaults(command: str) -> dict[str, str]:
    """Each option's `[default: …]` as `zocli COMMAND --help` prints it, one option per line on a wide terminal."""
    from typer.testing import CliRunner

    from zocli.cli import app

    result = CliRunner().invoke(app, [command, "--help"], terminal_width=1000, env={"COLUMNS": "1000"})
    assert result.exit_code == 0, result.output
    found = {}
    for line in result.output.splitlines():
        cells = line.strip().strip("│").strip()
        if not cells.startswith("--"):
            continue
        shown = re.search(r"\[default: (.*)\]$", cells)
        found[cells.split()[0]] = shown.group(1) if shown else ""
    return found


def _reference_defaults(command: str) -> dict[str, str]:
    """Each option's default cell in docs/cli.md's section for COMMAND."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"## `zocli {command}`")
    end = text.find("\n## ", start + 1)
    rows = {}
    for line in text[start : end if end > 0 else None].splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`--"):
            rows[cells[0].strip("`").split()[0]] = cells[2].strip("`").replace("\\|", "|")
    return rows


@pytest.mark.parametrize("command", COMMANDS)
def test_the_reference_lists_every_flag_with_its_default_exactly_as_help_does(command):
    shown = _help_defaults(command)
    shown.pop("--help")
    assert len(shown) >= 5, shown  # the parse found the options
    assert _reference_defaults(command) == shown

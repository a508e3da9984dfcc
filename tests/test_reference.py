"""zocli.cli.reference: docs/cli.md is the flag reference the commands generate."""

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

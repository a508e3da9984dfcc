"""MkDocs hook (mkdocs.yml `hooks:`): a `|` inside a code span in a table row is written `\\|` so that GitHub
renders the table (docs/cli.md is generated that way); Python-Markdown keeps the backslash in the code, and
splits no cell on a code span's pipe, so the site gets the bare `|`."""

from __future__ import annotations

import re

CODE = re.compile(r"`[^`\n]*`")


def on_page_markdown(markdown: str, **_) -> str:
    lines = markdown.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("|"):
            lines[i] = CODE.sub(lambda m: m.group(0).replace("\\|", "|"), line)
    return "\n".join(lines)

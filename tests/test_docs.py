"""The documents the code cites exist: every "DESIGN §N" names a section of docs/design.md, and nothing cites a
file or tracker outside the repository (a reader of the code has only the repository)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
CITING = [*sorted((ROOT / "zocli").rglob("*.py")), *sorted((ROOT / "tests").glob("*.py")), ROOT / "README.md"]
CODE = [path for folder in ("zocli", "tests", "perf", "scripts") for path in sorted((ROOT / folder).rglob("*.py"))]
DESIGN_CITATION = re.compile(r"(?:DESIGN|design\.md) (?:§\d+(?:[-–]\d+)?(?:, )?)+")
# A tracker reference ("issue 12", "PR 3", "#12"), or a section sign left once docs/design.md's are removed.
OUTSIDE = re.compile(r"\b(?:issues?|PRs?|pull requests?|tickets?)\s*#?\d+|(?<![\w&/])#\d{2,5}\b|§\s*\d", re.IGNORECASE)
MARKDOWN_FILE = re.compile(r"[\w./-]*\w\.md\b")
DOCS = [ROOT / "README.md", DESIGN]  # the CHANGELOG names paths as they were when each change was made
REPO_PATH = re.compile(r"(?<![\w./-])(?:zocli|perf|benchmarks|scripts|tests|docs|examples)/[\w./-]*[\w/]")
DOTTED_NAME = re.compile(r"(?<![\w.])zocli(?:\.\w+)+")


def cited_sections(text: str) -> set[int]:
    """Section numbers in 'DESIGN §6', 'DESIGN §4-5', 'DESIGN §5, §7'."""
    found = set()
    for match in re.finditer(r"DESIGN ((?:§\d+(?:[-–]\d+)?(?:, )?)+)", text):
        for first, last in re.findall(r"§(\d+)(?:[-–](\d+))?", match.group(1)):
            found.update(range(int(first), int(last or first) + 1))
    return found


def test_design_citations_name_sections_of_docs_design_md():
    # Found: 19 places cited "DESIGN §6/§7" while no such file shipped with the repository.
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", DESIGN.read_text(), flags=re.MULTILINE)}
    citations = {path.relative_to(ROOT).as_posix(): cited_sections(path.read_text()) for path in CITING}
    assert sum(map(len, citations.values())) >= 15  # the pattern does find the citations
    missing = {path: sorted(found - sections) for path, found in citations.items() if found - sections}
    assert missing == {}


def test_the_readme_points_at_the_design_reference():
    assert "docs/design.md" in (ROOT / "README.md").read_text()


def test_the_readme_points_at_the_cli_reference():
    assert "docs/cli.md" in (ROOT / "README.md").read_text()


def outside_citations(text: str) -> list[str]:
    """Tracker references, stray section signs and Markdown files the repository does not have."""
    found = [match.group(0) for match in OUTSIDE.finditer(DESIGN_CITATION.sub("", text))]
    for name in MARKDOWN_FILE.findall(text):
        if not any((base / name).is_file() for base in (ROOT, ROOT / "docs")):
            found.append(name)
    return found


def test_outside_citations_are_recognised():
    cited = "notes.md §8.10, issue 15 (item 2), PR 7, #12; colour #1f77b4, DESIGN §5, §7, docs/design.md §2, README.md"
    assert outside_citations(cited) == ["§8", "issue 15", "PR 7", "#12", "notes.md"]


def test_code_cites_nothing_outside_the_repository():
    # Found: comments citing a study's notes file and tracker issue numbers no reader of the code could open.
    assert len(CODE) > 50 and any(path.parts[-2] == "perf" for path in CODE)
    quoting = Path(__file__).resolve()  # this file's examples are citations on purpose
    citations = {p.relative_to(ROOT).as_posix(): outside_citations(p.read_text()) for p in CODE if p != quoting}
    assert {path: found for path, found in citations.items() if found} == {}


def dotted_name_exists(dotted: str) -> bool:
    """zocli.a.b names a module, or a module and one of its top-level names (read, not imported: no torch)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        source = next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)
        if source is not None:
            rest = parts[cut:]
            pattern = rf"^(?:def|class) {rest[0]}\b|^{rest[0]}\s*[:=]" if rest else ""
            return len(rest) <= 1 and re.search(pattern, source.read_text(), flags=re.MULTILINE) is not None
    return False


def test_paths_and_modules_the_docs_name_exist():
    # Found: after the package became layer folders, the README still named zocli/world.py and benchmarks/.
    missing = {}
    for doc in DOCS:
        text = doc.read_text()
        paths = [p for p in REPO_PATH.findall(text) if not (ROOT / p).exists()]
        names = [n for n in DOTTED_NAME.findall(text) if not dotted_name_exists(n)]
        if paths or names:
            missing[doc.name] = paths + names
    assert missing == {}


def test_dotted_names_resolve_to_modules_and_their_names():
    assert dotted_name_exists("zocli.run.train") and dotted_name_exists("zocli.run.metrics.summarize")
    assert not dotted_name_exists("zocli.metrics.summarize") and not dotted_name_exists("zocli.run.metrics.nothing")


KINDS = ("Added", "Changed", "Deprecated", "Removed", "Fixed", "Security")


def changelog_releases(text: str) -> dict[str, dict[str, list[str]]]:
    """{release: {kind: lines}} of a Keep a Changelog file; anything outside that shape raises AssertionError."""
    head, *blocks = re.split(r"^## ", text, flags=re.MULTILINE)
    assert head.startswith("# Changelog\n") and "keepachangelog.com" in head
    releases = {}
    for block in blocks:
        title, _, rest = block.partition("\n")
        assert re.fullmatch(r"\[Unreleased\]|\[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", title), title
        before, *parts = re.split(r"^### (.*)\n", rest, flags=re.MULTILINE)
        assert before.strip() == "", f"{title}: text before the first kind heading"
        kinds = dict(zip(parts[::2], [part.strip("\n").splitlines() for part in parts[1::2]]))
        assert len(kinds) == len(parts) // 2, f"{title}: a kind heading twice"
        releases[title.split(" - ")[0]] = kinds
    return releases


def test_the_changelog_keeps_the_keep_a_changelog_shape():
    # Found: issue-numbered headings, several "Added" per release, and a "Decided" section of rationale.
    releases = changelog_releases((ROOT / "CHANGELOG.md").read_text())
    assert list(releases)[:2] == ["[Unreleased]", "[0.1.0]"]
    for release, kinds in releases.items():
        assert set(kinds) <= set(KINDS), release
        for kind, lines in kinds.items():
            assert lines and lines[0].startswith("- "), (release, kind)
            assert all(line.startswith(("- ", "  ")) for line in lines), (release, kind)


def test_the_changelog_shape_check_refuses_prose_and_repeated_kinds():
    good = "# Changelog\n\nKeep a Changelog: keepachangelog.com\n\n## [Unreleased]\n\n### Fixed\n- a bug\n"
    assert changelog_releases(good) == {"[Unreleased]": {"Fixed": ["- a bug"]}}
    with pytest.raises(AssertionError, match="text before"):
        changelog_releases(good.replace("### Fixed", "Some prose.\n\n### Fixed"))
    with pytest.raises(AssertionError, match="twice"):
        changelog_releases(good + "\n### Fixed\n- another\n")

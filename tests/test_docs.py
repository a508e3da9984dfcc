"""The documents tell the truth about the repository: every "DESIGN §N" names a section of docs/design.md; the
README is short and its links resolve (files and anchors, on GitHub and on the site alike); no page names a
`zocli.x.y` module, a `--flag` or a repository file that does not exist; nothing cites a file
or tracker outside the repository (a reader of the code has only the repository)."""

from __future__ import annotations

import ast
import re
import unicodedata
from functools import cache
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
README = ROOT / "README.md"
CITING = [*sorted((ROOT / "zocli").rglob("*.py")), *sorted((ROOT / "tests").glob("*.py")), README]
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
# Flags of other programs that pages quote (sbatch, torchrun, pip, make's tools): not zocli's to check.
FOREIGN_FLAGS = {
    "--time", "--gpus-per-node", "--cpus-per-task", "--mem", "--array", "--nproc-per-node", "--index-url",
    "--include", "--logdir", "--strict", "--site-dir", "--check", "--fix", "--dist", "--no-loadscope-reorder",
    "--upgrade", "--headless", "--no-sandbox", "--disable-gpu", "--screenshot", "--window-size",
    "--partition", "--account", "--qos", "--constraint",  # sbatch's, named in the --slurm-* help
    "--savecheck", "--loadcheck", "--trainer",  # peers' (mammoth, ZO-Bench), on the comparison page
    "--ntasks", "--gpus-per-task",  # srun's
}  # fmt: skip
TOP_DIRS = {"zocli", "tests", "perf", "scripts", "examples", "docs", ".ci"}
OTHER_REPOS = {"docs/comparison.md"}  # its file paths are the peers' (each cited with its repository), not ours
CODE = [path for folder in ("zocli", "tests", "perf", "scripts") for path in sorted((ROOT / folder).rglob("*.py"))]
DESIGN_CITATION = re.compile(r"(?:DESIGN|design\.md) (?:§\d+(?:[-–]\d+)?(?:, )?)+")
# A tracker reference ("issue 12", "PR 3", "#12"), or a section sign left once docs/design.md's are removed.
OUTSIDE = re.compile(r"\b(?:issues?|PRs?|pull requests?|tickets?)\s*#?\d+|(?<![\w&/])#\d{2,5}\b|§\s*\d", re.IGNORECASE)
MARKDOWN_FILE = re.compile(r"[\w./-]*\w\.md\b")
WRITTEN = {"report.md"}  # Markdown files zocli writes (perf/gpu_check.py's report): outputs, not citations


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


def test_the_readme_is_at_most_250_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


def test_the_readme_points_at_the_docs_it_was_cut_into():
    text = README.read_text(encoding="utf-8")
    for page in ("docs/design.md", "docs/cli.md", "docs/reproducing.md", "docs/zo.md", "docs/measurements.md"):
        assert f"]({page}" in text, page


# -- links ------------------------------------------------------------------------------------------------------


def _prose(text: str) -> str:
    """The text without fenced code blocks (a link or heading inside one is not one)."""
    return re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.MULTILINE | re.DOTALL)


def slug_site(heading: str) -> str:
    """Python-Markdown's toc slug (what the site's anchors are)."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def slug_github(heading: str) -> str:
    """GitHub's heading anchor (what the README's links resolve to on GitHub)."""
    return re.sub(r"[^\w\- ]", "", heading.lower(), flags=re.UNICODE).replace(" ", "-")


@cache
def headings(path: Path) -> list[str]:
    found = re.findall(r"^#{1,6} +(.+?) *#*$", _prose(path.read_text(encoding="utf-8")), flags=re.MULTILINE)
    return [re.sub(r"[`*]", "", h) for h in found]


def links(path: Path) -> list[str]:
    text = re.sub(r"`[^`\n]*`", "", _prose(path.read_text(encoding="utf-8")))
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def broken(path: Path, target: str) -> str | None:
    file, _, anchor = target.partition("#")
    dest = (path.parent / file).resolve() if file else path
    if not dest.exists():
        return "no such file"
    if anchor and dest.suffix == ".md":
        if anchor not in {slug_site(h) for h in headings(dest)}:
            return "no such anchor on the site"
        if anchor not in {slug_github(h) for h in headings(dest)}:
            return "no such anchor on GitHub"
    return None


def test_every_readme_link_resolves_to_a_file_and_anchor():
    found = links(README)
    assert len(found) >= 15  # the pattern does find the links
    assert {t: why for t in found if (why := broken(README, t))} == {}


def test_the_link_check_catches_a_missing_file_and_anchor():
    assert broken(README, "docs/nowhere.md") == "no such file"
    assert broken(README, "docs/zo.md#nowhere") == "no such anchor on the site"
    assert broken(README, "docs/zo.md#the-measured-table") is None


# -- names ------------------------------------------------------------------------------------------------------


@cache
def zocli_flags() -> frozenset[str]:
    """Every option of every zocli command (the CLI reference's source), and of the scripts in the repository."""
    from zocli.cli import app

    found: set[str] = {"--help"}

    def walk(command):
        for param in command.params:
            found.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("--"))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    for script in [*(ROOT / "perf").glob("*.py"), *(ROOT / "scripts").glob("*.py")]:
        found.update(re.findall(r"add_argument\(\s*\"(--[a-z0-9-]+)\"", script.read_text()))
    return frozenset(found)


def module_name_exists(dotted: str) -> bool:
    """`zocli.a.b` is a module or package, or `zocli.a.b.name` a top-level name defined in one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if module.exists():
            rest = parts[cut:]
            if not rest:
                return True
            if len(rest) > 1:
                return False
            return rest[0] in top_level_names(module)
    return False


def top_level_names(module: Path) -> set[str]:
    names = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def repo_path_exists(token: str) -> bool:
    if any(c in token for c in "*{"):
        return any(ROOT.glob(re.sub(r"\{[^}]*\}", "*", token)))
    return (ROOT / token).exists()


PLACEHOLDERS = {"NAME", "DIR", "FILE", "RUN", "SWEEP", "ID"}  # zocli/presets/NAME.toml: a pattern, not a file


def looks_like_repo_path(token: str) -> bool:
    if not re.fullmatch(r"\.?[\w][\w.*{},/-]*", token) or "/" not in token:
        return False
    if any(part.split(".")[0] in PLACEHOLDERS for part in token.split("/")):
        return False
    return token.split("/")[0] in TOP_DIRS or re.search(r"\.(py|toml|sh)$", token) is not None


def names_in(path: Path) -> dict[str, set[str]]:
    text = path.read_text(encoding="utf-8")
    spans = re.findall(r"`([^`\n]+)`", text) + re.findall(r"^(?:```|~~~)\w*\n(.*?)^(?:```|~~~)", text, re.M | re.S)
    tokens = {t.strip("(),;:'\"") for span in spans for t in span.split()}
    return {
        "modules": set(re.findall(r"(?<![\w.])zocli(?:\.[a-z_][a-z0-9_]*)+", text)),
        "flags": set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)),
        "paths": {t.rstrip(".") for t in tokens if looks_like_repo_path(t.rstrip("."))},
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_a_page_names_only_modules_flags_and_files_that_exist(page):
    found = names_in(page)
    assert {m for m in found["modules"] if not module_name_exists(m)} == set()
    assert found["flags"] - zocli_flags() - FOREIGN_FLAGS == set()
    if page.relative_to(ROOT).as_posix() not in OTHER_REPOS:
        assert {p for p in found["paths"] if not repo_path_exists(p)} == set()


def test_the_name_check_catches_what_drifted():
    # The README once cited zo.estimate (now zo.estimate_flat), benchmarks/ (now perf/) and zocli/world.py.
    assert not module_name_exists("zocli.method.zo.estimate")
    assert module_name_exists("zocli.method.estimate.estimate_flat") and module_name_exists("zocli.cli.reference")
    assert looks_like_repo_path("benchmarks/step_time.py") and not repo_path_exists("benchmarks/step_time.py")
    assert looks_like_repo_path("zocli/world.py") and not repo_path_exists("zocli/world.py")
    assert "--queries" in zocli_flags() and "--no-such-flag" not in zocli_flags()


# -- the study, cell by cell ------------------------------------------------------------------------------------


def test_the_reproduction_page_gives_every_published_cell_its_command():
    from zocli.study.paper import PUBLISHED

    text = (ROOT / "docs" / "reproducing.md").read_text(encoding="utf-8")
    for bench, method in PUBLISHED:
        assert f"`zocli train --preset {bench} --preset {method}`" in text, (bench, method)


def test_the_site_lists_every_page_in_its_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert {p for p in pages if f": {p}" not in nav} == set()


def outside_citations(text: str) -> list[str]:
    """Tracker references, stray section signs and Markdown files the repository does not have."""
    found = [match.group(0) for match in OUTSIDE.finditer(DESIGN_CITATION.sub("", text))]
    for name in MARKDOWN_FILE.findall(text):
        known = Path(name).name in WRITTEN or any((base / name).is_file() for base in (ROOT, ROOT / "docs"))
        if not known:
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

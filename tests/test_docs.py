"""The documents tell the truth about the repository: every "DESIGN §N" names a section of docs/design.md; the
README is short and its links resolve (files and anchors, on GitHub and on the site alike); no page names a
`zocli.x.y` module, a `--flag` or a repository file that does not exist."""

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
}  # fmt: skip
TOP_DIRS = {"zocli", "tests", "perf", "scripts", "examples", "docs", ".ci"}
OTHER_REPOS = {"docs/comparison.md"}  # its file paths are the peers' (each cited with its repository), not ours


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
    assert module_name_exists("zocli.method.zo.estimate_flat") and module_name_exists("zocli.cli.reference")
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

"""DESIGN §2 layering, checked statically on the folders: every zocli module is parsed, nothing imported.

- a module imports only from its own layer folder or a lower one, never from a higher one;
- only the CLI layer imports Typer (or Click) or Rich, calls print() or exits; nothing else imports it;
- imports are absolute (`from zocli.run.train import run`), so the layer of every edge is its first word;
- docs/design.md §2 draws the same layers as `ls zocli/`;
- no module grows past MAX_LINES.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zocli"
DESIGN = PACKAGE.parent / "docs" / "design.md"
MAX_LINES = 400  # ruff-formatted lines: past it, a module holds more than one concept

# The first word of a module's dotted name (its folder, or a top-level module) and its layer.
LAYERS = {
    "__init__": 0,
    "config": 0,
    "resolve": 0,
    "flags": 0,
    "errors": 0,
    "rng": 0,
    "data": 1,
    "method": 2,
    "run": 3,
    "study": 4,
    "sweep": 5,
    "cli": 6,
    "__main__": 6,
}
CLI_LAYER = 6
CLI_ONLY_LIBRARIES = {"typer", "click", "rich"}


def modules() -> dict[str, ast.Module]:
    """Every module of the package by dotted name below zocli (`run.train`, `config`)."""
    trees = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        trees[name] = ast.parse(path.read_text(), filename=str(path))
    return trees


def layer_word(name: str) -> str:
    return name.split(".")[0]


def imports(tree: ast.Module) -> tuple[set[str], set[str], list[int]]:
    """(zocli modules imported, by dotted name below zocli; top-level external packages; lines of relative imports)."""
    internal, external, relative = set(), set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, rest = alias.name.partition(".")
                (internal.add(rest or "__init__") if top == "zocli" else external.add(top))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                relative.append(node.lineno)
                continue
            top, _, rest = node.module.partition(".")
            if top != "zocli":
                external.add(top)
            elif rest:
                internal.add(rest)
            else:  # from zocli import x: a layer folder, a top-level module or a name of zocli/__init__
                internal.update(a.name if a.name in LAYERS else "__init__" for a in node.names)
    return internal, external, relative


@pytest.fixture(scope="module")
def trees() -> dict[str, ast.Module]:
    return modules()


def test_every_module_sits_in_a_layer(trees):
    unassigned = sorted(name for name in trees if layer_word(name) not in LAYERS)
    assert not unassigned, f"put these in a layer folder, or add their folder to LAYERS and DESIGN §2: {unassigned}"


def test_imports_are_absolute(trees):
    offending = [f"{name}:{line}" for name, tree in trees.items() for line in imports(tree)[2]]
    assert not offending, f"relative imports hide the layer an edge goes to: {offending}"


def test_imports_only_go_down_or_within_a_folder(trees):
    offending = []
    for name, tree in trees.items():
        here = LAYERS.get(layer_word(name))
        for target in sorted(imports(tree)[0]):
            there = LAYERS.get(layer_word(target))
            if here is not None and there is not None and there > here:
                offending.append(f"{name} (L{here}) -> {target} (L{there})")
    assert not offending, "imports from a higher layer:\n  " + "\n  ".join(offending)


def test_nothing_below_the_cli_imports_it_or_its_libraries(trees):
    offending = {}
    for name, tree in trees.items():
        if LAYERS.get(layer_word(name)) == CLI_LAYER:
            continue
        internal, external, _ = imports(tree)
        found = (external & CLI_ONLY_LIBRARIES) | {t for t in internal if layer_word(t) in ("cli", "__main__")}
        if found:
            offending[name] = sorted(found)
    assert not offending, f"only the CLI layer imports Typer, Rich or the CLI: {offending}"
    assert "typer" in imports(trees["cli._shared"])[1]


def _calls(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                yield func.id, node.lineno
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                yield f"{func.value.id}.{func.attr}", node.lineno


def _below_the_cli(trees):
    return {name: tree for name, tree in trees.items() if LAYERS.get(layer_word(name)) != CLI_LAYER}


def test_only_the_cli_prints(trees):
    offending = [
        f"{name}:{line}"
        for name, tree in _below_the_cli(trees).items()
        for call, line in _calls(tree)
        if call == "print"
    ]
    assert not offending, f"print() outside the CLI: {offending}"


def test_only_the_cli_exits(trees):
    exits = {"exit", "quit", "sys.exit", "os._exit"}
    below = _below_the_cli(trees)
    offending = [
        f"{name}:{line} {call}" for name, tree in below.items() for call, line in _calls(tree) if call in exits
    ]
    offending += [
        f"{name}:{node.lineno} raise SystemExit"
        for name, tree in below.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise) and node.exc is not None and "SystemExit" in ast.unparse(node.exc)
    ]
    assert not offending, f"exits outside the CLI: {offending}"


def test_modules_stay_short():
    lengths = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in PACKAGE.rglob("*.py")}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concept): {too_long}"


def test_the_design_draws_the_tree():
    """DESIGN §2's table lists exactly the layer folders and top-level modules that `ls zocli/` shows."""
    section = DESIGN.read_text().split("## 2. Architecture", 1)[1].split("\n## ", 1)[0]
    cells = [row.split("|")[2] for row in section.splitlines() if re.match(r"\| \d+ \|", row)]
    drawn = {name for cell in cells for name in re.findall(r"`(\w+)(?:/|\.py)`", cell)} - {"presets"}
    on_disk = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    on_disk |= {p.stem for p in PACKAGE.glob("*.py")}
    assert on_disk <= drawn | {"__init__", "__main__"}, f"DESIGN §2 leaves out: {sorted(on_disk - drawn)}"
    assert drawn <= on_disk, f"DESIGN §2 names what is not there: {sorted(drawn - on_disk)}"
    assert {word for word in LAYERS if word not in ("__init__", "__main__")} == on_disk - {"__init__", "__main__"}


def test_import_parser_sees_the_known_edges(trees):
    # guards the checker itself: a few edges that exist today, in each import form the package uses
    assert {"method.attach", "config", "method.step"} <= imports(trees["study.memory"])[0]
    assert "data" in imports(trees["run.session"])[0] or any(
        t.startswith("data.") for t in imports(trees["run.session"])[0]
    )
    assert "__init__" in imports(trees["run.checkpoint"])[0]  # from zocli import __version__
    assert "method.estimate" in imports(trees["study.probe"])[0]
    assert "cli" in imports(trees["__main__"])[0]


def test_import_parser_handles_every_form():
    tree = ast.parse(
        "import zocli.run.train\nfrom zocli import run, __version__\nfrom zocli.config import X\n"
        "import zocli\nimport torch.nn\nfrom typer import Typer\n"
        "def f():\n    from .cli import app\n"
    )
    internal, external, relative = imports(tree)
    assert internal == {"run.train", "run", "__init__", "config"}
    assert external == {"torch", "typer"}
    assert relative == [8]

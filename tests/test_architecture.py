"""DESIGN §2 layering, checked statically: every zocli module is parsed with `ast`, nothing is imported.

- only the CLI package imports Typer (or Click), calls print() or exits; nothing but `__main__` imports it;
- Rich (tables, progress) stays in layer 4: the cli package and its renderable builders in render.py;
- a module imports only from a lower layer, or from its own layer (within-layer imports are allowed);
- no module grows past MAX_LINES, except the known offenders recorded below.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "zocli"
MAX_LINES = 400
KNOWN_LONG: set[str] = set()  # modules allowed over MAX_LINES; keep it empty

LAYERS = {
    # 0: configuration and pure helpers
    "__init__": 0, "config": 0, "metrics": 0, "rng": 0, "plan": 0, "world": 0, "paper": 0,
    # 1: math, no I/O
    "adapters": 1, "zo": 1, "benchmarks": 1, "precision": 1,
    # 2: the model and the disk
    "backbone": 2, "attach": 2, "data": 2, "dirswap": 2, "loader": 2, "checkpoint": 2, "rundir": 2, "objective": 2,
    "preflight": 2, "hub": 2, "userdata": 2, "sweep": 2,
    # 3: the jobs
    "step": 3, "session": 3, "evaluate": 3, "train": 3, "probe": 3, "memory": 3, "compare": 3, "plots": 3,
    "pretrain": 3, "tracking": 3, "launch": 3, "stats": 3, "fidelity": 3,
    # 4: the command line (render builds the Rich tables cli.py prints)
    "cli": 4, "__main__": 4, "render": 4,
}
CLI_ONLY_LIBRARIES = {"typer", "click"}
PRESENTATION_LIBRARIES = {"rich"}  # layer 4 only
CLI_MODULES = {"cli", "__main__"}  # __main__ is the `python -m zocli` shim around the CLI


def modules() -> dict[str, ast.Module]:
    """One tree per top-level module; the files of the `cli` package merged into one tree named "cli"
    (their imports of each other dropped, their `..x` imports read as zocli's `.x`)."""
    trees = {path.stem: ast.parse(path.read_text(), filename=str(path)) for path in sorted(PACKAGE.glob("*.py"))}
    body = []
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        for node in ast.walk(tree := ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                node.module, node.names = "cli", [ast.alias("cli")]  # within the package
            elif isinstance(node, ast.ImportFrom) and node.level == 2:
                node.level = 1
        body.extend(tree.body)
    trees["cli"] = ast.Module(body=body, type_ignores=[])
    return trees


def imports(tree: ast.Module, package_modules: set[str]) -> tuple[set[str], set[str]]:
    """(intra-package modules, top-level external packages) imported anywhere in the tree, lazily or not."""
    internal, external = set(), set()

    def add_internal(parts: list[str], names: list[str]) -> None:
        if parts:  # from .x import y / from zocli.x import y / import zocli.x
            internal.add(parts[0])
        else:  # from . import x, y: a submodule, or an attribute of the package __init__
            internal.update(n if n in package_modules else "__init__" for n in names)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, *rest = alias.name.split(".")
                if top == "zocli":
                    add_internal(rest, [])
                    if not rest:
                        internal.add("__init__")
                else:
                    external.add(top)
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            parts = node.module.split(".") if node.module else []
            if node.level > 0:
                add_internal(parts, names)
            elif parts[0] == "zocli":
                add_internal(parts[1:], names)
            else:
                external.add(parts[0])
    return internal, external


@pytest.fixture(scope="module")
def trees() -> dict[str, ast.Module]:
    return modules()


def test_every_module_has_a_layer(trees):
    unassigned = sorted(set(trees) - set(LAYERS))
    assert not unassigned, f"assign a DESIGN §2 layer in LAYERS to: {unassigned}"


def test_imports_only_go_down_or_sideways(trees):
    offending = []
    for name, tree in trees.items():
        internal, _ = imports(tree, set(trees))
        for target in sorted(internal - {name}):
            if target not in LAYERS or name not in LAYERS:
                continue  # reported by test_every_module_has_a_layer
            if LAYERS[target] > LAYERS[name]:
                offending.append(f"{name} (L{LAYERS[name]}) -> {target} (L{LAYERS[target]})")
    assert not offending, "imports from a higher layer:\n  " + "\n  ".join(offending)


def test_nothing_imports_the_cli(trees):
    offending = [name for name, tree in trees.items()
                 if name not in CLI_MODULES and "cli" in imports(tree, set(trees))[0]]
    assert not offending, f"modules importing zocli.cli: {offending}"


def test_only_the_cli_imports_typer(trees):
    offending = {name: sorted(found) for name, tree in trees.items() if name not in CLI_MODULES
                 and (found := imports(tree, set(trees))[1] & CLI_ONLY_LIBRARIES)}
    assert not offending, f"UI libraries imported outside the cli package: {offending}"
    assert "typer" in imports(trees["cli"], set(trees))[1]


def test_rich_stays_in_the_presentation_layer(trees):
    offending = {name: sorted(found) for name, tree in trees.items() if LAYERS.get(name) != 4
                 and (found := imports(tree, set(trees))[1] & PRESENTATION_LIBRARIES)}
    assert not offending, f"Rich imported below layer 4 (core functions return dataclasses): {offending}"


def _calls(tree: ast.Module):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                yield func.id, node.lineno
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                yield f"{func.value.id}.{func.attr}", node.lineno


def test_only_the_cli_prints(trees):
    offending = [f"{name}.py:{line}" for name, tree in trees.items() if name != "cli"
                 for call, line in _calls(tree) if call == "print"]
    assert not offending, f"print() outside the cli package: {offending}"


def test_only_the_cli_exits(trees):
    exits = {"exit", "quit", "sys.exit", "os._exit"}
    offending = [f"{name}.py:{line} {call}" for name, tree in trees.items() if name not in CLI_MODULES
                 for call, line in _calls(tree) if call in exits]
    offending += [f"{name}.py:{node.lineno} raise SystemExit" for name, tree in trees.items()
                  if name not in CLI_MODULES for node in ast.walk(tree)
                  if isinstance(node, ast.Raise) and node.exc is not None
                  and "SystemExit" in ast.unparse(node.exc)]
    assert not offending, f"exits outside the CLI: {offending}"


def test_modules_stay_short():
    lengths = {str(path.relative_to(PACKAGE).with_suffix("")): len(path.read_text().splitlines())
               for path in PACKAGE.rglob("*.py")}
    too_long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in KNOWN_LONG}
    assert not too_long, f"modules over {MAX_LINES} lines (split them by concept): {too_long}"


def test_import_parser_sees_the_known_edges(trees):
    # guards the checker itself: a few edges that exist today, in each import form the package uses
    known = set(trees)
    assert {"attach", "config", "step"} <= imports(trees["memory"], known)[0]  # from .x import y
    assert {"benchmarks", "data"} <= imports(trees["session"], known)[0]  # from . import x
    assert "__init__" in imports(trees["checkpoint"], known)[0]  # from . import __version__
    assert "zo" in imports(trees["probe"], known)[0]  # lazy import inside a function
    assert "cli" in imports(trees["__main__"], known)[0]


def test_import_parser_handles_absolute_forms():
    known = {"cli", "train", "probe", "config"}
    tree = ast.parse("import zocli.train\nfrom zocli import probe, __version__\nfrom zocli.config import X\n"
                     "import zocli\nimport torch.nn\nfrom typer import Typer\n"
                     "def f():\n    from .cli import app\n")
    internal, external = imports(tree, known)
    assert internal == {"train", "probe", "__init__", "config", "cli"}
    assert external == {"torch", "typer"}

"""The package's folders are its layers, and imports point one way: a module imports only
from its own layer or below.

docs/layout.md draws the same picture. A module's layer is its folder (a top-level module of
``labctl`` is in the base layer, ``labctl/__main__.py`` in the CLI's); a folder that is no
layer, or a layer with no folder, fails. Imports inside functions count: a lazy import is
still a dependency. Imports under ``if TYPE_CHECKING:`` do not: they never run (a kind's
methods take the inventory, whose model is built from the kinds).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "labctl"

# Lowest first: (layer, its folders; "" is labctl's own top-level modules).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("",)),
    ("kinds", ("kinds",)),
    ("inventory", ("inventory",)),
    ("render", ("render",)),
    ("host", ("host",)),
    ("load", ("load",)),
    ("ops", ("ops",)),
    ("sandbox", ("sandbox",)),
    ("fleet", ("fleet",)),
    ("cli", ("cli",)),
]
# Top-level modules that are no base module.
TOP_LEVEL_ABOVE = {"labctl.__main__": "cli"}


def folder_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""


def rank(module: str) -> int:
    names = [name for name, _ in LAYERS]
    if module in TOP_LEVEL_ABOVE:
        return names.index(TOP_LEVEL_ABOVE[module])
    folder = folder_of(module)
    for i, (_, folders) in enumerate(LAYERS):
        if folder in folders:
            return i
    raise AssertionError(f"{module}: its folder {folder!r} is in no layer; add it to LAYERS and docs/layout.md")


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out.append((name, path))
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """The ids of import nodes under ``if TYPE_CHECKING:`` (they never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                for sub in ast.walk(child):
                    skip.add(id(sub))
    return skip


def imported(path: Path) -> set[str]:
    """Every labctl module ``path`` imports when it runs, at the top or in a function body."""
    names: set[str] = set()
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "labctl":
            names.add(node.module)
            # `from labctl import fsio` and `from labctl.host import proc` import modules
            names.update(f"{node.module}.{a.name}" for a in node.names
                         if (SRC / Path(*node.module.split("."), a.name)).exists()
                         or (SRC / Path(*node.module.split("."), a.name + ".py")).exists())
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "labctl")
    return names


@pytest.mark.parametrize(("name", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_point_down(name: str, path: Path) -> None:
    upward = sorted(t for t in imported(path) if t != "labctl" and rank(t) > rank(name))
    assert not upward, f"{name} ({LAYERS[rank(name)][0]}) imports from above it: {upward}"


def test_every_folder_is_a_layer_and_every_layer_a_folder() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    layered = {f for _, fs in LAYERS for f in fs if f}
    assert folders == layered, f"folders without a layer: {sorted(folders - layered)}; " \
                               f"layers without a folder: {sorted(layered - folders)}"


def test_the_check_is_not_vacuous() -> None:
    """Every layer holds a module, the base layer's top-level modules are ranked lowest, and
    an upward import is caught (the rule can fail)."""
    ranks = {rank(name) for name, _ in modules()}
    assert ranks == set(range(len(LAYERS)))
    assert rank("labctl.errors") == 0 and rank("labctl.cli.tables") == len(LAYERS) - 1
    assert rank("labctl.kinds.vllm") < rank("labctl.inventory.schema") < rank("labctl.render.units")
    tree = ast.parse("from labctl.ops import apply\n")
    upward = [t for t in {"labctl.ops.apply"} if rank(t) > rank("labctl.kinds.vllm")]
    assert upward and isinstance(tree.body[0], ast.ImportFrom)
    with pytest.raises(AssertionError, match="is in no layer"):
        rank("labctl.nowhere.module")

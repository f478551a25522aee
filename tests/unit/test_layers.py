"""The package's layers point one way: a module imports only from its own layer or below.

docs/layout.md draws the same picture. The inventory package is two layers: its schema sits
at the bottom (every other layer reads it), while the loader and its whole-inventory checks
sit above the renderers and host's read-only file facts, because a cross-check renders (the
scrape jobs, the units' writable paths) and reads GGUF headers to judge. Imports inside
functions count: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# Lowest first. A module's layer is the longest prefix of its dotted name listed here.
LAYERS: list[tuple[str, ...]] = [
    ("labctl", "labctl.errors", "labctl.text", "labctl.fsio", "labctl.progress", "labctl.secretscan",
     "labctl.encode", "labctl.litellm_env"),
    ("labctl.inventory", "labctl.inventory.schema", "labctl.inventory.yamlsrc", "labctl.inventory.docgen",
     "labctl.inventory.fallbacks"),
    ("labctl.render",),
    ("labctl.host",),
    ("labctl.inventory.load", "labctl.inventory.checks", "labctl.inventory.fleet"),
    ("labctl.ops",),
    ("labctl.sandbox",),
    ("labctl.fleet",),
    ("labctl.cli", "labctl.__main__"),
]


def rank(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted((SRC / "labctl").rglob("*.py")):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        out.append((name, path))
    return out


def imported(path: Path) -> set[str]:
    """Every labctl module ``path`` imports, at the top or in a function body."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
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
    upward = sorted(t for t in imported(path) if rank(t) > rank(name))
    assert not upward, f"{name} (layer {rank(name)}) imports from above it: {upward}"


def test_the_layers_name_real_packages() -> None:
    present = {m for m, _ in modules()}
    for prefixes in LAYERS:
        for prefix in prefixes:
            if prefix == "labctl.fleet" and not any(m.startswith("labctl.fleet") for m in present):
                continue  # the fleet layer's place is kept for it
            assert any(m == prefix or m.startswith(prefix + ".") for m in present), prefix

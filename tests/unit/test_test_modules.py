"""The test tree itself: pytest imports test modules by basename (no packages), so two
tiers with a module of the same name fail collection when run together, as the README's
test command runs them; the shared harness is the one package, imported by its name."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_test_module_basenames_are_unique_across_tiers() -> None:
    names = Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert not [n for n, count in names.items() if count > 1], sorted(n for n, c in names.items() if c > 1)


def bare_harness_imports(path: Path, text: str, names: set[str]) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        found += [f"{path}:{node.lineno}: {m}" for m in modules if m.split(".")[0] in names | {"tests"}]
    return found


def test_the_harness_is_imported_as_the_package_harness() -> None:
    """tests/harness is imported as ``harness.NAME`` (pyproject's pythonpath puts tests/ on
    the path): a bare ``import stack`` or ``from tests import helpers`` resolves only while
    something else happens to put a directory on sys.path."""
    names = {p.stem for p in (ROOT / "tests" / "harness").glob("*.py")} - {"__init__"}
    assert {"tools", "stack", "qemu_vm", "fakes"} <= names
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").glob("*.py")]
    bare = [hit for p in files for hit in bare_harness_imports(p.relative_to(ROOT), p.read_text(), names)]
    assert not bare, bare
    # The check can fail.
    assert bare_harness_imports(Path("x.py"), "import stack\nfrom tests import helpers\n", names) == [
        "x.py:1: stack", "x.py:2: tests"]

"""Golden files for the repository's own inventory.yaml.

Regenerate after an intended change with:  LABCTL_UPDATE_GOLDEN=1 pytest tests/unit/test_golden.py
then review the diff. Golden files never freeze a mistake on their own: test_validators
runs every rendered file through its ecosystem's validator.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from labctl.load import load_inventory
from labctl.render import render_all

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "root-inventory"


def test_root_inventory_matches_golden(repo_root: Path) -> None:
    files = render_all(load_inventory(repo_root / "inventory.yaml").inventory)
    if os.environ.get("LABCTL_UPDATE_GOLDEN"):
        shutil.rmtree(GOLDEN, ignore_errors=True)
        for rel, content in files.items():
            (GOLDEN / rel).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / rel).write_text(content)
    expected = {p.relative_to(GOLDEN).as_posix(): p.read_text() for p in GOLDEN.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(expected), "rendered file set differs from golden (LABCTL_UPDATE_GOLDEN=1)"
    for rel, content in files.items():
        assert content == expected[rel], f"{rel} differs from golden (LABCTL_UPDATE_GOLDEN=1 to accept)"


def test_render_is_deterministic(repo_root: Path) -> None:
    inv = load_inventory(repo_root / "inventory.yaml").inventory
    assert render_all(inv) == render_all(inv)

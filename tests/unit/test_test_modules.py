"""The test tree itself: pytest imports test modules by basename (no packages), so two
tiers with a module of the same name fail collection when run together, as the README's
test command runs them."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_test_module_basenames_are_unique_across_tiers() -> None:
    names = Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert not [n for n, count in names.items() if count > 1], sorted(n for n, c in names.items() if c > 1)

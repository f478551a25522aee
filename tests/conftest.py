"""Test tiers and the rule that a tier never silently skips in CI.

Tiers come from the directory: tests/unit -> unit, tests/integration -> integration,
tests/system and tests/infra -> system. Select with -m (e.g. ``pytest -m unit``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIERS = {"unit": "unit", "integration": "integration", "system": "system", "infra": "system"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        tier = TIERS.get(parts[0]) if len(parts) > 1 else None
        if tier and not any(m.name in TIERS.values() for m in item.iter_markers()):
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def demo_stack():
    """The CPU demo brought up by `labctl up` on a booted systemd machine (tests/harness/stack.py).
    Session-wide: tests/infra reads it first; tests/system then changes it."""
    import os

    from harness.stack import boot_stack

    stack = boot_stack(f"labctl-stack-{os.getpid()}")
    try:
        yield stack
    finally:
        stack.machine.shutdown()

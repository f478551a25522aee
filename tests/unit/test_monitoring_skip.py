"""`labctl up` with monitoring enabled but no Docker engine says it skipped it, and why."""

from __future__ import annotations

from pathlib import Path

from harness.invtext import BASE

from labctl.load import load_inventory
from labctl.ops.apply import HostContext, monitoring_up


def test_up_says_monitoring_was_skipped_and_why(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    inv = load_inventory("inventory.yaml", text=BASE.replace("user: labuser", f"user: labuser\n  home: {tmp_path}"))
    said: list[str] = []
    summary = monitoring_up(HostContext.of(inv.inventory), said.append)
    assert summary == said[0]
    assert summary.startswith(f"monitoring skipped: no Docker engine at unix://{tmp_path}/no-engine.sock")
    assert not (tmp_path / ".config/labctl/secrets/grafana-admin-password").exists()

"""labctl.records.Record behaves as the frozen dataclass each of its subclasses would be."""

from __future__ import annotations

import pytest

from labctl.host.systemd import UnitFacts, UnitState
from labctl.ops import status
from labctl.ops.probes import ProbeResult, ProbeSpec, Secret

pytestmark = pytest.mark.unit


def test_records_behave_as_frozen_dataclasses() -> None:
    spec = ProbeSpec("g", "litellm", "http://127.0.0.1:4000", models=["a"], key=Secret(None, "K"))
    assert spec.as_dict() == {"service": "g", "recipe": "litellm", "url": "http://127.0.0.1:4000", "host": "",
                              "port": 0, "models": ["a"], "key": {"env_file": None, "variable": "K"}}
    assert ProbeSpec.from_dict(spec.as_dict()) == spec and spec != ProbeSpec("g", "litellm")
    assert spec.as_dict()["models"] is not spec.models  # a copy, as asdict gives
    assert ProbeSpec("a", "redis").models == [] and ProbeSpec("a", "redis").models is not ProbeSpec("b", "x").models
    with pytest.raises(AttributeError):
        spec.url = "http://elsewhere"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ProbeSpec("a", "redis", shell="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ProbeSpec("a")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ProbeSpec("a", "redis", recipe="x")  # type: ignore[misc]
    result = ProbeResult("n", True, "GET /health", 200, 1.5, "ready")
    assert repr(result) == ("ProbeResult(service='n', ok=True, check='GET /health', status=200, latency_ms=1.5, "
                            "detail='ready')")
    assert hash(result) == hash(ProbeResult("n", True, "GET /health", 200, 1.5, "ready"))
    row = status.ServiceStatus(
        service="n", kind="llama-server", unit="u", active_state="active", sub_state="running", enabled="enabled",
        n_restarts=0, result="success", start_limit_hit=False, main_pid=1, memory_bytes=None, uptime_sec=None,
        bind="127.0.0.1", port=1, probe=result.as_dict(), model=None, drift="none")
    assert row.metrics == {} and row.drop_ins == [] and row.external is False and row.healthy
    assert list(row.as_dict()) == [*status.ServiceStatus.__slots__, "healthy"]


def test_replace_gives_a_changed_copy() -> None:
    state = UnitState("loaded", "active", "enabled")
    stale = state.replace(need_daemon_reload=True)
    assert stale == UnitState("loaded", "active", "enabled", True) and state.need_daemon_reload is False
    with pytest.raises(TypeError):
        state.replace(no_such_field=1)


def test_unit_facts_from_show() -> None:
    facts = UnitFacts.parse("x.service", {"ActiveState": "active", "MemoryCurrent": str(2**64 - 1),
                                          "DropInPaths": "/a.conf /b.conf", "ExecMainCode": "1"})
    assert (facts.active_state, facts.memory_bytes, facts.drop_in_paths, facts.exec_main_code) == (
        "active", None, ("/a.conf", "/b.conf"), 1)
    assert facts.as_dict()["drop_in_paths"] == ("/a.conf", "/b.conf") and facts.state.active

"""``labctl status``: the truth about each service, gathered concurrently.

Unit facts come from ``systemctl --user show``; probes run in parallel, each bounded by its
timeout, so one hung backend costs one timeout and not a sum of them.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labctl.inventory import Inventory, LlamaCppPython, LlamaServer, Vllm, unit_name
from labctl.layout import Layout
from labctl.probes import ProbeResult, probe_all
from labctl.proc import CommandFailed
from labctl.render.gateway import base_url
from labctl.render.units import render_unit
from labctl.systemd import UnitFacts, UserManager


@dataclass(frozen=True)
class ServiceStatus:
    service: str
    kind: str
    unit: str
    active_state: str
    sub_state: str
    enabled: str
    n_restarts: int
    result: str              # systemd's Result: success, exit-code, signal, start-limit-hit...
    start_limit_hit: bool
    main_pid: int
    memory_bytes: int | None
    uptime_sec: float | None
    bind: str
    port: int
    probe: dict[str, object]
    model: str | None
    drift: str               # "none", "changed", "not installed"
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.active_state == "active" and bool(self.probe.get("ok"))

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "healthy": self.healthy}


@dataclass(frozen=True)
class StatusReport:
    services: list[ServiceStatus]
    monitoring: dict[str, object]
    seconds: float
    note: str = ""

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.services)

    def as_dict(self) -> dict[str, object]:
        return {"healthy": self.healthy, "seconds": self.seconds, "note": self.note,
                "services": [s.as_dict() for s in self.services], "monitoring": self.monitoring}


def _served_model(inv: Inventory, svc: object) -> str | None:
    if isinstance(svc, (LlamaServer, LlamaCppPython)):
        path = Path(inv.model_path(svc))
        if path.is_symlink():
            return f"{path.name} -> {os.readlink(path)}"
        return str(path)
    if isinstance(svc, Vllm):
        return svc.model
    return None


def _drift(inv: Inventory, layout: Layout, name: str) -> str:
    path = Path(layout.config_root) / layout.unit(name)
    if not path.exists():
        return "not installed"
    return "none" if path.read_text() == render_unit(inv, name, inv.services[name], layout) else "changed"


VLLM_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def _vllm_metrics(inv: Inventory, svc: Vllm, timeout: float) -> dict[str, float]:
    import httpx

    try:
        text = httpx.get(f"{base_url(inv, svc)}/metrics", timeout=timeout, trust_env=False).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        for gauge in VLLM_GAUGES:
            if line.startswith(gauge) and not line.startswith("#"):
                try:
                    out[gauge] = out.get(gauge, 0.0) + float(line.rsplit(" ", 1)[-1])
                except ValueError:
                    pass
    return out


def gather(inv: Inventory, *, manager: UserManager | None = None, probe_timeout: float = 3.0,
           with_monitoring: bool = True) -> StatusReport:
    start = time.monotonic()
    manager = manager or UserManager()
    layout = Layout.of(inv)
    names = list(inv.enabled())
    with ThreadPoolExecutor(max_workers=4) as pool:
        facts_f = pool.submit(manager.show, [unit_name(n) for n in names])
        probes_f = pool.submit(probe_all, inv, names, timeout=probe_timeout)
        metrics_f = {n: pool.submit(_vllm_metrics, inv, s, probe_timeout)
                     for n, s in inv.enabled().items() if isinstance(s, Vllm)}
        mon_f = pool.submit(_monitoring, inv) if with_monitoring and inv.monitoring.enabled else None
        note = ""
        try:
            facts: dict[str, UnitFacts] = facts_f.result()
        except CommandFailed as exc:
            # No user manager here (or it does not answer): report what the probes see.
            note = f"unit states unavailable: {exc}"
            facts = {unit_name(n): UnitFacts.parse(unit_name(n), {"LoadState": "unknown", "ActiveState": "unknown",
                                                                   "SubState": "unknown"}) for n in names}
        probes: dict[str, ProbeResult] = probes_f.result()
        metrics = {n: f.result() for n, f in metrics_f.items()}
        monitoring = mon_f.result() if mon_f else {"enabled": inv.monitoring.enabled}
    now_usec = time.monotonic() * 1e6
    services = []
    for name in names:
        svc = inv.services[name]
        f = facts[unit_name(name)]
        uptime = ((now_usec - f.active_enter_monotonic_usec) / 1e6
                  if f.active_state == "active" and f.active_enter_monotonic_usec else None)
        services.append(ServiceStatus(
            service=name, kind=svc.kind, unit=f.unit, active_state=f.active_state,  # type: ignore[attr-defined]
            sub_state=f.sub_state, enabled=f.unit_file_state or "-", n_restarts=f.n_restarts, result=f.result,
            start_limit_hit=f.result == "start-limit-hit", main_pid=f.main_pid, memory_bytes=f.memory_bytes,
            uptime_sec=round(uptime, 1) if uptime is not None else None, bind=inv.bind_of(svc), port=svc.port,
            probe=probes[name].as_dict(), model=_served_model(inv, svc), drift=_drift(inv, layout, name),
            metrics=metrics.get(name, {}),
        ))
    return StatusReport(services, monitoring, round(time.monotonic() - start, 3), note)


def _monitoring(inv: Inventory) -> dict[str, object]:
    from labctl import monitoring

    engine = monitoring.engine_status()
    if not engine.reachable:
        return {"enabled": True, "engine": engine.detail, "containers": []}
    return {"enabled": True, "engine": engine.detail,
            "containers": [c.as_dict() for c in monitoring.status(inv)]}

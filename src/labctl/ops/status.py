"""``labctl status``: the truth about each service, gathered concurrently.

Unit facts come from ``systemctl --user show``; probes run in parallel, each bounded by its
timeout, so one hung backend costs one timeout and not a sum of them.

External services are probed like the rest but have no unit of labctl's: their row says
"external" (with the state of the unit that runs them, when the inventory names it).
The gateway's remote endpoints are listed, and asked only with ``--endpoints``: a
reachability check costs a round trip to a provider, so it is never paid by default.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from labctl.host.proc import CommandFailed
from labctl.host.systemd import UnitFacts, UserManager, show_units
from labctl.inventory.schema import Endpoint, External, Inventory, LlamaCppPython, LlamaServer, Vllm, unit_name
from labctl.ops.probes import ProbeResult, probe_all
from labctl.render.gateway import base_url
from labctl.render.layout import Layout
from labctl.render.units import render_unit


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
    external: bool = False   # run by someone else: no labctl unit, never started or stopped by labctl
    drop_ins: list[str] = field(default_factory=list)  # the operator's overrides of the unit (DropInPaths)

    @property
    def healthy(self) -> bool:
        # An external service without a named unit has no state but its answer.
        running = self.active_state == "active" or (self.external and self.active_state == "external")
        return running and bool(self.probe.get("ok"))

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "healthy": self.healthy}


@dataclass(frozen=True)
class EndpointStatus:
    """A remote endpoint of the gateway. ``probe`` is None unless reachability was asked."""

    name: str
    provider: str
    api_base: str
    routes: list[str]
    probe: dict[str, object] | None

    @property
    def healthy(self) -> bool:
        return self.probe is None or bool(self.probe.get("ok"))

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "healthy": self.healthy}


@dataclass(frozen=True)
class StatusReport:
    services: list[ServiceStatus]
    monitoring: dict[str, object]
    seconds: float
    note: str = ""
    endpoints: list[EndpointStatus] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.services) and all(e.healthy for e in self.endpoints)

    def as_dict(self) -> dict[str, object]:
        return {"healthy": self.healthy, "seconds": self.seconds, "note": self.note,
                "services": [s.as_dict() for s in self.services], "monitoring": self.monitoring,
                "endpoints": [e.as_dict() for e in self.endpoints]}


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


def reach_endpoint(name: str, endpoint: Endpoint, timeout: float) -> ProbeResult:
    """Is the endpoint reachable: does its api_base give any HTTP answer within the timeout?
    The key is never sent: this asks only whether the provider is there (``gateway check``
    exercises the route itself, key and all, through the gateway)."""
    import httpx

    start = time.monotonic()

    def result(ok: bool, status: int | None, detail: str) -> ProbeResult:
        return ProbeResult(name, ok, "GET api_base", status, round((time.monotonic() - start) * 1000, 1), detail)

    try:
        resp = httpx.get(endpoint.api_base, timeout=timeout, trust_env=False)
    except httpx.TimeoutException:
        return result(False, None, f"no answer within {timeout:g}s")
    except httpx.ConnectError as exc:
        return result(False, None, f"unreachable: {str(exc)[:100] or 'connection refused'}")
    except httpx.HTTPError as exc:
        return result(False, None, f"{type(exc).__name__}: {str(exc)[:100]}")
    if resp.status_code >= 500:
        return result(False, resp.status_code, f"reachable, but answered HTTP {resp.status_code}")
    return result(True, resp.status_code, f"reachable (HTTP {resp.status_code})")


def _endpoint_rows(inv: Inventory, reach: dict[str, ProbeResult] | None) -> list[EndpointStatus]:
    rows = []
    for gw in inv.gateways().values():
        for name, endpoint in gw.endpoints.items():
            routes = [r.name for r in gw.routes if r.endpoint == name]
            probe = reach[name].as_dict() if reach is not None else None
            rows.append(EndpointStatus(name, endpoint.provider, endpoint.api_base, routes, probe))
    return rows


def _external_facts(externals: dict[str, External], user_env: dict[str, str]) -> dict[str, UnitFacts]:
    """The units that run external services, read from their own manager."""
    out: dict[str, UnitFacts] = {}
    for user in (False, True):
        units = sorted({e.unit for e in externals.values() if e.unit and (e.unit_scope == "user") == user})
        try:
            out.update({f"{'user' if user else 'system'}:{u}": f
                        for u, f in show_units(units, user=user, env=user_env).items()})
        except CommandFailed:
            pass  # shown as "unknown"
    return out


def gather(inv: Inventory, *, manager: UserManager | None = None, probe_timeout: float = 3.0,
           with_monitoring: bool = True, endpoints: bool = False) -> StatusReport:
    start = time.monotonic()
    manager = manager or UserManager()
    layout = Layout.of(inv)
    names = list(inv.enabled())
    managed = list(inv.managed())
    externals = inv.externals()
    every_endpoint = {n: e for gw in inv.gateways().values() for n, e in gw.endpoints.items()}
    with ThreadPoolExecutor(max_workers=4) as pool:
        facts_f = pool.submit(manager.show, [unit_name(n) for n in managed])
        ext_f = pool.submit(_external_facts, externals, manager.env)
        probes_f = pool.submit(probe_all, inv, names, timeout=probe_timeout)
        reach_f = {n: pool.submit(reach_endpoint, n, e, probe_timeout)
                   for n, e in every_endpoint.items()} if endpoints else None
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
                                                                   "SubState": "unknown"}) for n in managed}
        ext_facts = ext_f.result()
        probes: dict[str, ProbeResult] = probes_f.result()
        reach = {n: f.result() for n, f in reach_f.items()} if reach_f is not None else None
        metrics = {n: f.result() for n, f in metrics_f.items()}
        monitoring = mon_f.result() if mon_f else {"enabled": inv.monitoring.enabled}
    now_usec = time.monotonic() * 1e6
    services = []
    for name in names:
        svc = inv.services[name]
        if isinstance(svc, External):
            services.append(_external_row(inv, name, svc, ext_facts, probes[name], now_usec))
            continue
        f = facts[unit_name(name)]
        uptime = ((now_usec - f.active_enter_monotonic_usec) / 1e6
                  if f.active_state == "active" and f.active_enter_monotonic_usec else None)
        services.append(ServiceStatus(
            service=name, kind=svc.kind, unit=f.unit, active_state=f.active_state,  # type: ignore[attr-defined]
            sub_state=f.sub_state, enabled=f.unit_file_state or "-", n_restarts=f.n_restarts, result=f.result,
            start_limit_hit=f.result == "start-limit-hit", main_pid=f.main_pid, memory_bytes=f.memory_bytes,
            uptime_sec=round(uptime, 1) if uptime is not None else None, bind=inv.bind_of(svc), port=svc.port,
            probe=probes[name].as_dict(), model=_served_model(inv, svc), drift=_drift(inv, layout, name),
            metrics=metrics.get(name, {}), drop_ins=list(f.drop_in_paths),
        ))
    return StatusReport(services, monitoring, round(time.monotonic() - start, 3), note,
                        _endpoint_rows(inv, reach))


def _external_row(inv: Inventory, name: str, svc: External, ext_facts: dict[str, UnitFacts],
                  probe: ProbeResult, now_usec: float) -> ServiceStatus:
    f = ext_facts.get(f"{svc.unit_scope}:{svc.unit}") if svc.unit else None
    if svc.unit and f is None:
        f = UnitFacts.parse(svc.unit, {"LoadState": "unknown", "ActiveState": "unknown", "SubState": "unknown"})
    uptime = None
    if f is not None and f.active_state == "active" and f.active_enter_monotonic_usec:
        uptime = round((now_usec - f.active_enter_monotonic_usec) / 1e6, 1)
    return ServiceStatus(
        service=name, kind="external", unit=f"{svc.unit} ({svc.unit_scope})" if svc.unit else "-",
        active_state=f.active_state if f else "external", sub_state=f.sub_state if f else "-",
        enabled="external", n_restarts=f.n_restarts if f else 0, result=f.result if f else "",
        start_limit_hit=False, main_pid=f.main_pid if f else 0, memory_bytes=f.memory_bytes if f else None,
        uptime_sec=uptime, bind=inv.bind_of(svc), port=svc.port, probe=probe.as_dict(),
        model=", ".join(svc.models), drift="none", external=True,
    )


def endpoint_host(endpoint: EndpointStatus) -> str:
    return urlsplit(endpoint.api_base).netloc


def _monitoring(inv: Inventory) -> dict[str, object]:
    from labctl.ops import monitoring

    engine = monitoring.engine_status()
    if not engine.reachable:
        return {"enabled": True, "engine": engine.detail, "containers": []}
    return {"enabled": True, "engine": engine.detail,
            "containers": [c.as_dict() for c in monitoring.status(inv)]}

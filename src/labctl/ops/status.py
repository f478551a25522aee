"""``labctl status``: the truth about each service, gathered concurrently.

Unit facts come from ``systemctl --user show``; probes run in parallel, each bounded by its
timeout, so one hung backend costs one timeout and not a sum of them.

External services are probed like the rest but have no unit of labctl's: their row says
"external" (with the state of the unit that runs them, when the inventory names it).
The gateway's remote endpoints are listed, and asked only with ``--endpoints``: a
reachability check costs a round trip to a provider, so it is never paid by default.

What status needs from the inventory is a *plan* (:func:`plan_of`: each service's unit,
address, probe recipe, model link and the hash of its rendered unit), JSON with no secret
in it. :func:`gather_plan` runs a plan; ``labctl status`` keeps the last plan as a snapshot
in ``~/.cache/labctl/status/`` keyed by the inventory's bytes, labctl's own files and the
environment it read, so the next status of the same inventory runs without parsing it
(no pydantic, jinja2, yaml or typer: ``labctl.__main__``), while any change to any of them
makes a new plan from the inventory.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from labctl.host.systemd import UnitFacts, UserManager
    from labctl.inventory.schema import Endpoint, Inventory, Vllm
    from labctl.ops.probes import ProbeResult

# Imports here are the snapshot path's cost (labctl.__main__): the host and probe modules
# are imported by gather_plan, the systemctl call first, so its run overlaps the rest.


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


def _model(plan_svc: dict[str, Any]) -> str | None:
    """What a service serves: a llama service's model file (``current.gguf -> target``,
    read now), a static name for the others."""
    link = plan_svc.get("model_link")
    if link is None:
        return plan_svc.get("model")
    if os.path.islink(link):
        return f"{os.path.basename(link)} -> {os.readlink(link)}"
    return str(link)


def _drift(plan_svc: dict[str, Any]) -> str:
    try:
        with open(plan_svc["unit_path"], "rb") as fh:
            installed = fh.read()
    except FileNotFoundError:
        return "not installed"
    return "none" if hashlib.sha256(installed).hexdigest() == plan_svc["unit_sha256"] else "changed"


VLLM_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def _vllm_metrics(inv: Inventory, svc: Vllm, timeout: float) -> dict[str, float]:
    import httpx

    from labctl.host import secrets
    from labctl.ops.probes import plain_http_tls
    from labctl.render.gateway import base_url

    try:
        text = httpx.get(f"{base_url(inv, svc)}/metrics", timeout=timeout, trust_env=False,
                         verify=plain_http_tls(), headers=secrets.auth_headers(inv, svc)).text
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

    from labctl.ops.probes import ProbeResult, plain_http_tls

    start = time.monotonic()

    def result(ok: bool, status: int | None, detail: str) -> ProbeResult:
        return ProbeResult(name, ok, "GET api_base", status, round((time.monotonic() - start) * 1000, 1), detail)

    try:
        resp = httpx.get(endpoint.api_base, timeout=timeout, trust_env=False, verify=plain_http_tls())
    except httpx.TimeoutException:
        return result(False, None, f"no answer within {timeout:g}s")
    except httpx.ConnectError as exc:
        return result(False, None, f"unreachable: {str(exc)[:100] or 'connection refused'}")
    except httpx.HTTPError as exc:
        return result(False, None, f"{type(exc).__name__}: {str(exc)[:100]}")
    if resp.status_code >= 500:
        return result(False, resp.status_code, f"reachable, but answered HTTP {resp.status_code}")
    return result(True, resp.status_code, f"reachable (HTTP {resp.status_code})")


def _external_facts(externals: list[dict[str, Any]], user_env: dict[str, str]) -> dict[str, UnitFacts]:
    """The units that run external services, read from their own manager."""
    from labctl.host.proc import CommandFailed
    from labctl.host.systemd import show_units

    out: dict[str, UnitFacts] = {}
    for user in (False, True):
        units = sorted({e["ext_unit"] for e in externals if e["ext_unit"] and (e["ext_scope"] == "user") == user})
        try:
            out.update({f"{'user' if user else 'system'}:{u}": f
                        for u, f in show_units(units, user=user, env=user_env).items()})
        except CommandFailed:
            pass  # shown as "unknown"
    return out


def plan_of(inv: Inventory) -> dict[str, Any]:
    """Everything status needs from the inventory, as JSON (no secret values)."""
    from pathlib import Path

    from labctl.inventory.schema import (
        External,
        LlamaCppPython,
        LlamaServer,
        Vllm,
        unit_name,
    )
    from labctl.ops.probes import spec_of
    from labctl.render.layout import Layout
    from labctl.render.units import render_unit

    layout = Layout.of(inv)
    services = []
    for name, svc in inv.enabled().items():
        row: dict[str, Any] = {"name": name, "bind": inv.bind_of(svc), "port": svc.port,  # type: ignore[attr-defined]
                               "probe": spec_of(inv, name).as_dict()}
        if isinstance(svc, External):
            row.update(external=True, kind="external", ext_unit=svc.unit or None, ext_scope=svc.unit_scope,
                       model=", ".join(svc.models))
        else:
            text = render_unit(inv, name, svc, layout)
            row.update(external=False, kind=svc.kind, unit=unit_name(name),
                       unit_path=str(Path(layout.config_root) / layout.unit(name)),
                       unit_sha256=hashlib.sha256(text.encode()).hexdigest(),
                       vllm=isinstance(svc, Vllm))
            if isinstance(svc, (LlamaServer, LlamaCppPython)):
                row["model_link"] = str(inv.model_path(svc))
            else:
                row["model"] = svc.model if isinstance(svc, Vllm) else None
        services.append(row)
    endpoints = [{"name": name, "provider": endpoint.provider, "api_base": endpoint.api_base,
                  "routes": [r.name for r in gw.routes if r.endpoint == name]}
                 for gw in inv.gateways().values() for name, endpoint in gw.endpoints.items()]
    return {"services": services, "managed": [unit_name(n) for n in inv.managed()], "endpoints": endpoints,
            "monitoring": inv.monitoring.enabled}


def gather(inv: Inventory, *, manager: UserManager | None = None, probe_timeout: float = 3.0,
           with_monitoring: bool = True, endpoints: bool = False, plan: dict[str, Any] | None = None) -> StatusReport:
    """The status of ``inv``'s services (``plan``: :func:`plan_of` ``(inv)``, when the caller
    has it already): the plan's parts plus what only the inventory can do (vLLM's metrics,
    the monitoring stack, a remote endpoint's reachability)."""
    plan = plan if plan is not None else plan_of(inv)
    every_endpoint = {n: e for gw in inv.gateways().values() for n, e in gw.endpoints.items()}
    jobs: dict[str, Callable[[], object]] = {}
    for n, s in inv.enabled().items():
        if getattr(s, "kind", "") == "vllm":
            jobs[f"metrics:{n}"] = lambda s=s: _vllm_metrics(inv, s, probe_timeout)  # type: ignore[misc]
    if endpoints:
        for n, e in every_endpoint.items():
            jobs[f"reach:{n}"] = lambda n=n, e=e: reach_endpoint(n, e, probe_timeout)  # type: ignore[misc]
    if with_monitoring and inv.monitoring.enabled:
        jobs["monitoring"] = lambda: _monitoring(inv)
    return gather_plan(plan, manager=manager, probe_timeout=probe_timeout, jobs=jobs)


def _in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``fn`` in a thread now; the returned call waits for its result (or raises its
    exception). Threads, not concurrent.futures: that import costs the snapshot path."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result() -> Any:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]

    return result


def _unit_facts(manager: UserManager | None, units: list[str],
                externals: list[dict[str, Any]]) -> tuple[dict[str, UnitFacts], str, dict[str, UnitFacts]]:
    """(facts of ``units`` from the user manager, a note when it did not answer, the facts
    of the units that run external services, from their own managers)."""
    from labctl.host.proc import CommandFailed
    from labctl.host.systemd import UnitFacts, UserManager

    manager = manager or UserManager()
    ext = _in_thread(lambda: _external_facts(externals, manager.env)) if externals else dict
    try:
        return manager.show(units), "", ext()
    except CommandFailed as exc:
        # No user manager here (or it does not answer): report what the probes see.
        unknown = {"LoadState": "unknown", "ActiveState": "unknown", "SubState": "unknown"}
        return {u: UnitFacts.parse(u, unknown) for u in units}, f"unit states unavailable: {exc}", ext()


def gather_plan(plan: dict[str, Any], *, manager: UserManager | None = None, probe_timeout: float = 3.0,
                jobs: dict[str, Callable[[], object]] | None = None) -> StatusReport:
    """Run a plan: ``systemctl --user show`` of the managed units, the external units'
    managers, every probe and ``jobs`` at once; then one row per service."""
    start = time.monotonic()
    rows = plan["services"]
    externals = [r for r in rows if r["external"]]
    facts_r = _in_thread(lambda: _unit_facts(manager, plan["managed"], externals))  # first: systemctl runs meanwhile
    from labctl.ops.probes import ProbeSpec, run_all

    specs = [ProbeSpec.from_dict(r["probe"]) for r in rows]
    probes_r = _in_thread(lambda: run_all(specs, timeout=probe_timeout))
    job_r = {k: _in_thread(fn) for k, fn in (jobs or {}).items()}
    facts, note, ext_facts = facts_r()
    probes: dict[str, ProbeResult] = probes_r()
    done = {k: r() for k, r in job_r.items()}
    now_usec = time.monotonic() * 1e6
    services = []
    for row in rows:
        name = row["name"]
        if row["external"]:
            services.append(_external_row(row, ext_facts, probes[name], now_usec))
            continue
        f = facts[row["unit"]]
        uptime = ((now_usec - f.active_enter_monotonic_usec) / 1e6
                  if f.active_state == "active" and f.active_enter_monotonic_usec else None)
        services.append(ServiceStatus(
            service=name, kind=row["kind"], unit=f.unit, active_state=f.active_state,
            sub_state=f.sub_state, enabled=f.unit_file_state or "-", n_restarts=f.n_restarts, result=f.result,
            start_limit_hit=f.result == "start-limit-hit", main_pid=f.main_pid, memory_bytes=f.memory_bytes,
            uptime_sec=round(uptime, 1) if uptime is not None else None, bind=row["bind"], port=row["port"],
            probe=probes[name].as_dict(), model=_model(row), drift=_drift(row),
            metrics=done.get(f"metrics:{name}", {}), drop_ins=list(f.drop_in_paths),  # type: ignore[arg-type]
        ))
    endpoint_rows = [EndpointStatus(e["name"], e["provider"], e["api_base"], e["routes"],
                                    done[f"reach:{e['name']}"].as_dict() if f"reach:{e['name']}" in done else None)
                     for e in plan["endpoints"]]
    monitoring = done.get("monitoring") or {"enabled": plan["monitoring"]}
    return StatusReport(services, monitoring, round(time.monotonic() - start, 3), note,  # type: ignore[arg-type]
                        endpoint_rows)


def _external_row(row: dict[str, Any], ext_facts: dict[str, UnitFacts], probe: ProbeResult,
                  now_usec: float) -> ServiceStatus:
    from labctl.host.systemd import UnitFacts

    unit, scope = row["ext_unit"], row["ext_scope"]
    f = ext_facts.get(f"{scope}:{unit}") if unit else None
    if unit and f is None:
        f = UnitFacts.parse(unit, {"LoadState": "unknown", "ActiveState": "unknown", "SubState": "unknown"})
    uptime = None
    if f is not None and f.active_state == "active" and f.active_enter_monotonic_usec:
        uptime = round((now_usec - f.active_enter_monotonic_usec) / 1e6, 1)
    return ServiceStatus(
        service=row["name"], kind="external", unit=f"{unit} ({scope})" if unit else "-",
        active_state=f.active_state if f else "external", sub_state=f.sub_state if f else "-",
        enabled="external", n_restarts=f.n_restarts if f else 0, result=f.result if f else "",
        start_limit_hit=False, main_pid=f.main_pid if f else 0, memory_bytes=f.memory_bytes if f else None,
        uptime_sec=uptime, bind=row["bind"], port=row["port"], probe=probe.as_dict(),
        model=row.get("model"), drift="none", external=True,
    )


def endpoint_host(endpoint: EndpointStatus) -> str:
    from urllib.parse import urlsplit

    return urlsplit(endpoint.api_base).netloc


def _monitoring(inv: Inventory) -> dict[str, object]:
    from labctl.ops import monitoring

    engine = monitoring.engine_status()
    if not engine.reachable:
        return {"enabled": True, "engine": engine.detail, "containers": []}
    return {"enabled": True, "engine": engine.detail,
            "containers": [c.as_dict() for c in monitoring.status(inv)]}


# --- the snapshot: the last plan, for a status that skips the inventory ----------------------

SNAPSHOT_DIR = "~/.cache/labctl/status"
_KEY_ENV = ("HOME", "USER", "LOGNAME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR")


def _code_stamp() -> str:
    """labctl's own files as they are now (name, size, mtime): a new version, an edited
    checkout or template makes another stamp."""
    import labctl

    package = os.path.dirname(os.path.realpath(labctl.__file__))
    checkout = os.path.dirname(os.path.dirname(package))
    roots = [package] + [os.path.join(checkout, d) for d in ("units", "compose")]  # a checkout's templates
    digest = hashlib.sha256(labctl.__version__.encode())
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for fname in sorted(filenames):
                if fname.endswith((".pyc", ".pyo")):
                    continue
                st = os.stat(os.path.join(dirpath, fname))
                digest.update(f"{dirpath}/{fname}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def snapshot_key(inventory: Path | str) -> dict[str, Any]:
    """What a plan was made from: the inventory's bytes, labctl's files, the environment
    that loading and rendering read."""
    with open(inventory, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    return {"inventory": os.path.realpath(inventory), "sha256": digest,
            "code": _code_stamp(), "uid": os.getuid(),
            "env": {k: v for k, v in sorted(os.environ.items())
                    if (k in _KEY_ENV or k.startswith("LABCTL_")) and k != "LABCTL_NO_SNAPSHOT"}}


def _snapshot_path(inventory: Path | str) -> str:
    name = hashlib.sha256(os.path.realpath(inventory).encode()).hexdigest()[:24]
    return os.path.join(os.path.expanduser(SNAPSHOT_DIR), f"{name}.json")


def snapshot_fits(plan: dict[str, Any]) -> bool:
    """Whether a plan runs whole without the inventory: no vLLM (its metrics), no monitoring."""
    return not plan["monitoring"] and not any(r.get("vllm") for r in plan["services"])


def save_snapshot(inventory: Path | str, plan: dict[str, Any]) -> None:
    """Keep ``plan`` for the next status of this inventory (best effort: a cache)."""
    from labctl import fsio

    try:
        text = json.dumps({"key": snapshot_key(inventory), "plan": plan}, sort_keys=True)
        path = _snapshot_path(inventory)
        try:
            with open(path, encoding="utf-8") as fh:
                if fh.read() == text:
                    return
        except (OSError, UnicodeError):
            pass
        from pathlib import Path

        fsio.ensure_dir(Path(path).parent, 0o700)
        fsio.atomic_write(Path(path), text, mode=0o600)
    except (OSError, ValueError):
        pass


def load_snapshot(inventory: Path | str) -> dict[str, Any] | None:
    """The plan kept for ``inventory`` if it was made from exactly what is here now."""
    try:
        with open(_snapshot_path(inventory), encoding="utf-8") as fh:
            doc = json.loads(fh.read())
        if doc.get("key") != snapshot_key(inventory) or not snapshot_fits(doc["plan"]):
            return None
        return doc["plan"]  # type: ignore[no-any-return]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # UnicodeError is a ValueError
        return None

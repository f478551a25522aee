"""``labctl status``: the truth about each service, gathered concurrently.

Unit facts come from ``systemctl --user show`` (labctl.host.systemd, through the one runner
of commands), which runs while the probes do; probes run in parallel, each bounded by its
timeout, so one hung backend costs one timeout and not a sum of them.

External services are probed like the rest but have no unit of labctl's: their row says
"external" (with the state of the unit that runs them, when the inventory names it).
The gateway's remote endpoints are listed, and asked only with ``--endpoints``: a
reachability check costs a round trip to a provider, so it is never paid by default.

What status needs from the inventory is a *plan* (:func:`status_inputs`: each service's unit,
address, probe recipe, model link and the hash of its rendered unit): dicts, lists,
strings and numbers, with no secret in it. :func:`gather_plan` runs a plan; ``labctl status``
keeps the last plan as a snapshot in ``~/.cache/labctl/status/`` keyed by the inventory's
bytes, labctl's own files and the environment it read, so the next status of the same
inventory runs without parsing it (no pydantic, jinja2, yaml or typer: ``labctl.__main__``),
while any change to any of them makes a new plan from the inventory.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING, Any

from labctl.host.proc import CommandFailed
from labctl.host.systemd import UnitFacts, UserManager
from labctl.ops.probes import ProbeResult, ProbeSpec, in_thread, start_all
from labctl.records import Record
from labctl.unitcmd import unit_name_problem

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from labctl.inventory.schema import Inventory
    from labctl.kinds.litellm import Endpoint

# `labctl status` from its snapshot (labctl.__main__) imports this module: the inventory's
# modules, httpx and rich are imported where they are used, on the full path
# (tests/unit/test_lazy_imports.py).


class ServiceStatus(Record):
    __slots__ = ("service", "kind", "unit", "active_state", "sub_state", "enabled", "n_restarts", "result",
                 "start_limit_hit", "main_pid", "memory_bytes", "uptime_sec", "bind", "port", "probe", "model",
                 "drift", "metrics", "external", "drop_ins")
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
    metrics: dict[str, float]
    external: bool           # run by someone else: no labctl unit, never started or stopped by labctl
    drop_ins: list[str]      # the operator's overrides of the unit (DropInPaths)
    _defaults = {"external": False}
    _factories = {"metrics": dict, "drop_ins": list}

    @property
    def healthy(self) -> bool:
        # An external service without a named unit has no state but its answer.
        running = self.active_state == "active" or (self.external and self.active_state == "external")
        return running and bool(self.probe.get("ok"))

    def as_dict(self) -> dict[str, object]:
        return {**self.fields(), "healthy": self.healthy}


class EndpointStatus(Record):
    """A remote endpoint of the gateway. ``probe`` is None unless reachability was asked."""

    __slots__ = ("name", "provider", "api_base", "routes", "probe")
    name: str
    provider: str
    api_base: str
    routes: list[str]
    probe: dict[str, object] | None

    @property
    def healthy(self) -> bool:
        return self.probe is None or bool(self.probe.get("ok"))

    def as_dict(self) -> dict[str, object]:
        return {**self.fields(), "healthy": self.healthy}


class StatusReport(Record):
    __slots__ = ("services", "monitoring", "seconds", "note", "endpoints")
    services: list[ServiceStatus]
    monitoring: dict[str, object]
    seconds: float
    note: str
    endpoints: list[EndpointStatus]
    _defaults = {"note": ""}
    _factories = {"endpoints": list}

    @property
    def healthy(self) -> bool:
        return all(s.healthy for s in self.services) and all(e.healthy for e in self.endpoints)

    def as_dict(self) -> dict[str, object]:
        return {"healthy": self.healthy, "seconds": self.seconds, "note": self.note,
                "services": [s.as_dict() for s in self.services], "monitoring": self.monitoring,
                "endpoints": [e.as_dict() for e in self.endpoints]}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
    return "none" if sha256_hex(installed) == plan_svc["unit_sha256"] else "changed"


def _metrics(inv: Inventory, svc: Any, metrics: dict[str, Any], timeout: float) -> dict[str, float]:
    """The gauges a kind shows in status (``{"path": "/metrics", "gauges": [...]}``), summed
    over their series, read from the service's metrics endpoint with its key."""
    import httpx

    from labctl.host import secrets
    from labctl.kinds import kind_of
    from labctl.ops.probes import plain_http_tls

    try:
        text = httpx.get(f"{kind_of(svc).base_url(inv, svc)}{metrics['path']}", timeout=timeout, trust_env=False,
                         verify=plain_http_tls(), headers=secrets.auth_headers(inv, svc)).text
    except httpx.HTTPError:
        return {}
    from labctl import promtext

    samples = promtext.parse(text, metrics["gauges"])
    return {gauge: value for gauge in metrics["gauges"] if (value := promtext.total(samples, gauge)) is not None}


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


def _external_facts(externals: list[dict[str, Any]], env: dict[str, str]) -> dict[str, UnitFacts]:
    """The units that run external services, read from their own manager."""
    from labctl.host.systemd import show_units

    out: dict[str, UnitFacts] = {}
    for user in (False, True):
        units = sorted({e["ext_unit"] for e in externals if e["ext_unit"] and (e["ext_scope"] == "user") == user})
        try:
            out.update({f"{'user' if user else 'system'}:{u}": f
                        for u, f in show_units(units, user=user, env=env).items()})
        except CommandFailed:
            pass  # shown as "unknown"
    return out


def status_inputs(inv: Inventory) -> dict[str, Any]:
    """Everything status needs from the inventory, as plain data (no secret values): per
    service its address, probe and what its kind shows (labctl.kinds: status_row), and the
    unit it runs as or, for a service labctl does not run, the unit someone else runs it as."""
    from pathlib import Path

    from labctl.inventory.layout import Layout
    from labctl.inventory.schema import unit_name
    from labctl.kinds import kind_of
    from labctl.ops.probes import spec_of
    from labctl.render.units import render_unit

    layout = Layout.of(inv)
    services = []
    for name, svc in inv.enabled().items():
        kind = kind_of(svc)
        row: dict[str, Any] = {"name": name, "bind": inv.bind_of(svc), "port": svc.port,
                               "probe": spec_of(inv, name).as_dict()}
        shown = kind.status_row(inv, name, svc)
        if not kind.managed:
            ext = kind.unit(name, svc)
            row.update(external=True, kind=kind.name, ext_unit=ext.name if ext else None,
                       ext_scope="user" if ext and ext.user else "system", model=shown.get("model") or "")
        else:
            text = render_unit(inv, name, svc, layout)  # type: ignore[arg-type]
            row.update(external=False, kind=kind.name, unit=unit_name(name),
                       unit_path=str(Path(layout.config_root) / layout.unit(name)),
                       unit_sha256=sha256_hex(text.encode()), vllm="metrics" in shown)
            if "model_link" in shown:
                row["model_link"] = shown["model_link"]
            else:
                row["model"] = shown.get("model")
        services.append(row)
    endpoints = [{"name": name, "provider": endpoint.provider, "api_base": endpoint.api_base,
                  "routes": [r.name for r in gw.routes if r.endpoint == name]}
                 for gw in inv.gateways().values() for name, endpoint in gw.endpoints.items()]
    return {"services": services, "managed": [unit_name(n) for n in inv.managed()], "endpoints": endpoints,
            "monitoring": inv.monitoring.enabled}


def gather(inv: Inventory, *, manager: UserManager | None = None, probe_timeout: float = 3.0,
           with_monitoring: bool = True, endpoints: bool = False, plan: dict[str, Any] | None = None) -> StatusReport:
    """The status of ``inv``'s services (``plan``: :func:`status_inputs` ``(inv)``, when the caller
    has it already): the plan's parts plus what only the inventory can do (vLLM's metrics,
    the monitoring stack, a remote endpoint's reachability)."""
    from labctl.kinds import kind_of

    plan = plan if plan is not None else status_inputs(inv)
    every_endpoint = {n: e for gw in inv.gateways().values() for n, e in gw.endpoints.items()}
    jobs: dict[str, Callable[[], object]] = {}
    for n, s in inv.enabled().items():
        metrics = kind_of(s).status_row(inv, n, s).get("metrics")
        if metrics:  # gauges its kind shows from its /metrics (vLLM's queue and KV cache)
            jobs[f"metrics:{n}"] = lambda s=s, m=metrics: _metrics(inv, s, m, probe_timeout)  # type: ignore[misc]
    if endpoints:
        for n, e in every_endpoint.items():
            jobs[f"reach:{n}"] = lambda n=n, e=e: reach_endpoint(n, e, probe_timeout)  # type: ignore[misc]
    if with_monitoring and inv.monitoring.enabled:
        jobs["monitoring"] = lambda: _monitoring(inv)
    return gather_plan(plan, manager=manager, probe_timeout=probe_timeout, jobs=jobs)


# --- the unit facts: one `systemctl --user show` -------------------------------------------

_UNKNOWN = {"LoadState": "unknown", "ActiveState": "unknown", "SubState": "unknown"}


def _show(manager: UserManager, units: list[str]) -> tuple[dict[str, UnitFacts], str]:
    """The managed units' facts (one ``systemctl --user show``), or, when the manager does
    not answer (none here, no bus, a timeout), each unit unknown and a note saying why."""
    try:
        return manager.show(units), ""
    except CommandFailed as exc:
        return {u: UnitFacts.parse(u, _UNKNOWN) for u in units}, f"unit states unavailable: {exc}"


def gather_plan(plan: dict[str, Any], *, manager: UserManager | None = None, probe_timeout: float = 3.0,
                jobs: dict[str, Callable[[], object]] | None = None) -> StatusReport:
    """Run a plan: ``systemctl --user show`` of the managed units (``manager``'s, when given),
    the external units' managers, every probe and ``jobs`` at once; then one row per service."""
    start = time.monotonic()
    manager = manager if manager is not None else UserManager()
    units = plan["managed"]
    # systemctl first: it runs while the probes do.
    own = in_thread(lambda: _show(manager, units))
    rows = plan["services"]
    externals = [r for r in rows if r["external"]]
    ext = in_thread(lambda: _external_facts(externals, manager.env)) if externals else dict
    probes_r = start_all([ProbeSpec.from_dict(r["probe"]) for r in rows], timeout=probe_timeout)
    job_r = {k: in_thread(fn) for k, fn in (jobs or {}).items()}
    facts, note = own()
    ext_facts = ext()
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
            metrics=done.get(f"metrics:{name}", {}), drop_ins=list(f.drop_in_paths),
        ))
    endpoint_rows = [EndpointStatus(e["name"], e["provider"], e["api_base"], e["routes"],
                                    done[f"reach:{e['name']}"].as_dict() if f"reach:{e['name']}" in done else None)
                     for e in plan["endpoints"]]
    monitoring = done.get("monitoring") or {"enabled": plan["monitoring"]}
    return StatusReport(services, monitoring, round(time.monotonic() - start, 3), note, endpoint_rows)


def _external_row(row: dict[str, Any], ext_facts: dict[str, UnitFacts], probe: ProbeResult,
                  now_usec: float) -> ServiceStatus:
    unit, scope = row["ext_unit"], row["ext_scope"]
    f = ext_facts.get(f"{scope}:{unit}") if unit else None
    if unit and f is None:
        f = UnitFacts.parse(unit, _UNKNOWN)
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
# The file: a first line (this, then the SHA-256 of the rest), then the document in marshal's
# format 2 (a builtin module, where json would cost the snapshot path its import; format 2
# has no back-references, so the same document gives the same bytes). It is the user's own
# 0600 cache, and still never trusted: a file of another owner or writable by others is not
# read, a damaged one (any byte) fails its checksum, and a document of any other shape than
# a plan's (_plan_ok) is not used.
SNAPSHOT_MAGIC = b"labctl status snapshot 2 "
_MARSHAL_FORMAT = 2
_KEY_ENV = ("HOME", "USER", "LOGNAME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR")


def _code_stamp() -> str:
    """labctl's own files as they are now (name, size, mtime): a new version, an edited
    checkout or template makes another stamp."""
    import labctl

    package = os.path.dirname(os.path.realpath(labctl.__file__))
    checkout = os.path.dirname(os.path.dirname(package))
    roots = [package] + [os.path.join(checkout, d) for d in ("units", "compose")]  # a checkout's templates
    parts = [labctl.__version__, "\n"]
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for fname in sorted(filenames):
                if fname.endswith((".pyc", ".pyo")):
                    continue
                st = os.stat(os.path.join(dirpath, fname))
                parts.append(f"{dirpath}/{fname}\0{st.st_size}\0{st.st_mtime_ns}\n")
    return sha256_hex("".join(parts).encode())


def snapshot_key(inventory: Path | str) -> dict[str, Any]:
    """What a plan was made from: the inventory's bytes, labctl's files, the environment
    that loading and rendering read."""
    with open(inventory, "rb") as fh:
        digest = sha256_hex(fh.read())
    return {"inventory": os.path.realpath(inventory), "sha256": digest,
            "code": _code_stamp(), "uid": os.getuid(),
            "env": {k: v for k, v in sorted(os.environ.items())
                    if (k in _KEY_ENV or k.startswith("LABCTL_")) and k != "LABCTL_NO_SNAPSHOT"}}


def _snapshot_path(inventory: Path | str, suffix: str = ".snapshot") -> str:
    name = sha256_hex(os.path.realpath(inventory).encode())[:24]
    return os.path.join(os.path.expanduser(SNAPSHOT_DIR), f"{name}{suffix}")


def snapshot_fits(plan: dict[str, Any]) -> bool:
    """Whether a plan runs whole without the inventory: no vLLM (its metrics), no monitoring."""
    return not plan["monitoring"] and not any(r.get("vllm") for r in plan["services"])


def save_snapshot(inventory: Path | str, plan: dict[str, Any]) -> None:
    """Keep ``plan`` for the next status of this inventory (best effort: a cache)."""
    import marshal

    from labctl import fsio

    try:
        payload = marshal.dumps({"key": snapshot_key(inventory), "plan": plan}, _MARSHAL_FORMAT)
        data = SNAPSHOT_MAGIC + sha256_hex(payload).encode() + b"\n" + payload
        path = _snapshot_path(inventory)
        try:
            with open(path, "rb") as fh:
                if fh.read() == data:
                    return
        except OSError:
            pass
        from pathlib import Path

        fsio.ensure_dir(Path(path).parent, 0o700)
        fsio.atomic_write(Path(path), data, mode=0o600)
        try:
            os.unlink(_snapshot_path(inventory, ".json"))  # the JSON snapshot of labctl 3d9305c
        except OSError:
            pass
    except (OSError, ValueError):
        pass


def _plain_data(value: object, depth: int = 0) -> bool:
    """Only what a plan is made of: dicts with str keys, lists, str, int, float, bool, None
    (marshal can also give bytes, tuples, sets and code objects)."""
    if value is None or type(value) in (str, int, float, bool):
        return True
    if depth > 8:
        return False
    if type(value) is list:
        return all(_plain_data(v, depth + 1) for v in value)  # type: ignore[attr-defined]
    if type(value) is dict:
        return all(type(k) is str and _plain_data(v, depth + 1) for k, v in value.items())  # type: ignore[attr-defined]
    return False


_NONE = type(None)
_ROW = {"name": str, "bind": str, "port": int, "probe": dict, "external": bool}
_MANAGED = {"kind": str, "unit": str, "unit_path": str, "unit_sha256": str, "vllm": bool}
_EXTERNAL = {"kind": str, "ext_unit": (str, _NONE), "ext_scope": str, "model": str}
_PROBE = {"service": str, "recipe": str, "url": str, "host": str, "port": int, "models": list, "key": (dict, _NONE)}
_SECRET = {"env_file": (str, _NONE), "variable": str}
_ENDPOINT = {"name": str, "provider": str, "api_base": str, "routes": list}


def _has(doc: object, spec: dict[str, Any], exact: bool = False) -> bool:
    return (isinstance(doc, dict) and all(k in doc and isinstance(doc[k], t) for k, t in spec.items())
            and (not exact or len(doc) == len(spec)))


def _strs(value: list[Any]) -> bool:
    return all(isinstance(v, str) for v in value)


def _plan_ok(plan: object) -> bool:
    """Whether ``plan`` has the shape status_inputs gives, so that gather_plan runs it whole."""
    if not _has(plan, {"services": list, "managed": list, "endpoints": list, "monitoring": bool}):
        return False
    assert isinstance(plan, dict)
    managed = plan["managed"]
    if not _strs(managed) or any(unit_name_problem(u) for u in managed):  # systemctl's operands
        return False
    for row in plan["services"]:
        if not _has(row, _ROW) or not _has(row["probe"], _PROBE, exact=True):
            return False
        probe = row["probe"]
        if probe["service"] != row["name"] or not _strs(probe["models"]):
            return False
        if probe["key"] is not None and not _has(probe["key"], _SECRET, exact=True):
            return False
        if row["external"]:
            if not _has(row, _EXTERNAL) or (row["ext_unit"] is not None and unit_name_problem(row["ext_unit"])):
                return False
        elif not (_has(row, _MANAGED) and row["unit"] in managed
                  and (_has(row, {"model_link": str}) or _has(row, {"model": (str, _NONE)}))):
            return False
    return all(_has(e, _ENDPOINT) and _strs(e["routes"]) for e in plan["endpoints"])


def load_snapshot(inventory: Path | str) -> dict[str, Any] | None:
    """The plan kept for ``inventory`` if it was made from exactly what is here now, by this
    user, and has the shape of a plan; else None (the full CLI makes a new one)."""
    kept = read_snapshot(inventory)
    try:
        return kept[1] if kept is not None and kept[0] == snapshot_key(inventory) else None
    except OSError:  # the inventory went away
        return None


def status_from_snapshot(inventory: Path | str, *, probe_timeout: float = 3.0) -> StatusReport | None:
    """``labctl status`` from the snapshot of ``inventory``, or None when there is none fit to
    use (labctl.__main__ then runs the full CLI): the file this user's, intact, of a plan's
    shape, and made from what is here now (labctl's files, the inventory's bytes, the
    environment). Nothing is started before it is found so: the probes send keys."""
    plan = load_snapshot(inventory)
    return None if plan is None else gather_plan(plan, probe_timeout=probe_timeout)


def read_snapshot(inventory: Path | str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(key, plan) of the snapshot kept for ``inventory`` if the file is this user's, not
    writable by others, intact, and holds a plan's shape; None otherwise. Whether the plan
    is still fresh is the caller's check (its key against snapshot_key)."""
    import marshal

    try:
        with open(_snapshot_path(inventory), "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return None
            data = fh.read()
        head, _, payload = data.partition(b"\n")
        if head != SNAPSHOT_MAGIC + sha256_hex(payload).encode():
            return None
        doc = marshal.loads(payload)
        if not _plain_data(doc) or not isinstance(doc, dict) or not isinstance(doc.get("key"), dict):
            return None
        plan = doc.get("plan")
        if not _plan_ok(plan) or not snapshot_fits(plan):  # type: ignore[arg-type]
            return None
        return doc["key"], plan  # type: ignore[return-value]
    except (OSError, ValueError, EOFError, TypeError, KeyError, AttributeError):  # UnicodeError is a ValueError
        return None

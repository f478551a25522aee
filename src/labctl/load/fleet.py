"""One inventory for several hosts: which host runs what, and each host's own view of it.

A fleet inventory (``fleet:`` and ``hosts:``) is checked in two passes: the fleet's own rules
here (every service on exactly one host, addresses inside ``fleet.network``, what may cross
from one host to another), then every single-host check (labctl.load.checks) on each
host's **view**: the single-host inventory that host will run. A view keeps the operator's
service names and fields, so an error found in it points at the operator's own line.
``labctl up`` ships each view as YAML (the host's *slice*) to its host, where the same loader
reads it again: a slice is an ordinary inventory.

A host's view:

- ``host``: the fleet's ``host`` section with the host's own ``user``, ``home``, ``gpu`` and
  ``gpu_memory_gib``; ``private_network`` is ``fleet.network``;
- ``services``: the ones the host lists. A backend that a gateway on another host routes to
  (a *cross-host* backend) binds to its host's address and requires a key: ``api_key``
  references ``~/.config/labctl/secrets/api-keys/NAME.env``, which the controller generates
  once per backend and copies (0600) to the backend's host and to each gateway's host;
- a gateway's route to a backend on another host: that backend appears in the gateway's view
  as ``kind: external`` at the other host's address, with the same key reference;
- ``models``: the declared models, on hosts that run a llama server;
- ``monitoring``: on the monitoring host only (``fleet.monitoring_host``, else the one
  gateway's host); it scrapes what runs on that host.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, field

from labctl import handover
from labctl.errors import InputError
from labctl.fields import SecretRef
from labctl.inventory.schema import FleetHost, Inventory
from labctl.kinds import kind_of
from labctl.kinds.base import ServiceBase
from labctl.kinds.external import External
from labctl.inventory.yamlsrc import Source

# Where a cross-host backend's key lives on every host that holds it (the backend's and each
# gateway's), and on the controller under its fleet state dir.
KEY_DIR = "~/.config/labctl/secrets/api-keys"


def key_variable(service: str) -> str:
    return "LABCTL_API_KEY_" + service.upper().replace("-", "_")


def key_ref(service: str) -> SecretRef:
    """The reference a cross-host backend's key has in every slice: shipped, never generated
    on the host (a missing file there is an error, not a new key the gateway lacks)."""
    return SecretRef(env_file=f"{KEY_DIR}/{service}.env", var=key_variable(service))


@dataclass(frozen=True)
class Crossing:
    """A gateway on ``gateway_host`` routes to ``backend`` on ``backend_host``."""

    gateway: str
    gateway_host: str
    backend: str
    backend_host: str
    route: int


@dataclass
class FleetSplit:
    """Who runs where, what crosses hosts, and each host's view."""

    host_of: dict[str, str]
    crossings: list[Crossing]
    # The hosts that run a gateway: `up` applies them after all the others.
    gateway_hosts: list[str] = field(default_factory=list)
    views: dict[str, Inventory] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def keyed(self) -> list[str]:
        """The backends that need a key: reached from another host."""
        return sorted({c.backend for c in self.crossings})

    def key_holders(self, backend: str) -> list[str]:
        """The hosts that hold ``backend``'s key: its own and every gateway's that routes to it."""
        hosts = {self.host_of[backend]} | {c.gateway_host for c in self.crossings if c.backend == backend}
        return sorted(hosts)

    def order(self) -> list[list[str]]:
        """Hosts in the order ``up`` applies them: those without a gateway first (in
        parallel), then those with one."""
        hosts = sorted(set(self.host_of.values()) | set(self.views))
        first = [h for h in hosts if h not in self.gateway_hosts]
        return [group for group in (first, list(self.gateway_hosts)) if group]


def monitoring_host(inv: Inventory, host_of: dict[str, str]) -> str | None:
    assert inv.fleet is not None
    if inv.fleet.monitoring_host is not None:
        return inv.fleet.monitoring_host
    gateway_hosts = sorted({host_of[n] for n in inv.gateways() if n in host_of})
    return gateway_hosts[0] if len(gateway_hosts) == 1 else None


def check(inv: Inventory, src: Source, *, check_files: bool = False) -> tuple[list[InputError], FleetSplit | None]:
    """The fleet's rules, then the single-host checks on every host's view. Returns the
    errors (all of them) and, when there are none of the fleet's own, the plan."""
    from labctl.load import checks

    errors = list(_fleet_rules(inv, src))
    if errors:
        return errors, None
    plan = split_fleet(inv)
    seen: set[tuple[str, str]] = set()
    for host in sorted(plan.views):
        for error in checks.cross_check(plan.views[host], src, check_files=False):
            key = (error.path, error.message)
            if key not in seen:
                seen.add(key)
                errors.append(error)
    if check_files:
        errors.extend(_controller_files(inv, src))
    return errors, plan


def _fleet_rules(inv: Inventory, src: Source) -> Iterator[InputError]:
    if inv.fleet is None or not inv.hosts:
        if inv.hosts:
            yield src.error(("hosts",), "hosts need a fleet section (at least fleet.network, the hosts' "
                                        "private network)")
        elif inv.fleet is not None:
            yield src.error(("fleet",), "a fleet section needs hosts (NAME: {address, services})")
        return
    fleet = inv.fleet
    network = ipaddress.ip_network(fleet.network)
    addresses: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name, host in inv.hosts.items():
        loc = ("hosts", name)
        ip = ipaddress.ip_address(host.address)
        if ip not in network or ip in (network.network_address, network.broadcast_address):
            yield src.error(loc + ("address",), f"{host.address} is not a host address in fleet.network "
                                                f"{fleet.network}")
        if host.address in addresses:
            yield src.error(loc + ("address",), f"{host.address} is already the address of hosts.{addresses[host.address]}")
        addresses.setdefault(host.address, name)
        for i, service in enumerate(host.services):
            if service not in inv.services:
                yield src.error(loc + ("services", i), f"no service named {service!r}")
            elif service in owner:
                yield src.error(loc + ("services", i), f"{service} already runs on hosts.{owner[service]}; "
                                                       "a service runs on exactly one host")
            else:
                owner[service] = name
    for service in inv.services:
        if service not in owner:
            yield src.error(("services", service), f"no host runs {service}: list it under one host's services")
    if fleet.monitoring_host is not None and fleet.monitoring_host not in inv.hosts:
        yield src.error(("fleet", "monitoring_host"), f"no host named {fleet.monitoring_host!r}")
    if not ipaddress.ip_address(inv.host.bind).is_loopback:
        yield src.error(("host", "bind"), "in a fleet, host.bind stays loopback: a backend another host reaches "
                                          "binds to its host's address by itself")
    if inv.host.private_network is not None:
        yield src.error(("host", "private_network"), "in a fleet, the private network is fleet.network")
    problem = inv.host.home and handover.inventory_path_problem(inv.host.home, handover.HOST)
    if problem:
        yield src.error(("host", "home"), f"{problem} (in a fleet, host.home is a path on the hosts)")
    if len(owner) < len(inv.services):
        return
    yield from _bind_rules(inv, src, owner)
    if inv.monitoring.enabled and monitoring_host(inv, owner) is None:
        yield src.error(("fleet", "monitoring_host"), "monitoring is enabled and there is not exactly one "
                                                      "gateway host: name the host that runs it")
    yield from _crossing_rules(inv, src, owner)


def _bind_rules(inv: Inventory, src: Source, owner: dict[str, str]) -> Iterator[InputError]:
    """Where a service may listen in a fleet: loopback, or its own host's address (what the
    other hosts reach); every network at once only with host.allow_public_bind."""
    assert inv.fleet is not None
    by_address = {h.address: name for name, h in inv.hosts.items()}
    for name, svc in inv.services.items():
        if not isinstance(svc, ServiceBase) or svc.bind is None:
            continue
        ip, host = ipaddress.ip_address(svc.bind), owner[name]
        mine = inv.hosts[host].address
        if ip.is_loopback or svc.bind == mine:
            continue
        fix = (f"bind it to {mine} (hosts.{host}.address) to be reached from fleet.network {inv.fleet.network}, "
               "or to loopback")
        if ip.is_unspecified:
            if inv.host.allow_public_bind:
                continue
            yield src.error(("services", name, "bind"), f"{svc.bind} listens on every network of hosts.{host}; "
                                                        f"{fix} (host.allow_public_bind: true allows every network)")
        elif svc.bind in by_address:
            yield src.error(("services", name, "bind"), f"{svc.bind} is the address of hosts.{by_address[svc.bind]}, "
                                                        f"and {name} runs on hosts.{host}: {fix}")
        else:
            yield src.error(("services", name, "bind"), f"{svc.bind} is not an address of hosts.{host}: {fix}")


def crossings(inv: Inventory, host_of: dict[str, str]) -> list[Crossing]:
    out = []
    for gw_name, gw in inv.gateways().items():
        for i, route in enumerate(gw.routes):
            if route.service is None or route.service not in host_of:
                continue
            if host_of[route.service] != host_of[gw_name]:
                out.append(Crossing(gw_name, host_of[gw_name], route.service, host_of[route.service], i))
    return out


def _crossing_rules(inv: Inventory, src: Source, owner: dict[str, str]) -> Iterator[InputError]:
    for c in crossings(inv, owner):
        backend = inv.services.get(c.backend)
        loc = ("services", c.gateway, "routes", c.route, "service")
        where = f"{c.backend} runs on hosts.{c.backend_host}, the gateway {c.gateway} on hosts.{c.gateway_host}"
        problem = kind_of(backend).cross_host_problem(c.backend, backend, c.gateway_host)
        if problem is not None:
            where_at, why = problem
            yield src.error(where_at or loc, f"{where}: {why}")
        if isinstance(backend, ServiceBase) and backend.bind is not None:
            if ipaddress.ip_address(backend.bind).is_loopback:
                yield src.error(("services", c.backend, "bind"),
                                f"{where}: a backend bound to loopback cannot be reached from another host; remove "
                                f"bind (labctl binds it to {inv.hosts[c.backend_host].address})")
    for name, svc in inv.services.items():
        for dep, loc, why in kind_of(svc).colocated(name, svc):
            if dep in owner and owner[dep] != owner[name]:
                yield src.error(loc, f"{dep} runs on hosts.{owner[dep]}, {name} on hosts.{owner[name]}: {why}")


def _controller_files(inv: Inventory, src: Source) -> Iterator[InputError]:
    """What the controller itself needs: its SSH key, and the wheel directory when given."""
    import os

    assert inv.fleet is not None
    key = os.path.expanduser(inv.fleet.ssh_key)
    if not os.path.isfile(key):
        yield src.error(("fleet", "ssh_key"), f"{key} is not a file (the controller's SSH key)")
    links = inv.fleet.pip.find_links
    if links is not None and not os.path.isdir(os.path.expanduser(links)):
        yield src.error(("fleet", "pip", "find_links"), f"{os.path.expanduser(links)} is not a directory")


def split_fleet(inv: Inventory) -> FleetSplit:
    """Each host's view (call after the fleet's rules passed)."""
    host_of = {s: h for h, fh in inv.hosts.items() for s in fh.services}
    plan = FleetSplit(host_of, crossings(inv, host_of), sorted({host_of[g] for g in inv.gateways()}))
    mon = monitoring_host(inv, host_of) if inv.monitoring.enabled else None
    for c in plan.crossings:
        backend = inv.services[c.backend]
        warning = kind_of(backend).cross_host_warning(c.backend, backend)
        if warning:
            plan.warnings.append(f"{c.backend} ({warning}) is reached from hosts.{c.gateway_host}: "
                                 f"anyone on {inv.fleet.network if inv.fleet else 'the network'} can use it")
    for host in inv.hosts:
        plan.views[host] = view(inv, plan, host, monitoring=(host == mon))
    return plan


def _host_section(inv: Inventory, fh: FleetHost) -> dict[str, object]:
    own = {"user": fh.user, "home": fh.home, "gpu": fh.gpu, "gpu_memory_gib": fh.gpu_memory_gib}
    update: dict[str, object] = {k: v for k, v in own.items() if v is not None}
    if fh.user is not None and fh.home is None and inv.host.home is not None:
        update["home"] = None  # the fleet-wide home belongs to host.user, not to this host's user
    assert inv.fleet is not None
    update["private_network"] = inv.fleet.network
    return update


def view(inv: Inventory, plan: FleetSplit, host: str, *, monitoring: bool) -> Inventory:
    fh = inv.hosts[host]
    keyed = set(plan.keyed)
    services: dict[str, object] = {}
    for name in fh.services:
        svc = inv.services[name]
        if name in keyed and isinstance(svc, ServiceBase):
            update: dict[str, object] = {"bind": fh.address}
            if kind_of(svc).key_variable is not None:  # a server that checks the key the fleet ships
                update["api_key"] = key_ref(name)
            svc = svc.model_copy(update=update)
        services[name] = svc
    for c in plan.crossings:
        if c.gateway_host != host or c.backend in services:
            continue
        services[c.backend] = _as_external(inv, c.backend, inv.hosts[c.backend_host])
    # The operator's order first (it is the start order's tie-breaker), the stand-ins after.
    ordered = {n: services[n] for n in inv.services if n in services}
    # The declared models go where a server loads a model file.
    loads_models = any(kind_of(s).model_file(inv, s) is not None for s in ordered.values())  # type: ignore[arg-type]
    update = {
        "host": inv.host.model_copy(update=_host_section(inv, fh)),
        "services": ordered,
        "models": dict(inv.models) if loads_models else {},
        "monitoring": inv.monitoring if monitoring else inv.monitoring.model_copy(update={"enabled": False}),
        "fleet": None,
        "hosts": {},
    }
    return inv.model_copy(update=update)


def _as_external(inv: Inventory, name: str, where: FleetHost) -> External:
    """How a gateway's view shows a backend that runs on another host: its kind's external
    view (what it speaks and serves), at its host's address, with the key the fleet ships
    when it checks one."""
    svc = inv.services[name]
    kind = kind_of(svc)
    view = kind.external_view(svc)
    assert view is not None  # a crossing reaches a backend, and each backend kind has a view
    fields: dict[str, object] = {
        "kind": "external", **view, "address": where.address, "port": svc.port,
        "enabled": svc.enabled, "ready_timeout_sec": min(svc.ready_timeout_sec, 60),
        "description": f"{name} on {where.address} (another host of the fleet)",
    }
    if kind.key_variable is not None:
        fields["api_key"] = key_ref(name)
    return External.model_validate(fields)

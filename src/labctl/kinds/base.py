"""What every service kind has, and the interface each kind module fills in.

A service kind is one module of ``labctl.kinds``: its schema model (a subclass of
:class:`ServiceBase`, or of :class:`Listener` for a server labctl does not run) and one
:class:`Kind`, which says everything the layers above need to know about it: its argv (the
flags it owns are derived from that argv), environment, files, readiness probe, scrape job
and dashboard panels, GPU share, start order, status facts and its own checks. The layers
call this interface; none of them asks which kind it holds.

Kind methods are pure: they read the inventory and the service, and what they need from the
host (a GGUF header, the layout of files) is handed to them. The types of the layers above
appear only in annotations.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Annotated, ClassVar, NamedTuple

from pydantic import Field

from labctl.fields import (
    ARGV,
    BindAddr,
    EnvFilePath,
    EnvName,
    Limits,
    PathStr,
    Port,
    RestartPolicy,
    SecretRef,
    Strict,
    Text,
    Word,
)
from labctl.text import first_unsafe

if TYPE_CHECKING:
    from labctl.host.gguf_header import GGUFInfo
    from labctl.inventory.layout import Layout
    from labctl.inventory.schema import Inventory


class Listener(Strict):
    """What every service has, run by labctl or not: a port it answers on."""

    enabled: bool = True
    port: Port
    description: Text | None = None
    # Deadline for readiness after (re)start. Model loads dominate, so it is per service.
    ready_timeout_sec: Annotated[int, Field(ge=1, le=7200)] = 120


class ServiceBase(Listener):
    """A service labctl runs as a systemd user unit."""

    bind: BindAddr | None = None
    extra_args: Annotated[list[Word], ARGV] = []
    environment: dict[EnvName, Word] = {}
    environment_files: list[EnvFilePath] = []
    restart: RestartPolicy | None = None
    # The sandboxing set (defaults.hardening unless set here) and resource limits, each
    # field overriding defaults.limits.
    hardening: bool | None = None
    limits: Limits | None = None
    # More paths the service may write under the hardening's read-only file system (its
    # working directory always is).
    read_write_paths: list[PathStr] = []


# --- what a kind hands back ---------------------------------------------------------------

Loc = tuple[str | int, ...]


class Problem(NamedTuple):
    """One thing wrong with a service, at its inventory location (``services.NAME...``)."""

    loc: Loc
    message: str


class Scrape(NamedTuple):
    """A Prometheus job for a service: the job's name, its metrics path, extra labels."""

    job: str
    path: str
    labels: dict[str, str] = {}


class Panel(NamedTuple):
    title: str
    expr: str      # PromQL; ``{sel}`` stands for the service's label matcher
    unit: str      # Grafana's unit: none, reqps, s ...
    stat: bool = False


class Share(NamedTuple):
    """A service's claim on the GPU: bytes (None: not known, or not counted), how the figure
    was reached, the fraction of the whole GPU it takes whatever its size (vLLM), and a note
    for the operator."""

    bytes: int | None
    how: str
    fraction: float | None = None
    note: str | None = None


class Signals(NamedTuple):
    """What a server's metrics endpoint (:meth:`Kind.scrape`'s path) says, by the names it
    says it with: ``labctl top`` reads these and nothing else. Gauges are summed over their
    series, counters become rates, a histogram family (named without ``_bucket``) gives
    quantiles. A figure a server does not expose is left out (None): top shows none."""

    running: tuple[str, ...] = ()          # gauges: requests being served now
    waiting: tuple[str, ...] = ()          # gauges: requests queued for a slot
    requests: str | None = None            # counter: requests answered
    prompt_tokens: str | None = None       # counter: prompt tokens processed
    generation_tokens: str | None = None   # counter: tokens generated
    ttft: str | None = None                # histogram family: seconds to the first token
    #: The running gauges count the metrics request itself (LiteLLM counts every HTTP request).
    running_counts_itself: bool = False
    #: Seconds between two reads of its metrics at least, for a server whose answer costs it
    #: (top reads it at every sample until it has two, then no more often than this).
    min_interval: float = 0.0


def signal_panels(signals: Signals | None) -> list[Panel]:
    """The panels a server's :class:`Signals` give: requests in flight and queued, requests,
    prompt and generated tokens per second, and time to first token (p50 and p95): one
    reading of a metrics endpoint for the live view and the dashboards alike."""
    if signals is None:
        return []
    out = []
    if signals.running:
        running = _summed(signals.running)
        if signals.running_counts_itself:  # the scrape is one of them
            running = f"clamp_min({running} - 1, 0)"
        out.append(Panel("Requests in flight", running, "none"))
    if signals.waiting:
        out.append(Panel("Requests queued", _summed(signals.waiting), "none"))
    for title, family, unit in (("Requests/s", signals.requests, "reqps"),
                                ("Prompt tokens/s", signals.prompt_tokens, "none"),
                                ("Generated tokens/s", signals.generation_tokens, "none")):
        if family:
            out.append(Panel(title, f"sum(rate({family}{{sel}}[5m]))", unit))
    if signals.ttft:
        for q in ("0.5", "0.95"):
            out.append(Panel(f"Time to first token p{round(float(q) * 100)}",
                             f"histogram_quantile({q}, sum by (le) (rate({signals.ttft}_bucket{{sel}}[5m])))", "s"))
    return out


def _summed(families: tuple[str, ...]) -> str:
    return " + ".join(f"sum({f}{{sel}})" for f in families)


class Per(NamedTuple):
    """A family of a gateway's metrics and the label that splits it: the route's
    (:attr:`RouteSignals.route`) or the deployment's (:attr:`RouteSignals.deployment`)."""

    family: str
    label: str


class RouteSignals(NamedTuple):
    """What a gateway's metrics endpoint says per route, by its names (``labctl top``).

    ``answered`` and ``failed`` carry both the route's label and the deployment's: their
    series say which deployment serves which route, so a family split by deployment (tokens, time to first
    token, a deployment's state) is summed per route through them. A deployment answers
    for the route it is listed under, also when it answers as another route's fallback: it
    is the work its backend did."""

    route: str                         # the label naming a route
    deployment: str                    # the label naming a deployment (one route's backend)
    answered: Per                      # counter: requests a route's own backend answered
    failed: Per | None = None          # counter: requests a route's own backend failed
    fallbacks: Per | None = None       # counter, per route first asked: requests a fallback answered
    prompt_tokens: Per | None = None   # counters
    generation_tokens: Per | None = None
    ttft: Per | None = None            # histogram family
    state: Per | None = None           # gauge per deployment: 0 healthy, 1 failing, 2 in cooldown


class Secret(NamedTuple):
    """A secret labctl keeps for a service: what doctor calls it, the reference, whether
    labctl generates it when its file is missing, and how a generated value starts."""

    label: str
    ref: SecretRef
    generate: bool
    prefix: str = "sk-"


class Derived(NamedTuple):
    """A 0600 file derived from a secret's value (the server's own variable, Redis's
    requirepass include): where, from which reference, and its text given the value."""

    path: str
    ref: SecretRef
    text: object  # Callable[[str], str]


class Unit(NamedTuple):
    """A unit someone else runs for a service labctl does not run, to read (never change)."""

    name: str
    user: bool


# --- addresses ------------------------------------------------------------------------------


def reach(address: str) -> str:
    """The address a local client uses to reach a server bound to ``address``."""
    ip = ipaddress.ip_address(address)
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "::1"
    return address


def host_port(address: str, port: int) -> str:
    """``address:port``, an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def secret_plan(inv: Inventory, ref: SecretRef) -> dict[str, str | None]:
    """Where a probe finds a key when it runs (a plan holds no secret value)."""
    return {"env_file": inv.host.expand(ref.env_file) if ref.env_file else None, "variable": ref.variable}


def server_key_text(variable: str, key: str) -> str:
    """A derived env file: the server's own variable holding the key."""
    if not key or first_unsafe(key) is not None or any(c.isspace() for c in key) or "\\" in key:
        raise ValueError("an API key must be one word of printable characters")
    return f"{variable}={key}\n"


def key_problems(kind: Kind, name: str, svc: Listener, *, env_file: bool) -> Iterator[Problem]:
    """A key reference: in an env file when labctl derives the server's variable from it
    (``env_file``), and never named as a server's own variable."""
    from labctl.kinds import KINDS

    key = kind.api_key(svc)
    if key is None:
        return
    loc = ("services", name, "api_key")
    if env_file and key.env_file is None:
        yield Problem(loc, "a backend's key must be in an env file ({env_file: PATH, var: NAME}): labctl "
                           "derives the server's own variable from it")
    if key.variable in {k.key_variable for k in KINDS.values() if k.key_variable}:
        yield Problem(loc + ("var",), f"{key.variable} is what a server reads itself; name the key per "
                                      f"service (e.g. LABCTL_API_KEY_{name.upper().replace('-', '_')}) so a "
                                      "gateway can hold several")


# --- the interface --------------------------------------------------------------------------


class Kind:
    """One service kind. Subclasses set the class attributes and override what differs from
    these defaults (the defaults fit a service that serves no model)."""

    #: The inventory's ``kind:`` value.
    name: ClassVar[str]
    #: Its schema model.
    model: ClassVar[type[Listener]]
    #: labctl runs it as a systemd user unit (False: a server someone else runs).
    managed: ClassVar[bool] = True
    #: A model server: a gateway's routes may name it.
    backend: ClassVar[bool] = False
    #: A gateway: it routes requests to backends (labctl renders its config).
    gateway: ClassVar[bool] = False
    #: Start order among managed services: 0 backends and stores, 1 what reads one of them, 2 gateways.
    start_rank: ClassVar[int] = 0
    #: The field that names what it serves: "models" (a list a route picks from), or the
    #: field of the one model it serves (a route may leave its model out).
    served_field: ClassVar[str] = "models"
    #: A route must name its model even when the service lists one (it serves any it has).
    route_names_model: ClassVar[bool] = False
    #: The variable the server reads its API key from, for a kind that checks one.
    key_variable: ClassVar[str | None] = None
    #: Its runtime reads interfaces over netlink (Go's runtime, PyTorch): AF_NETLINK allowed.
    netlink: ClassVar[bool] = False
    #: It writes code it runs (a JIT): no MemoryDenyWriteExecute=.
    jit: ClassVar[bool] = False
    #: How many words of its argv start the program (the program, ``-m module``...): the
    #: rest set something.
    args_start: ClassVar[int] = 1
    #: Other spellings the program accepts for the flags its argv sets (short forms, old
    #: names): with the flags of the argv itself, what extra_args may not set again.
    flag_aliases: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: The test a program labctl installs from a wheel must pass on this CPU before it is
    #: trusted (labctl.host.selftest.RECIPES), or None.
    program_test: ClassVar[str | None] = None
    #: Flags for what a typed field decides without a flag on labctl's argv (a secret that
    #: comes another way, a setting labctl makes through the environment).
    also_owned: ClassVar[tuple[str, ...]] = ()
    #: Environment variables labctl sets from typed fields, which environment may not set.
    owned_environment: ClassVar[dict[str, str]] = {}
    #: Host names its program looks up at start, each with what happens when one does not
    #: resolve: ``labctl doctor`` (and so ``up``'s pre-flight) resolves each.
    resolves: ClassVar[dict[str, str]] = {}
    #: A service of this kind with every optional field set, as an inventory says it: the
    #: flags its argv can carry are read from it, and the docs and the hostile-input tests
    #: take every kind's fields from it.
    example: ClassVar[dict[str, object]]

    # --- the unit -----------------------------------------------------------------------

    def argv(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
        """The command line labctl runs, without the operator's extra_args."""
        raise NotImplementedError(f"{self.name} runs no program of labctl's")

    def settings(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
        """The words of its command line that set something: after the program and the way
        it is started (``python -m module``: ``args_start`` words)."""
        return self.argv(inv, name, svc, layout)[self.args_start:]

    def owned_flags(self, inv: Inventory, name: str, layout: Layout) -> set[str]:
        """The flags labctl sets, read from what it sets for the example (every optional field
        set, so every flag labctl can give is there): setting one again in extra_args would
        override (or duplicate) a checked value."""
        full = self.model.model_validate({**self.example, "extra_args": []})
        flags = {word.split("=", 1)[0] for word in self.settings(inv, name, full, layout)  # type: ignore[arg-type]
                 if word.startswith("-")}
        return flags | {alias for flag in flags for alias in self.flag_aliases.get(flag, ())} | set(self.also_owned)

    def environment(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> dict[str, str]:
        """labctl's own variables; the operator's environment is laid over them."""
        return {}

    def operator_environment(self, inv: Inventory, svc: ServiceBase) -> dict[str, str]:
        """Variables of the operator's environment the kind reads as typed values, as it
        writes them (laid over the operator's own text)."""
        return {}

    def environment_files(self, inv: Inventory, name: str, svc: ServiceBase) -> list[str]:
        """Env files beside the operator's (secrets the process reads)."""
        return [d.path for d in self.derived(inv, name, svc)]

    def writable(self, inv: Inventory, name: str, svc: ServiceBase) -> list[tuple[str, str, Loc]]:
        """Paths it writes beyond its working directory: (path, what the inventory said,
        where it said it)."""
        return []

    def uses_gpu(self, inv: Inventory, svc: ServiceBase) -> bool:
        """Whether it needs the GPU's device nodes (so no PrivateDevices=)."""
        return False

    def dependencies(self, inv: Inventory, name: str, svc: ServiceBase) -> list[str]:
        """Services (of this manager) it starts after."""
        return []

    def restart_policy(self, policy: RestartPolicy) -> tuple[RestartPolicy, dict[str, str]]:
        """The policy its unit gets, and a note per setting labctl changed (why)."""
        return policy, {}

    def files(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> dict[str, str]:
        """Files of its own, rendered beside its unit (path relative to the config root)."""
        return {}

    def restart_files(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
        """Rendered files (relative paths, or prefixes ending in /) whose change restarts it."""
        return list(self.files(inv, name, svc, layout))

    # --- what it serves -----------------------------------------------------------------

    def served_models(self, svc: Listener) -> list[str]:
        """The model names it serves (a route names one)."""
        return []

    def api(self, svc: Listener) -> str:
        """The API it speaks: "openai" (/v1/...) or "ollama" (/api/...)."""
        return "openai"

    def address(self, inv: Inventory, svc: Listener) -> str:
        """Where it listens (for a server labctl does not run: where labctl reaches it)."""
        assert isinstance(svc, ServiceBase)
        return svc.bind or inv.host.bind

    def api_key(self, svc: Listener) -> SecretRef | None:
        """The key clients must send, if it checks one."""
        return getattr(svc, "api_key", None)

    def executables(self, inv: Inventory, name: str, svc: Listener) -> list[tuple[Loc, str]]:
        """Programs it runs that must be on the host (``--check-files``, doctor): (where the
        inventory names it, under services.NAME; the path). A ``binary``, and a ``runtime``'s
        interpreter unless labctl provisions it (pip specs: it may not exist yet)."""
        out: list[tuple[Loc, str]] = []
        binary = getattr(svc, "binary", None)
        if binary is not None:
            out.append((("binary",), inv.host.expand(binary)))
        runtime = getattr(svc, "runtime", None)
        if runtime is not None and not runtime.pip:
            out.append((("runtime",), runtime.interpreter(inv.host)))
        return out

    def model_file(self, inv: Inventory, svc: Listener) -> str | None:
        """The GGUF file it loads (for a llama.cpp server: the path it is started with)."""
        return None

    def context(self, svc: Listener) -> tuple[str, int] | None:
        """(field, tokens) of its context size, checked against the model's trained length."""
        return None

    def gguf_share(self, inv: Inventory, svc: Listener, info: GGUFInfo | None, error: str | None) -> Share | None:
        """Its claim on the GPU given its model's header (for kinds with a model_file)."""
        return None

    def gpu_share(self, inv: Inventory, name: str, svc: Listener, gpu_total: int | None) -> Share | None:
        """Its claim on the GPU without reading a file; None when it takes none."""
        return None

    #: It can serve Prometheus metrics (a backend-down alert watches its scrape).
    metrics_endpoint: ClassVar[bool] = False
    #: It says how many requests it has in flight (:meth:`in_flight`): a drain waits for 0.
    reports_in_flight: ClassVar[bool] = False

    def in_flight(self, inv: Inventory, svc: Listener, headers: dict[str, str], timeout: float = 3.0) -> int | None:
        """Requests it has now (processing and queued), or None when it cannot say;
        ``headers`` carry its key."""
        return None

    #: It says which model file it serves (:meth:`loaded_model`).
    reports_loaded_model: ClassVar[bool] = False

    def loaded_model(self, inv: Inventory, svc: Listener, headers: dict[str, str], timeout: float = 3.0) -> str | None:
        """The model file it says it serves, asked of it (``headers`` carry its key), or None."""
        return None

    def unit(self, name: str, svc: Listener) -> Unit | None:
        """For a server labctl does not run: the unit that runs it, to read."""
        return None

    def start_hint(self, name: str, svc: Listener) -> str:
        return f"labctl restart {name}"

    # --- probes, status, monitoring -----------------------------------------------------

    def probe(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        """The readiness probe's plan (labctl.ops.probes.ProbeSpec as plain data): its
        recipe, base URL, the names it must serve, where its key is kept."""
        return {"service": name, "recipe": f"none:{self.name}"}

    def status_row(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        """What status shows of it beyond the unit: ``model`` (a name), or ``model_link`` (a
        path status reads as ``link -> target``), and ``metrics`` (a path and the gauges
        to read from it)."""
        return {"model": None}

    def scrape(self, inv: Inventory, name: str, svc: Listener) -> Scrape | str | None:
        """Its Prometheus job, or a note saying why it is not scraped, or None."""
        return None

    def panels(self, svc: Listener) -> list[Panel]:
        """Dashboard panels beyond Up and Restarts (which every scraped service gets): the
        figures ``labctl top`` shows live, over time, from its :meth:`signals`. A kind adds
        what only it says after these."""
        return signal_panels(self.signals(svc))

    def signals(self, svc: Listener) -> Signals | None:
        """What its metrics endpoint says, by name (``labctl top``); None when it has none
        (it is then probed, and shows no rates of its own)."""
        return None

    def route_signals(self, svc: Listener) -> RouteSignals | None:
        """A gateway: what its metrics endpoint says per route; None otherwise."""
        return None

    def route_services(self, svc: Listener) -> dict[str, str | None]:
        """A gateway: each route's name and the service of this inventory it reaches (None:
        an endpoint labctl does not run). Empty for the rest."""
        return {}

    # --- secrets ------------------------------------------------------------------------

    def secrets(self, inv: Inventory, name: str, svc: Listener) -> list[Secret]:
        """The secrets labctl keeps for it (checked by doctor, generated by up)."""
        key = self.api_key(svc)
        return [Secret(f"{name} api key", key, key.generate)] if key is not None and key.env_file else []

    def derived(self, inv: Inventory, name: str, svc: Listener) -> list[Derived]:
        """0600 files derived from its secrets' values, written by up before it starts. A
        server that reads its key from a fixed variable of its own (``key_variable``) gets
        one beside the reference's file holding that variable: the reference is named per
        service, so a gateway can hold several."""
        key = self.api_key(svc)
        if self.key_variable is None or key is None or key.env_file is None:
            return []
        path = str(PurePosixPath(inv.host.expand(key.env_file)).parent / f"{name}-server-key.env")
        variable = self.key_variable
        return [Derived(path, key, lambda value: server_key_text(variable, value))]

    # --- checks -------------------------------------------------------------------------

    def checks(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        """What this kind refuses that no field type can see alone (the default: a key
        reference a keyed server can read)."""
        yield from key_problems(self, name, svc, env_file=self.key_variable is not None)

    def warnings(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        """What this kind accepts but an operator likely did not mean (shown, never refused)."""
        return iter(())

    def remote_bind_problem(self, svc: Listener) -> str | None:
        """Why it may not listen where other hosts reach it, or None."""
        if self.key_variable is not None and self.api_key(svc) is None:
            return "is reachable from other hosts: set api_key (clients must then send it), or bind to loopback"
        return None

    # --- a fleet ------------------------------------------------------------------------

    def external_view(self, svc: Listener) -> dict[str, object] | None:
        """How a gateway on another host sees a backend: the fields of a ``kind: external``
        service (api, models, and the key when it checks one), or None for no backend."""
        if not self.backend:
            return None
        return {"api": self.api(svc), "models": self.served_models(svc)}

    def cross_host_problem(self, name: str, svc: Listener, gateway_host: str) -> tuple[Loc | None, str] | None:
        """Why a gateway on ``gateway_host`` (another host) may not route to it as the
        inventory says it: (where, or None for the route itself; why), or None. A keyed
        server's key is the fleet's to make and ship."""
        if self.key_variable is not None and self.api_key(svc) is not None:
            return ("services", name, "api_key"), "the fleet generates and ships this backend's key; remove api_key"
        return None

    def colocated(self, name: str, svc: Listener) -> list[tuple[str, Loc, str]]:
        """Services that must run on its host in a fleet: (service, the field naming it, why)."""
        return []

    def cross_host_warning(self, name: str, svc: Listener) -> str | None:
        """Why an operator should hear of it every time a gateway on another host routes to
        it ("Ollama, no authentication"), or None."""
        return None

    # --- helpers for the kinds ----------------------------------------------------------

    def base_url(self, inv: Inventory, svc: Listener) -> str:
        return f"http://{host_port(reach(self.address(inv, svc)), svc.port)}"

    def key_plan(self, inv: Inventory, svc: Listener) -> dict[str, str | None] | None:
        key = self.api_key(svc)
        return secret_plan(inv, key) if key is not None else None

"""``labctl top``: what each service is doing now, from what it already exposes.

Every second or two a :class:`Sampler` takes one :class:`Sample` of the host: the units'
facts (one ``systemctl --user show``, as ``status`` reads them), one answer from each
service (its metrics endpoint where its kind has one, :meth:`labctl.kinds.base.Kind.scrape`,
else its shallow probe: one request either way, on a kept-alive connection), the drain
gates, and the GPU's processes where ``nvidia-smi`` exists. No Prometheus is involved.

:func:`frame` turns the samples kept into what the screen shows: rates from two answers a
few seconds apart (a counter that went down was reset by a restart), quantiles of time to
first token from the histogram buckets that grew over the last minute, a state word per
service, and per gateway route the share of answers a fallback gave and the state LiteLLM
keeps of each deployment (cooldown). Which of a server's metrics mean what is its kind's
(:meth:`~labctl.kinds.base.Kind.signals`, ``route_signals``); a figure a server does not
expose is taken from what a gateway saw of the routes to it, and marked so, or left empty.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from labctl import promtext
from labctl.host.proc import CommandFailed, one_line, run_cmd
from labctl.host.systemd import UnitFacts, UserManager
from labctl.kinds.base import RouteSignals, Signals

if TYPE_CHECKING:
    from labctl.inventory.schema import Inventory

#: Rates are taken over the newest answer and the oldest within this many seconds.
RATE_WINDOW = 5.0
#: Quantiles of time to first token: over the observations of this many seconds.
TTFT_WINDOW = 60.0
#: ``nvidia-smi`` is asked at most this often (it takes a good fraction of a second).
GPU_EVERY = 5.0
LOADING = "loading model"  # labctl.ops.probes' word for a health endpoint's 503


# --- what is sampled ------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One service, as top samples it: planned once from the inventory."""

    name: str
    kind: str
    unit: str | None                 # its labctl unit; None for a service labctl does not run
    facts_key: str | None            # where its unit's facts are in a Sample (external: "user:UNIT")
    metrics_url: str | None          # its metrics endpoint, when its kind reads one
    headers: dict[str, str]          # its key, for a keyed server's metrics
    signals: Signals | None
    route_signals: RouteSignals | None
    routes: dict[str, str | None]    # a gateway's routes -> the service each reaches
    probe: dict[str, Any]            # its probe's plan (labctl.ops.probes.ProbeSpec), when no metrics
    model: str | None
    model_link: str | None
    ready_timeout: float
    gate: Any = None                 # labctl.ops.switch.Gate, for a backend a gateway routes around


@dataclass(frozen=True)
class Answer:
    """One service's answer in one sample: it answered (any HTTP answer), is loading its
    model (503), the samples of the families its kind reads (None: none read), and whether
    its metrics endpoint refused them (a key top cannot read: it answers, but says nothing)."""

    ok: bool
    loading: bool
    detail: str
    samples: promtext.Samples | None = None
    refused: bool = False
    at: float = 0.0        # when it was taken (time.monotonic()): a sample may repeat an older one


@dataclass(frozen=True)
class Sample:
    at: float                          # time.monotonic()
    facts: dict[str, UnitFacts]
    answers: dict[str, Answer]
    gpu: dict[str, int]                # service -> GPU bytes its processes hold
    draining: frozenset[str]
    note: str = ""


@dataclass(frozen=True)
class Plan:
    """What a :class:`Sampler` asks: the services, and the units whose facts it reads."""

    targets: list[Target]
    units: list[str]                    # the labctl units (one ``systemctl --user show``)
    externals: list[dict[str, Any]]     # the units someone else runs external services as


def plan(inv: Inventory, env: dict[str, str]) -> Plan:
    """What to ask of each enabled service (labctl.ops.status.status_inputs's rows, plus where its
    metrics are and what they mean); ``env``: the user manager's environment (where the
    drain gates are)."""
    from labctl.host import secrets
    from labctl.kinds import kind_of
    from labctl.kinds.base import Scrape
    from labctl.ops.status import status_inputs
    from labctl.ops.switch import Gate, gateable

    status_plan = status_inputs(inv)
    rows = {row["name"]: row for row in status_plan["services"]}
    targets = []
    for name, svc in inv.enabled().items():
        kind, row = kind_of(svc), rows[name]
        scrape = kind.scrape(inv, name, svc)
        signals = kind.signals(svc)
        url = f"{kind.base_url(inv, svc)}{scrape.path}" if isinstance(scrape, Scrape) and signals else None
        if row["external"]:
            unit, key = None, f"{row['ext_scope']}:{row['ext_unit']}" if row["ext_unit"] else None
        else:
            unit = key = row["unit"]
        targets.append(Target(
            name=name, kind=kind.name, unit=unit, facts_key=key, metrics_url=url,
            headers=secrets.auth_headers(inv, svc) if url else {}, signals=signals if url else None,
            route_signals=kind.route_signals(svc) if url else None, routes=kind.route_services(svc),
            probe=row["probe"], model=row.get("model"), model_link=row.get("model_link"),
            ready_timeout=float(svc.ready_timeout_sec),
            gate=Gate.of(inv, svc, env) if gateable(inv, name) else None))
    externals = [r for r in status_plan["services"] if r["external"] and r["ext_unit"]]
    return Plan(targets, status_plan["managed"], externals)


def wanted(target: Target) -> set[str]:
    """The sample names of ``target``'s answer that top reads."""
    names: set[str] = set()
    s, r = target.signals, target.route_signals
    if s is not None:
        names |= set(s.running) | set(s.waiting)
        names |= {n for n in (s.requests, s.prompt_tokens, s.generation_tokens) if n}
        if s.ttft:
            names.add(f"{s.ttft}_bucket")
    if r is not None:
        for per in (r.answered, r.failed, r.fallbacks, r.prompt_tokens, r.generation_tokens, r.state):
            if per is not None:
                names.add(per.family)
        if r.ttft is not None:
            names.add(f"{r.ttft.family}_bucket")
    return names


class Sampler:
    """Takes samples of a host's services; keeps the last :data:`TTFT_WINDOW` seconds of them."""

    def __init__(self, plan: Plan, *, manager: UserManager | None = None, timeout: float = 2.0) -> None:
        import httpx

        from labctl.ops.probes import plain_http_tls

        self.plan = plan
        self.targets = plan.targets
        self.manager = manager if manager is not None else UserManager()
        self.timeout = timeout
        # One kept-alive connection per server: no handshake per sample for it to pay.
        self.client = httpx.Client(timeout=timeout, trust_env=False, verify=plain_http_tls(),
                                   limits=httpx.Limits(max_keepalive_connections=len(self.targets) + 1))
        self.names = {t.name: wanted(t) for t in self.targets}
        self.history: deque[Sample] = deque()
        self._gpu: tuple[float, dict[int, int]] = (-math.inf, {})

    def close(self) -> None:
        self.client.close()

    def answer(self, target: Target) -> Answer:
        """Ask ``target`` now: its metrics endpoint, or its probe when it has none."""
        import httpx

        from labctl.ops import probes

        at = time.monotonic()
        if target.metrics_url is None:
            result = probes.run(probes.ProbeSpec.from_dict(target.probe), timeout=self.timeout)
            return Answer(result.ok, result.detail == LOADING, result.detail, at=at)
        try:
            resp = self.client.get(target.metrics_url, headers=target.headers)
        except httpx.TimeoutException:
            return Answer(False, False, f"no answer within {self.timeout:g}s", at=at)
        except httpx.HTTPError as exc:
            text = str(exc).lower()
            return Answer(False, False, "connection refused" if "refused" in text else type(exc).__name__, at=at)
        if resp.status_code == 503:
            return Answer(True, True, LOADING, at=at)
        if resp.status_code != 200:
            # It answers, but its metrics cannot be read (a key it wants and top lacks).
            return Answer(True, False, f"its metrics answered HTTP {resp.status_code}", refused=True, at=at)
        return Answer(True, False, "", promtext.parse(resp.text, self.names[target.name]), at=at)

    def due(self, target: Target) -> Answer | None:
        """None when ``target`` is to be asked now; else its last answer, repeated: a server
        whose metrics cost it (Signals.min_interval) is asked at every sample until it has
        answered twice (the first rates), then no more often than that."""
        if target.signals is None or not target.signals.min_interval:
            return None
        read = [s.answers[target.name] for s in self.history if target.name in s.answers]
        fresh = {id(a): a for a in read if a.samples is not None}
        if len(fresh) < 2 or not read:
            return None
        last = read[-1]
        return last if last.samples is not None and time.monotonic() - last.at < target.signals.min_interval else None

    def unit_facts(self) -> tuple[dict[str, UnitFacts], str]:
        """The labctl units' facts, or none and why (no user manager here: no bus)."""
        try:
            return self.manager.show(self.plan.units), ""
        except CommandFailed as exc:
            return {}, f"no unit states: {one_line(exc.output) or exc}"

    def gpu_by_pid(self) -> dict[int, int]:
        """Bytes of GPU memory per process, from ``nvidia-smi`` (at most every GPU_EVERY s)."""
        at, known = self._gpu
        if time.monotonic() - at < GPU_EVERY:
            return known
        smi = shutil.which("nvidia-smi")
        found: dict[int, int] = {}
        if smi is not None:
            try:
                res = run_cmd([smi, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                              timeout=10, check=False)
                found = parse_compute_apps(res.stdout)
            except CommandFailed:
                pass
        self._gpu = (time.monotonic(), found)
        return found

    def sample(self) -> Sample:
        """One sample: every request at once, each bounded by the timeout."""
        from labctl.ops.probes import in_thread
        from labctl.ops.status import _external_facts

        own = in_thread(self.unit_facts)
        externals = self.plan.externals
        ext = in_thread(lambda: _external_facts(externals, self.manager.env)) if externals else dict
        kept = {t.name: last for t in self.targets if (last := self.due(t)) is not None}
        waits = {t.name: in_thread(lambda t=t: self.answer(t)) for t in self.targets if t.name not in kept}
        gpu_pids = self.gpu_by_pid()
        facts, note = own()
        facts = {**facts, **ext()}
        answers = {**kept, **{name: wait() for name, wait in waits.items()}}
        draining = frozenset(t.name for t in self.targets if t.gate is not None and t.gate.closed())
        sample = Sample(time.monotonic(), facts, answers, gpu_by_service(gpu_pids, self.targets, facts), draining,
                        note)
        self.history.append(sample)
        while self.history and sample.at - self.history[0].at > TTFT_WINDOW + 1:
            self.history.popleft()
        return sample


def parse_compute_apps(text: str) -> dict[int, int]:
    """``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``:
    one ``PID, MiB`` line per process on a GPU (a process on two GPUs: two lines)."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = out.get(int(parts[0]), 0) + int(parts[1]) * 2**20
    return out


def unit_of_pid(pid: int) -> str | None:
    """The systemd unit whose cgroup holds ``pid`` (a server's child, vLLM's engine core,
    is in its unit's cgroup too)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return None
    for line in text.splitlines():
        for part in reversed(line.split("/")):
            if part.endswith(".service"):
                return part
    return None


def gpu_by_service(by_pid: dict[int, int], targets: list[Target], facts: dict[str, UnitFacts]) -> dict[str, int]:
    units = {t.unit: t.name for t in targets if t.unit}
    mains = {f.main_pid: t.name for t in targets if t.facts_key and (f := facts.get(t.facts_key)) and f.main_pid}
    out: dict[str, int] = {}
    for pid, used in by_pid.items():
        name = mains.get(pid) or units.get(unit_of_pid(pid) or "")
        if name is not None:
            out[name] = out.get(name, 0) + used
    return out


def rss(pid: int) -> int | None:
    """A process' resident memory (``VmRSS``), for a unit whose cgroup memory systemd
    cannot give (cgroup v1 controllers it does not own: a container)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# --- what the screen shows ------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    """What a server says it did over a window: per second, and quantiles in seconds."""

    req_s: float | None = None
    prompt_tps: float | None = None
    gen_tps: float | None = None
    ttft_p50: float | None = None
    ttft_p95: float | None = None


@dataclass(frozen=True)
class ServiceRow:
    name: str
    kind: str
    state: str            # serving idle loading draining starting failed stopped stopping, "no answer",
                          # "no metrics" (it answers, its metrics refuse top), unknown
    detail: str           # why, when it is not serving or idle
    model: str | None
    running: int | None
    queued: int | None
    figures: Figures
    via_gateway: frozenset[str]  # the figures taken from what a gateway saw of the routes to it
    restarts: int | None
    memory: int | None
    gpu: int | None


@dataclass(frozen=True)
class RouteRow:
    gateway: str
    route: str
    service: str | None   # the service it reaches; None: an endpoint labctl does not run
    answered_s: float | None
    fallback_share: float | None  # of the answers for this route, the share a fallback gave
    state: str | None             # LiteLLM's state of its deployment: ok, failing, cooldown
    figures: Figures


@dataclass(frozen=True)
class Frame:
    services: list[ServiceRow]
    routes: list[RouteRow]
    notes: list[str] = field(default_factory=list)
    window: float | None = None    # seconds the rates are over (None: one sample so far)


def _base(history: list[Sample], name: str, window: float) -> Answer | None:
    """The answer to take ``name``'s rates from, against its newest: the oldest within
    ``window`` seconds of it with its metrics (rates need two readings of the same
    counters), else the latest before that (answers further apart than the window). A
    sample that repeats an older answer (Signals.min_interval) adds no reading."""
    newest = history[-1].answers[name]
    seen: dict[int, Answer] = {}
    for sample in history:
        a = sample.answers.get(name)
        if a is not None and a.samples is not None and a.at < newest.at:
            seen.setdefault(id(a), a)
    answered = sorted(seen.values(), key=lambda a: a.at)
    within = [a for a in answered if newest.at - a.at <= window]
    return within[0] if within else (answered[-1] if answered else None)


def _rate(old: promtext.Samples, new: promtext.Samples, name: str | None, seconds: float) -> float | None:
    if name is None:
        return None
    grown = promtext.increase(promtext.total(old, name), promtext.total(new, name))
    return None if grown is None else grown / seconds


def _quantiles(grown: promtext.Buckets | None) -> tuple[float | None, float | None]:
    return promtext.quantile(0.5, grown), promtext.quantile(0.95, grown)


def service_figures(signals: Signals, old: promtext.Samples | None, new: promtext.Samples, seconds: float,
                    ttft_old: promtext.Samples | None) -> Figures:
    """A server's own figures from two answers ``seconds`` apart (rates), and the time to
    first token of what it answered since ``ttft_old``."""
    p50 = p95 = None
    if signals.ttft and ttft_old is not None:
        grown = promtext.bucket_increase(promtext.buckets(ttft_old, signals.ttft).get(""),
                                         promtext.buckets(new, signals.ttft).get(""))
        p50, p95 = _quantiles(grown)
    if old is None:
        return Figures(ttft_p50=p50, ttft_p95=p95)
    return Figures(_rate(old, new, signals.requests, seconds), _rate(old, new, signals.prompt_tokens, seconds),
                   _rate(old, new, signals.generation_tokens, seconds), p50, p95)


def gauges(signals: Signals, new: promtext.Samples) -> tuple[int | None, int | None]:
    """(running, queued) now."""
    def summed(names: tuple[str, ...]) -> float | None:
        found = [v for n in names if (v := promtext.total(new, n)) is not None]
        return sum(found) if found else None

    running, queued = summed(signals.running), summed(signals.waiting)
    if running is not None and signals.running_counts_itself:
        running = max(running - 1, 0)
    return (None if running is None else int(running)), (None if queued is None else int(queued))


@dataclass(frozen=True)
class RouteFigures:
    """One route over a window: answers by its own backend and by fallbacks (per second),
    its deployment's state, tokens and time-to-first-token buckets of its backend's work."""

    answered: float | None
    fallbacks: float | None
    state: float | None
    prompt: float | None
    generation: float | None
    ttft: promtext.Buckets | None


def route_figures(rs: RouteSignals, old: promtext.Samples | None, new: promtext.Samples, seconds: float,
                  ttft_old: promtext.Samples | None) -> dict[str, RouteFigures]:
    """Per route of a gateway, from two of its answers ``seconds`` apart."""
    deployments = {labels[rs.deployment]: labels[rs.route]
                   for per in (rs.answered, rs.failed) if per is not None for labels, _ in new.get(per.family, ())
                   if rs.deployment in labels and rs.route in labels}

    def per_route(samples: promtext.Samples | None, per: Any) -> dict[str, float]:
        if samples is None or per is None:
            return {}
        values = promtext.by_label(samples, per.family, per.label)
        if per.label != rs.deployment:
            return values
        out: dict[str, float] = {}
        for deployment, value in values.items():
            if deployment in deployments:
                route = deployments[deployment]
                out[route] = out.get(route, 0.0) + value
        return out

    def rates(per: Any) -> dict[str, float | None]:
        if old is None or per is None:
            return {}
        now, then = per_route(new, per), per_route(old, per)
        return {r: (g / seconds if (g := promtext.increase(then.get(r), v)) is not None else None)
                for r, v in now.items()}

    answered, fallbacks = rates(rs.answered), rates(rs.fallbacks)
    prompt, generation = rates(rs.prompt_tokens), rates(rs.generation_tokens)
    states = {}
    if rs.state is not None:
        for deployment, value in promtext.by_label(new, rs.state.family, rs.state.label).items():
            if deployment in deployments:
                route = deployments[deployment]
                states[route] = max(states.get(route, 0.0), value)
    ttft: dict[str, promtext.Buckets | None] = {}
    if rs.ttft is not None and ttft_old is not None:
        then_b = promtext.buckets(ttft_old, rs.ttft.family, rs.ttft.label)
        for deployment, counts in promtext.buckets(new, rs.ttft.family, rs.ttft.label).items():
            route = deployments.get(deployment) if rs.ttft.label == rs.deployment else deployment
            grown = promtext.bucket_increase(then_b.get(deployment), counts)
            if route is not None and grown is not None:
                ttft[route] = merge_buckets(ttft.get(route), grown)
    routes = set(answered) | set(fallbacks) | set(states) | set(ttft) | set(deployments.values())
    return {r: RouteFigures(answered.get(r), fallbacks.get(r), states.get(r), prompt.get(r), generation.get(r),
                            ttft.get(r)) for r in routes}


def merge_buckets(a: promtext.Buckets | None, b: promtext.Buckets | None) -> promtext.Buckets | None:
    """Two histograms of the same bounds, added (series of several deployments)."""
    if not a or not b:
        return a or b
    return {le: a.get(le, 0.0) + b.get(le, 0.0) for le in set(a) | set(b)}


STATE_WORDS = {0.0: "ok", 1.0: "failing", 2.0: "cooldown"}


def state_of(facts: UnitFacts | None, answer: Answer | None, *, busy: bool, draining: bool,
             ready_timeout: float, now_usec: float) -> tuple[str, str]:
    """A service's state word and why: its unit's state first (a process that died is
    ``failed`` also while systemd waits to restart it), then its answer (``loading`` while a
    model loads, or while a unit just started has not answered within its readiness
    timeout), then whether it is doing anything (``serving``) or not (``idle``)."""
    detail = answer.detail if answer is not None else ""
    if facts is not None:
        active, sub = facts.active_state, facts.sub_state
        if active == "failed" or (active == "activating" and sub == "auto-restart"):
            why = facts.last_exit or facts.result
            return "failed", (f"{why}; restarting" if sub == "auto-restart" else why)
        if active == "inactive":
            return "stopped", ""
        if active == "deactivating":
            return "stopping", ""
        if active == "activating":
            return ("loading" if answer is not None and answer.loading else "starting"), detail
    if answer is None:
        return "unknown", ""
    if draining:
        return "draining", "out of the gateway's rotation"
    if answer.loading:
        return "loading", detail
    if answer.refused:
        return "no metrics", detail
    if not answer.ok:
        if facts is not None and facts.active_state == "active" and facts.active_enter_monotonic_usec:
            up = (now_usec - facts.active_enter_monotonic_usec) / 1e6
            if up < ready_timeout:
                return "loading", detail
        return "no answer", detail
    return ("serving" if busy else "idle"), detail


def _model(target: Target) -> str | None:
    if target.model_link is None:
        return target.model
    try:
        return os.path.basename(os.readlink(target.model_link))
    except OSError:
        return os.path.basename(target.model_link)


def frame(targets: list[Target], history: list[Sample], *, rate_window: float = RATE_WINDOW,
          ttft_window: float = TTFT_WINDOW) -> Frame:
    """What the screen shows from the samples kept (oldest first)."""
    newest = history[-1]
    now_usec = newest.at * 1e6
    own: dict[str, Figures] = {}
    gauges_now: dict[str, tuple[int | None, int | None]] = {}
    routes: list[RouteRow] = []
    per_service: dict[str, list[RouteFigures]] = {}
    window = None
    for t in targets:
        answer = newest.answers.get(t.name)
        if t.signals is None or answer is None or answer.samples is None:
            continue
        base = _base(history, t.name, rate_window)
        old = base.samples if base is not None else None
        seconds = answer.at - base.at if base is not None else 0.0
        if base is not None:
            window = max(window or 0.0, seconds)
        ttft_base = _base(history, t.name, ttft_window)
        ttft_old = ttft_base.samples if ttft_base is not None else None
        own[t.name] = service_figures(t.signals, old, answer.samples, seconds, ttft_old)
        gauges_now[t.name] = gauges(t.signals, answer.samples)
        if t.route_signals is None:
            continue
        by_route = route_figures(t.route_signals, old, answer.samples, seconds, ttft_old)
        for route, reaches in t.routes.items():
            rf = by_route.get(route)
            if rf is None:
                routes.append(RouteRow(t.name, route, reaches, None, None, None, Figures()))
                continue
            shared = ((rf.fallbacks or 0.0) / ((rf.answered or 0.0) + rf.fallbacks)
                      if rf.fallbacks is not None and (rf.answered or 0.0) + rf.fallbacks > 0 else
                      (0.0 if rf.answered else None))
            answered = (rf.answered or 0.0) + (rf.fallbacks or 0.0) if base is not None else None
            p50, p95 = _quantiles(rf.ttft)
            routes.append(RouteRow(t.name, route, reaches, answered, shared,
                                   STATE_WORDS.get(rf.state) if rf.state is not None else None,
                                   Figures(rf.answered, rf.prompt, rf.generation, p50, p95)))
            if reaches is not None:
                per_service.setdefault(reaches, []).append(rf)
    rows = []
    for t in targets:
        facts = newest.facts.get(t.facts_key) if t.facts_key else None
        answer = newest.answers.get(t.name)
        figures = own.get(t.name, Figures())
        figures, via = _with_gateway(figures, per_service.get(t.name, []), t.signals, window is not None)
        running, queued = gauges_now.get(t.name, (None, None))
        busy = bool(running) or bool(queued) or any(
            (getattr(figures, f) or 0) > 0 for f in ("req_s", "prompt_tps", "gen_tps"))
        state, detail = state_of(facts, answer, busy=busy, draining=t.name in newest.draining,
                                 ready_timeout=t.ready_timeout, now_usec=now_usec)
        memory = None
        if facts is not None:
            memory = facts.memory_bytes if facts.memory_bytes is not None else (
                rss(facts.main_pid) if facts.main_pid else None)
        rows.append(ServiceRow(t.name, t.kind, state, detail, _model(t), running, queued, figures, via,
                               facts.n_restarts if facts is not None else None, memory, newest.gpu.get(t.name)))
    notes = [newest.note] if newest.note else []
    return Frame(rows, routes, notes, window)


def _with_gateway(figures: Figures, seen: list[RouteFigures], signals: Signals | None,
                  rated: bool) -> tuple[Figures, frozenset[str]]:
    """``figures`` with what the server does not expose itself taken from the routes to it
    (a server without metrics, or llama-server, which counts no requests)."""
    if not seen:
        return figures, frozenset()
    values = dict(figures.__dict__)
    via: set[str] = set()
    own = signals or Signals()

    def add(field_: str, exposed: object, values_: list[float | None]) -> None:
        if exposed or not rated:
            return
        known = [v for v in values_ if v is not None]
        if known:
            values[field_] = sum(known)
            via.add(field_)

    add("req_s", own.requests, [rf.answered for rf in seen])
    add("prompt_tps", own.prompt_tokens, [rf.prompt for rf in seen])
    add("gen_tps", own.generation_tokens, [rf.generation for rf in seen])
    if not own.ttft:
        merged = None
        for rf in seen:
            merged = merge_buckets(merged, rf.ttft)
        p50, p95 = _quantiles(merged)
        if p50 is not None:
            values["ttft_p50"], values["ttft_p95"] = p50, p95
            via |= {"ttft_p50", "ttft_p95"}
    return Figures(**values), frozenset(via)


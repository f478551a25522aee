"""Is a service answering? Per-kind probes, and readiness waits with honest deadlines.

A *shallow* probe asks the cheap endpoint (``labctl status``); a *deep* probe also asks for
one real token, because answering ``/health`` is not serving: a server can be up while its
model or engine cannot produce a token (vLLM's engine dying, a model llama.cpp cannot run).
Readiness waits use deep probes. Every probe has a timeout: a hung backend costs at most
that timeout, never more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from labctl.host import secrets
from labctl.inventory.schema import (
    External,
    Inventory,
    Listener,
    LiteLLM,
    LlamaCppPython,
    LlamaServer,
    Ollama,
    Redis,
    RedisExporter,
    Vllm,
)
from labctl.render.gateway import base_url


@dataclass(frozen=True)
class ProbeResult:
    service: str
    ok: bool
    check: str        # what was asked, e.g. "GET /health"
    status: int | None
    latency_ms: float
    detail: str       # one line: "ready", "loading model", "connection refused", ...

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class _Probe:
    """One probe's requests share one deadline: a probe that asks two endpoints still
    finishes within its timeout."""

    def __init__(self, name: str, client: httpx.Client, timeout: float) -> None:
        self.name, self.client, self.started = name, client, time.monotonic()
        self.deadline = self.started + timeout
        self.check: str = ""
        self.status: int | None = None

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise httpx.TimeoutException("probe deadline passed")
        return left

    def get(self, url: str, **kw: object) -> httpx.Response:
        self.check = f"GET {httpx.URL(url).path}"
        resp = self.client.get(url, timeout=self._left(), **kw)  # type: ignore[arg-type]
        self.status = resp.status_code
        return resp

    def post(self, url: str, **kw: object) -> httpx.Response:
        self.check = f"POST {httpx.URL(url).path}"
        resp = self.client.post(url, timeout=self._left(), **kw)  # type: ignore[arg-type]
        self.status = resp.status_code
        return resp

    def result(self, ok: bool, detail: str) -> ProbeResult:
        ms = round((time.monotonic() - self.started) * 1000, 1)
        return ProbeResult(self.name, ok, self.check, self.status, ms, detail)


def gateway_key(inv: Inventory, gw: LiteLLM) -> str | None:
    ref = gw.master_key
    path = Path(inv.host.expand(ref.env_file)) if ref.env_file else None
    try:
        return secrets.env_or_file(path, ref.variable)
    except OSError:
        return None


def _one_token(p: _Probe, url: str, model: str) -> ProbeResult | None:
    resp = p.post(f"{url}/v1/completions", json={"model": model, "prompt": "Hello", "max_tokens": 1,
                                                  "temperature": 0})
    if resp.status_code != 200:
        return p.result(False, f"completion failed: HTTP {resp.status_code} {resp.text[:120]!r}")
    return None


def _ollama_tags(p: _Probe, url: str, models: list[str]) -> ProbeResult:
    resp = p.get(f"{url}/api/version")
    if resp.status_code != 200:
        return p.result(False, f"/api/version answered HTTP {resp.status_code}")
    resp = p.get(f"{url}/api/tags")
    if resp.status_code != 200:
        return p.result(False, f"/api/tags answered HTTP {resp.status_code}")
    have = {m.get("name") for m in resp.json().get("models", [])}
    missing = [m for m in models if m not in have]
    if missing:
        return p.result(True, f"ready; models not pulled: {', '.join(missing)}")
    return p.result(True, "ready")


def _openai_models(p: _Probe, url: str, models: list[str]) -> ProbeResult | None:
    """None when /v1/models lists every one of ``models``."""
    resp = p.get(f"{url}/v1/models")
    if resp.status_code != 200:
        return p.result(False, f"/v1/models answered HTTP {resp.status_code}")
    ids = [m.get("id") for m in resp.json().get("data", [])]
    missing = [m for m in models if m not in ids]
    if missing:
        return p.result(False, f"serves {ids}, not {', '.join(map(repr, missing))}")
    return None


def _redis_ping(inv: Inventory, svc: Redis, p: _Probe) -> ProbeResult:
    """AUTH then PING in Redis's protocol, on one connection, within the probe's deadline."""
    import socket

    from labctl.render.gateway import reach

    p.check = "AUTH + PING"
    ref = svc.password
    try:
        password = secrets.env_or_file(Path(inv.host.expand(ref.env_file)) if ref.env_file else None, ref.variable)
    except OSError:
        password = None
    if password is None:
        return p.result(False, "password not readable; cannot authenticate")
    blob = password.encode()
    command = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(blob), blob)
    try:
        with socket.create_connection((reach(inv.bind_of(svc)), svc.port), timeout=p._left()) as conn:
            conn.settimeout(p._left())
            conn.sendall(command)
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                answer += chunk
    except ConnectionRefusedError:
        return p.result(False, "connection refused")
    except (socket.timeout, TimeoutError):
        raise httpx.TimeoutException("no answer") from None
    except OSError as exc:
        return p.result(False, f"{type(exc).__name__}: {str(exc)[:100]}")
    replies = answer.split(b"\r\n")
    if replies[:2] == [b"+OK", b"+PONG"]:
        return p.result(True, "ready")
    if replies and replies[0].startswith(b"-LOADING"):
        return p.result(False, "loading the dataset")
    first = replies[0][:80].decode("ascii", "replace") if replies else "nothing"
    return p.result(False, f"answered {first!r}")


def _probe(inv: Inventory, name: str, svc: Listener, p: _Probe, deep: bool) -> ProbeResult:
    if isinstance(svc, Redis):
        return _redis_ping(inv, svc, p)
    url = base_url(inv, svc)
    if isinstance(svc, RedisExporter):
        resp = p.get(f"{url}/metrics")
        if resp.status_code != 200:
            return p.result(False, f"/metrics answered HTTP {resp.status_code}")
        up = [line for line in resp.text.splitlines() if line.startswith("redis_up ")]
        if not up:
            return p.result(False, "no redis_up in /metrics")
        return p.result(True, "ready") if up[0].split()[-1] == "1" else p.result(False, "redis_up 0: it cannot reach or log in to its Redis")
    if isinstance(svc, LlamaServer):
        resp = p.get(f"{url}/health")
        if resp.status_code == 503:
            return p.result(False, "loading model")
        if resp.status_code != 200:
            return p.result(False, f"/health answered HTTP {resp.status_code}")
        if deep and (bad := _one_token(p, url, svc.alias)):
            return bad
        return p.result(True, "ready")
    if isinstance(svc, (LlamaCppPython, Vllm)):
        if isinstance(svc, Vllm):
            resp = p.get(f"{url}/health")
            if resp.status_code != 200:
                return p.result(False, f"/health answered HTTP {resp.status_code}")
        served = svc.alias if isinstance(svc, LlamaCppPython) else svc.served_model_name
        if bad := _openai_models(p, url, [served]):
            return bad
        # vLLM: only a token proves the engine behind the API server can serve.
        if (deep or isinstance(svc, Vllm)) and (bad := _one_token(p, url, served)):
            return bad
        return p.result(True, "ready")
    if isinstance(svc, Ollama) or (isinstance(svc, External) and svc.api == "ollama"):
        return _ollama_tags(p, url, list(svc.models))
    if isinstance(svc, External):
        if bad := _openai_models(p, url, list(svc.models)):
            return bad
        if deep and (bad := _one_token(p, url, svc.models[0])):
            return bad
        return p.result(True, "ready")
    if isinstance(svc, LiteLLM):
        resp = p.get(f"{url}/health/liveliness")
        if resp.status_code != 200:
            return p.result(False, f"/health/liveliness answered HTTP {resp.status_code}")
        key = gateway_key(inv, svc)
        if key is None:
            return p.result(False, "master key not readable; cannot check /v1/models")
        resp = p.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        if resp.status_code != 200:
            return p.result(False, f"/v1/models answered HTTP {resp.status_code}")
        routes = sorted(m.get("id") for m in resp.json().get("data", []))
        # LiteLLM lists the aliases beside the routes.
        want = sorted([r.name for r in svc.routes] + list(svc.aliases))
        if routes != want:
            return p.result(False, f"gateway lists {routes}, inventory routes and aliases are {want}")
        return p.result(True, "ready")
    return p.result(False, f"no probe for kind {svc.kind}")  # type: ignore[attr-defined]


def probe(inv: Inventory, name: str, *, timeout: float = 5.0, deep: bool = False) -> ProbeResult:
    svc = inv.services[name]
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        p = _Probe(name, client, timeout)
        try:
            return _probe(inv, name, svc, p, deep)
        except httpx.TimeoutException:
            return p.result(False, f"no answer within {timeout:g}s")
        except httpx.ConnectError:
            return p.result(False, "connection refused")
        except (httpx.HTTPError, ValueError) as exc:
            return p.result(False, f"{type(exc).__name__}: {str(exc)[:120]}")


def probe_all(inv: Inventory, names: list[str], *, timeout: float = 5.0) -> dict[str, ProbeResult]:
    """All probes at once: the slowest bounds the total, and each is bounded by timeout."""
    if not names:
        return {}
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {n: pool.submit(probe, inv, n, timeout=timeout) for n in names}
        return {n: f.result() for n, f in futures.items()}


@dataclass(frozen=True)
class Readiness:
    service: str
    ready: bool
    seconds: float
    last: ProbeResult
    reason: str


def wait_ready(inv: Inventory, name: str, *, deadline_sec: float, alive: Callable[[], str | None],
               interval: float = 0.5, on_wait: Callable[[ProbeResult], None] | None = None) -> Readiness:
    """Poll a deep probe until it passes, the deadline passes, or ``alive()`` reports why
    the unit cannot come up (failed, restarting): a dead unit is not waited for."""
    start = time.monotonic()
    last = ProbeResult(name, False, "", None, 0.0, "not probed yet")
    while True:
        last = probe(inv, name, timeout=min(30.0, max(5.0, deadline_sec / 4)), deep=True)
        elapsed = time.monotonic() - start
        if last.ok:
            return Readiness(name, True, round(elapsed, 2), last, "ready")
        dead = alive()
        if dead:
            return Readiness(name, False, round(elapsed, 2), last, dead)
        if elapsed >= deadline_sec:
            return Readiness(name, False, round(elapsed, 2), last,
                             f"not ready within {deadline_sec:g}s (last probe: {last.check}: {last.detail})")
        if on_wait:
            on_wait(last)
        time.sleep(interval)

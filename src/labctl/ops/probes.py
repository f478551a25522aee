"""Is a service answering? Per-kind probes, and readiness waits with honest deadlines.

A *shallow* probe asks the cheap endpoint (``labctl status``); a *deep* probe also asks for
one real token, because answering ``/health`` is not serving: a server can be up while its
model or engine cannot produce a token (vLLM's engine dying, a model llama.cpp cannot run).
Readiness waits use deep probes. Every probe has a timeout: a hung backend costs at most
that timeout, never more.

A probe is planned from the inventory (:func:`spec_of`: the kind's recipe, the URL, the
names it must serve, where a key is kept, never the key itself) and run from that plan
(:func:`run`) over a socket, one HTTP/1.1 request per connection (``Connection: close``),
written and read by h11 (httpx's own HTTP/1.1 layer): ``labctl status`` runs the same plans
from its snapshot without loading the inventory (labctl.ops.status), and pays neither
httpx's import nor http.client's (its email parser) for a few loopback GETs.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from labctl.records import Record

if TYPE_CHECKING:
    import socket
    import ssl
    from collections.abc import Callable

    from labctl.inventory.schema import Inventory
    from labctl.kinds.litellm import LiteLLM

# `labctl status` from its snapshot (labctl.__main__) imports this module before it starts
# systemctl: the modules a probe needs on the wire (socket, h11, urllib.parse; json for a
# JSON answer) are imported by the probes themselves, so that their import runs while
# systemctl works.


def in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Run ``fn`` in a thread now; the returned call waits for its result (or raises its
    exception). A daemon thread: it does not hold up the interpreter's exit."""
    box: list[tuple[bool, Any]] = []

    def target() -> None:
        try:
            box.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, who raises it
            box.append((False, exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()

    def result() -> Any:
        thread.join()
        ok, value = box[0]
        if not ok:
            raise value
        return value

    return result


class ProbeResult(Record):
    __slots__ = ("service", "ok", "check", "status", "latency_ms", "detail")
    service: str
    ok: bool
    check: str        # what was asked, e.g. "GET /health"
    status: int | None
    latency_ms: float
    detail: str       # one line: "ready", "loading model", "connection refused", ...


class ProbeTimeout(Exception):
    """The probe's deadline passed (or a read timed out within it)."""


class Secret(Record):
    """Where a probe finds a key when it runs: an env file (or None: labctl's own
    environment) and the variable. The value itself is never part of a plan."""

    __slots__ = ("env_file", "variable")
    env_file: str | None
    variable: str

    def value(self) -> str | None:
        """The file's value (None when the file is missing or unreadable), else this
        process' environment's."""
        from labctl.host import secrets

        try:
            return secrets.env_or_file(self.env_file, self.variable)
        except (OSError, UnicodeError):
            return None


class ProbeSpec(Record):
    """One service's probe, planned from the inventory: JSON-able, no secret values.

    ``recipe``: health:PATH (llama-server's /health), openai-models (llama-cpp-python), vllm, ollama, external
    (an OpenAI-compatible server labctl does not run), litellm, redis, redis-exporter, or
    ``none:KIND`` (no probe for that kind)."""

    __slots__ = ("service", "recipe", "url", "host", "port", "models", "key")
    service: str
    recipe: str
    url: str                  # base URL (redis: unused)
    host: str                 # redis: the address to reach it on
    port: int
    models: list[str]         # names it must serve (litellm: routes and aliases)
    key: Secret | None        # a keyed backend's API key, the gateway's master key, Redis's password
    _defaults = {"url": "", "host": "", "port": 0, "key": None}
    _factories = {"models": list}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeSpec:
        key = data.get("key")
        return cls(**{**data, "key": Secret(**key) if key else None})


class _Response:
    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code, self._body = status_code, body

    @property
    def text(self) -> str:
        return self._body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        import json

        return json.loads(self._body)


MAX_ANSWER = 8 << 20  # bytes: no probe answer is near this; a runaway one is cut


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection; the host as bytes, so that an address needs no IDNA codec (its
    import: encodings.idna, stringprep)."""
    import socket

    return socket.create_connection((host.encode("ascii"), port), timeout=timeout)


class _Probe:
    """One probe's requests share one deadline: a probe that asks two endpoints still
    finishes within its timeout. Plain ``http://`` on loopback: one connection a request."""

    def __init__(self, name: str, timeout: float, headers: dict[str, str] | None = None) -> None:
        self.name, self.started, self.headers = name, time.monotonic(), dict(headers or {})
        self.deadline = self.started + timeout
        self.check: str = ""
        self.status: int | None = None

    def _left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ProbeTimeout("probe deadline passed")
        return left

    def _request(self, method: str, url: str, headers: dict[str, str] | None, body: object) -> _Response:
        from urllib.parse import urlsplit

        import h11

        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a plain http:// URL: {url[:80]!r}")
        host, port, path = parts.hostname, parts.port or 80, parts.path or "/"
        self.check = f"{method} {path}"
        if body is None:
            data = b""
        else:
            import json  # a deep probe's POST only

            data = json.dumps(body).encode()
        sent = {"Host": f"[{host}]:{port}" if ":" in host else f"{host}:{port}", "User-Agent": "labctl",
                "Accept": "*/*", "Connection": "close", **self.headers, **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        sent["Content-Length"] = str(len(data))
        conn = h11.Connection(h11.CLIENT)
        try:
            request = conn.send(h11.Request(method=method, target=path + (f"?{parts.query}" if parts.query else ""),
                                            headers=list(sent.items())))
        except (h11.LocalProtocolError, UnicodeError):
            # A header value HTTP/1.1 cannot carry (a NUL, a non-ASCII character): h11's
            # message quotes the value, and a header may be a key. Never in a detail.
            raise ValueError("the request cannot be written: a header holds a character HTTP/1.1 does not "
                             "carry") from None
        request += (conn.send(h11.Data(data=data)) if data else b"") + conn.send(h11.EndOfMessage())
        try:
            sock = _connect(host, port, self._left())
        except (TimeoutError, BlockingIOError):
            raise ProbeTimeout("connect timed out") from None
        except OSError as exc:
            raise ConnectionRefusedError(str(exc)) from None
        status, chunks, size, received = None, [], 0, 0
        try:
            sock.settimeout(self._left())
            sock.sendall(request)
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    sock.settimeout(self._left())
                    chunk = sock.recv(65536)
                    received += len(chunk)
                    conn.receive_data(chunk)  # b"": the server closed the connection
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > MAX_ANSWER:
                        raise ValueError(f"answer larger than {MAX_ANSWER} bytes")
                    chunks.append(bytes(event.data))
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        except TimeoutError:
            raise ProbeTimeout("read timed out") from None
        except h11.RemoteProtocolError as exc:
            why = exc if received else "the connection closed without one"
            raise ValueError(f"not an HTTP answer: {why}") from None
        finally:
            sock.close()
        assert status is not None  # h11 gives the Response before any Data or the EndOfMessage
        self.status = status
        return _Response(status, b"".join(chunks))

    def get(self, url: str, headers: dict[str, str] | None = None) -> _Response:
        return self._request("GET", url, headers, None)

    def post(self, url: str, json: object = None) -> _Response:
        return self._request("POST", url, None, json)

    def result(self, ok: bool, detail: str) -> ProbeResult:
        ms = round((time.monotonic() - self.started) * 1000, 1)
        return ProbeResult(self.name, ok, self.check, self.status, ms, detail)


_TLS: list[ssl.SSLContext] = []


def plain_http_tls() -> ssl.SSLContext:
    """``verify=`` for an httpx client that only ever asks plain ``http://`` URLs (vLLM's
    metrics, a remote endpoint's reachability). By default each client loads the CA bundle,
    ~20 ms of CPU per client; this context loads none and keeps verification on, so an
    https URL would fail its handshake, never pass unverified."""
    if not _TLS:  # two threads may both make one: either will do
        import ssl

        _TLS.append(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    return _TLS[0]


def _secret_ref(inv: Inventory, ref: Any) -> Secret:
    return Secret(inv.host.expand(ref.env_file) if ref.env_file else None, ref.variable)


def gateway_key(inv: Inventory, gw: LiteLLM) -> str | None:
    return _secret_ref(inv, gw.master_key).value()


def spec_of(inv: Inventory, name: str) -> ProbeSpec:
    """The probe of service ``name``, planned from the inventory by its kind (labctl.kinds)."""
    from labctl.kinds import kind_of

    svc = inv.services[name]
    return ProbeSpec.from_dict(kind_of(svc).probe(inv, name, svc))


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


def _redis_ping(spec: ProbeSpec, p: _Probe) -> ProbeResult:
    """AUTH then PING in Redis's protocol, on one connection, within the probe's deadline."""
    p.check = "AUTH + PING"
    password = spec.key.value() if spec.key else None
    if password is None:
        return p.result(False, "password not readable; cannot authenticate")
    blob = password.encode()
    command = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n*1\r\n$4\r\nPING\r\n" % (len(blob), blob)
    try:
        conn = _connect(spec.host, spec.port, p._left())
        try:
            conn.settimeout(p._left())
            conn.sendall(command)
            answer = b""
            while answer.count(b"\r\n") < 2:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                answer += chunk
        finally:
            conn.close()
    except ConnectionRefusedError:
        return p.result(False, "connection refused")
    except TimeoutError:
        raise ProbeTimeout("no answer") from None
    except OSError as exc:
        return p.result(False, f"{type(exc).__name__}: {str(exc)[:100]}")
    replies = answer.split(b"\r\n")
    if replies[:2] == [b"+OK", b"+PONG"]:
        return p.result(True, "ready")
    if replies and replies[0].startswith(b"-LOADING"):
        return p.result(False, "loading the dataset")
    first = replies[0][:80].decode("ascii", "replace") if replies else "nothing"
    return p.result(False, f"answered {first!r}")


def _probe(spec: ProbeSpec, p: _Probe, deep: bool) -> ProbeResult:
    recipe, url = spec.recipe, spec.url
    if recipe == "redis":
        return _redis_ping(spec, p)
    if recipe == "redis-exporter":
        resp = p.get(f"{url}/metrics")
        if resp.status_code != 200:
            return p.result(False, f"/metrics answered HTTP {resp.status_code}")
        up = [line for line in resp.text.splitlines() if line.startswith("redis_up ")]
        if not up:
            return p.result(False, "no redis_up in /metrics")
        return p.result(True, "ready") if up[0].split()[-1] == "1" else p.result(False, "redis_up 0: it cannot reach or log in to its Redis")
    if recipe.startswith("health:"):
        # A health path (503 while the model loads, 200 when ready: llama-server's /health),
        # then (deep) one token of the model it serves.
        path = recipe.removeprefix("health:")
        resp = p.get(url + path)
        if resp.status_code == 503:
            return p.result(False, "loading model")
        if resp.status_code != 200:
            return p.result(False, f"{path} answered HTTP {resp.status_code}")
        if deep and (bad := _one_token(p, url, spec.models[0])):
            return bad
        return p.result(True, "ready")
    if recipe in ("openai-models", "vllm"):
        if recipe == "vllm":
            resp = p.get(f"{url}/health")
            if resp.status_code != 200:
                return p.result(False, f"/health answered HTTP {resp.status_code}")
        if bad := _openai_models(p, url, spec.models):
            return bad
        # vLLM: only a token proves the engine behind the API server can serve.
        if (deep or recipe == "vllm") and (bad := _one_token(p, url, spec.models[0])):
            return bad
        return p.result(True, "ready")
    if recipe == "ollama":
        return _ollama_tags(p, url, spec.models)
    if recipe == "external":
        if bad := _openai_models(p, url, spec.models):
            return bad
        if deep and (bad := _one_token(p, url, spec.models[0])):
            return bad
        return p.result(True, "ready")
    if recipe == "litellm":
        resp = p.get(f"{url}/health/liveliness")
        if resp.status_code != 200:
            return p.result(False, f"/health/liveliness answered HTTP {resp.status_code}")
        key = spec.key.value() if spec.key else None
        if key is None:
            return p.result(False, "master key not readable; cannot check /v1/models")
        resp = p.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        if resp.status_code != 200:
            return p.result(False, f"/v1/models answered HTTP {resp.status_code}")
        routes = sorted(m.get("id") for m in resp.json().get("data", []))
        # LiteLLM lists the aliases beside the routes.
        if routes != spec.models:
            return p.result(False, f"gateway lists {routes}, inventory routes and aliases are {spec.models}")
        return p.result(True, "ready")
    return p.result(False, f"no probe for kind {recipe.removeprefix('none:')}")


def _load_wire() -> None:
    """Import what a probe speaks with, before its clock starts: its latency is the server's,
    not an import's (the first probe imports them, the others wait for it)."""
    import socket  # noqa: F401
    import urllib.parse  # noqa: F401

    import h11  # noqa: F401


def run(spec: ProbeSpec, *, timeout: float = 5.0, deep: bool = False) -> ProbeResult:
    """Run one planned probe, bounded by ``timeout``."""
    _load_wire()
    headers: dict[str, str] = {}
    if spec.key is not None and spec.recipe not in ("redis", "litellm"):
        value = spec.key.value()
        if value is not None:
            headers["Authorization"] = f"Bearer {value}"
    p = _Probe(spec.service, timeout, headers)
    try:
        return _probe(spec, p, deep)
    except ProbeTimeout:
        return p.result(False, f"no answer within {timeout:g}s")
    except ConnectionRefusedError:
        return p.result(False, "connection refused")
    except (OSError, ValueError, AttributeError, TypeError, KeyError, IndexError) as exc:
        # A refused read, a torn or malformed answer (JSON of another shape): the answer.
        return p.result(False, f"{type(exc).__name__}: {str(exc)[:120]}")


def probe(inv: Inventory, name: str, *, timeout: float = 5.0, deep: bool = False) -> ProbeResult:
    return run(spec_of(inv, name), timeout=timeout, deep=deep)


def start_all(specs: list[ProbeSpec], *, timeout: float = 5.0) -> Callable[[], dict[str, ProbeResult]]:
    """Start every probe now, each in its own thread; the returned call waits for them all
    (the slowest bounds the total, and each is bounded by timeout). The caller does its own
    waiting meanwhile (status: ``systemctl --user show``)."""
    waits = [(spec.service, in_thread(lambda spec=spec: run(spec, timeout=timeout))) for spec in specs]
    return lambda: {service: wait() for service, wait in waits}


def run_all(specs: list[ProbeSpec], *, timeout: float = 5.0) -> dict[str, ProbeResult]:
    """All probes at once: the slowest bounds the total, and each is bounded by timeout."""
    return start_all(specs, timeout=timeout)()


def probe_all(inv: Inventory, names: list[str], *, timeout: float = 5.0) -> dict[str, ProbeResult]:
    return run_all([spec_of(inv, n) for n in names], timeout=timeout)


class Readiness(Record):
    __slots__ = ("service", "ready", "seconds", "last", "reason")
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

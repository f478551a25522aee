"""Ask the running LiteLLM gateway whether every route and every fallback chain answers.

Two kinds of checks, each one chat completion of at most one token:

* **route**: the route itself. It is ok when the gateway answers 200 *from that route*;
  an answer that came from a fallback means the route's own backend is failing, which is
  exactly what an operator running the check wants to hear about.
* **fallback**: for each ``primary: [target, ...]`` chain of the inventory, one request per
  target, sent to the *primary*, in which the primary fails on purpose and the target
  must answer as its fallback.

How a primary is made to fail without any dangerous setting (measured on LiteLLM 1.106.2):

* ``mock_testing_fallbacks`` and the other ``mock_testing_*``/``mock_timeout`` parameters
  are refused with 400 unless ``general_settings.dangerously_allow_mock_testing_request_params``
  is on, which labctl never renders.
* ``mock_response`` is silently stripped from request bodies (it is kept only for keys or
  teams whose metadata allows it, which needs LiteLLM's database).
* ``api_base``/``base_url`` in the body are refused with 400 (client-side endpoints are an
  SSRF hole).
* A caller-set ``timeout`` of a microsecond is honoured, but it is racy: when the gateway's
  event loop is busy (right after another request) a fast backend's answer arrives first
  and the primary "succeeds"; it also reaches the primary's backend.
* What works: a fallback named in the request body may be an object whose keys override
  the request for that hop. The request to the primary carries a user message whose
  content part has a type LiteLLM does not know; LiteLLM's own message validation rejects
  it inside the primary's hop, before any byte is sent to its backend, on every provider.
  The fallback object ``{"model": TARGET, "messages": [valid]}`` then sends a valid
  message to the target. LiteLLM reports the primary's failure as an APIConnectionError,
  which it never counts towards putting a deployment into cooldown (measured: 20 forced
  failures within a minute left the primary serving), so the check leaves real traffic
  alone. ``num_retries: 0`` skips the retry (and its back-off) of the doomed attempt.

The body's ``fallbacks`` replace the configured chain for that request, so a fallback
check proves that the gateway can fall back from the primary to each target and that the
target answers there; it does not read the configured order back. (The integration tests
prove the rendered chain itself, with the primary's server really stopped.) Each fallback
check is also one successful fallback in LiteLLM's metrics
(``litellm_deployment_successful_fallbacks_total``, ``exception_status="500"``); a check
now and then leaves LabctlFallbackShareHigh alone, which ignores a route answered less
than once a minute. The forced
failure also shows in ``litellm_deployment_failure_responses_total`` of the primary.

Results never hold the gateway key, nor any header of the answer.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

from labctl.errors import OperationFailed
from labctl.host.proc import CommandFailed, CommandTimeout, run_cmd
from labctl.kinds.litellm.fallbacks import CATCH_ALL
from labctl.inventory.schema import Inventory
from labctl.kinds.litellm import LiteLLM
from labctl.kinds import kind_of
from labctl.kinds.litellm.config import route_params

__all__ = [
    "FORCED_FAILURE_MESSAGES",
    "RouteResult",
    "all_ok",
    "check_gateway",
    "gateway_of",
    "litellm_supports_prometheus",
]

# The message that makes the primary of a fallback check fail inside LiteLLM, before its
# backend is contacted: a content part of a type LiteLLM's validation refuses.
FORCED_FAILURE_MESSAGES = [{"role": "user", "content": [{"type": "labctl-forced-failure", "text": "x"}]}]
GROUP_HEADER = "x-litellm-model-group"
FALLBACKS_HEADER = "x-litellm-attempted-fallbacks"
API_BASE_HEADER = "x-litellm-model-api-base"
PROMPT = [{"role": "user", "content": "labctl gateway check: answer with one token."}]
ERROR_LIMIT = 240

CheckKind = Literal["route", "alias", "fallback"]


@dataclass(frozen=True)
class RouteResult:
    """One request to the gateway and what came of it.

    ``route`` is the model asked for; for a fallback check, ``fallback_to`` is the chain
    target that had to answer. ``answered_by`` is the route (LiteLLM model group) that did
    answer, ``backend`` the inventory service behind it.
    """

    check: CheckKind
    route: str
    fallback_to: str | None
    status: int | None
    answered_by: str | None
    backend: str | None
    attempted_fallbacks: int | None
    latency_ms: float
    error: str | None

    @property
    def expected(self) -> str:
        return self.fallback_to if self.check in ("fallback", "alias") and self.fallback_to else self.route

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200 and self.answered_by == self.expected

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        return data


def all_ok(results: list[RouteResult]) -> bool:
    return bool(results) and all(r.ok for r in results)


def gateway_of(inv: Inventory) -> tuple[str, LiteLLM]:
    """The enabled gateway's service name and settings (the checks guarantee at most one)."""
    gateways = inv.gateways()
    if not gateways:
        raise OperationFailed("the inventory has no enabled litellm service: there is no gateway to check")
    ((name, gw),) = gateways.items()
    return name, gw


def check_gateway(inv: Inventory, key: str | None = None, *, timeout: float = 60) -> list[RouteResult]:
    """Check every route, then every fallback chain target, in inventory order.

    ``key`` is the gateway's master key, read from where the inventory keeps it when not given;
    it is sent as a bearer token and appears nowhere in the results. ``timeout`` bounds each
    request. The gateway address is the litellm service's bind and port, as a local client
    reaches it.
    """
    _, gw = gateway_of(inv)
    if key is None:
        from labctl.ops.probes import gateway_key

        key = gateway_key(inv, gw)
        if key is None:
            raise OperationFailed(f"cannot read {gw.master_key.variable} "
                                  f"(from {gw.master_key.env_file or 'the environment'})")
    services = {route.name: route.service or f"{route.endpoint} (endpoint)" for route in gw.routes}
    url = kind_of(gw).base_url(inv, gw)
    results: list[RouteResult] = []
    # trust_env=False: a proxy from the environment must never see the key or loopback traffic.
    with httpx.Client(base_url=url, timeout=timeout, trust_env=False,
                      headers={"Authorization": f"Bearer {key}"}) as client:
        bases = {route.name: route_params(inv, gw, route).get("api_base") for route in gw.routes}
        probe = _GatewayAsker(client, url, key, services, bases)
        for route in gw.routes:
            results.append(probe.ask("route", route.name, None, {}))
        for alias, target in gw.aliases.items():
            results.append(probe.ask("alias", alias, target, {}))
        own = {p for p in gw.fallbacks if p != CATCH_ALL}
        for primary, chain in gw.fallbacks.items():
            if primary == CATCH_ALL:
                # The catch-all serves every route without a chain of its own: exercise it
                # from the first such route (the forced body chain is the same for all).
                primary = next((r.name for r in gw.routes if r.name not in own), "")
                if not primary:
                    continue
            for target in chain:
                if target == primary:
                    continue
                forced = {
                    "messages": FORCED_FAILURE_MESSAGES,
                    "num_retries": 0,
                    "fallbacks": [{"model": target, "messages": PROMPT}],
                }
                results.append(probe.ask("fallback", primary, target, forced))
    return results


@dataclass
class _GatewayAsker:
    client: httpx.Client
    url: str
    key: str
    services: dict[str, str]
    api_bases: dict[str, str | None]
    # Once the gateway cannot be reached at all, the remaining checks report that at once
    # instead of each waiting for its own connection failure.
    unreachable: str | None = None

    def ask(self, check: CheckKind, route: str, target: str | None, extra: dict[str, Any]) -> RouteResult:
        def result(status: int | None, answered_by: str | None = None, attempted: int | None = None,
                   error: str | None = None) -> RouteResult:
            backend = self.services.get(answered_by) if answered_by else None
            return RouteResult(check, route, target, status, answered_by, backend, attempted,
                               round((time.monotonic() - started) * 1000, 1),
                               None if error is None else self._scrub(error))

        started = time.monotonic()
        if self.unreachable:
            return result(None, error=self.unreachable)
        body: dict[str, Any] = {"model": route, "messages": PROMPT, "max_tokens": 1, "stream": False}
        body.update(extra)
        try:
            response = self.client.post("/v1/chat/completions", json=body)
        except httpx.TimeoutException:
            return result(None, error=f"no answer from the gateway at {self.url} within "
                                      f"{self.client.timeout.read:g}s")
        except httpx.ConnectError as exc:
            self.unreachable = f"cannot reach the gateway at {self.url}: {exc}"
            return result(None, error=self.unreachable)
        except httpx.TransportError as exc:  # reset or broken mid-request: this check only
            return result(None, error=f"the gateway at {self.url} dropped the request: {type(exc).__name__}: {exc}")
        answered_by = response.headers.get(GROUP_HEADER) if response.status_code == 200 else None
        attempted = _int_or_none(response.headers.get(FALLBACKS_HEADER))
        if response.status_code != 200:
            return result(response.status_code, attempted=attempted,
                          error=_error_line(response, target))
        expected = target or route
        if check == "alias" and answered_by == route:
            # LiteLLM names the group as asked (the alias); the deployment says whose it is.
            served = response.headers.get(API_BASE_HEADER)
            if served != self.api_bases.get(expected):
                return result(200, None, attempted, f"alias {route!r} was served from {served}, not by "
                                                    f"route {expected!r} ({self.api_bases.get(expected)})")
            answered_by = expected
        if answered_by is None:
            error = f"the gateway answered without an {GROUP_HEADER} header; cannot tell who answered"
        elif check == "route" and answered_by != route:
            error = (f"answered by fallback {answered_by!r} (service {self.services.get(answered_by, '?')}) "
                     f"after {attempted or '?'} attempted fallback(s): route {route!r} itself is failing")
        elif check == "fallback" and answered_by == route:
            error = (f"{route!r} answered despite the forced failure; the fallback to {target!r} "
                     "was not exercised")
        elif answered_by != expected:
            error = f"answered by {answered_by!r}, not by the chain target {expected!r}"
        elif check == "fallback" and not attempted:
            error = f"{FALLBACKS_HEADER} says no fallback was attempted"
        else:
            error = None
        return result(200, answered_by, attempted, error)

    def _scrub(self, text: str) -> str:
        if self.key:
            text = text.replace(self.key, "<gateway key>")
        return text


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _error_line(response: httpx.Response, target: str | None) -> str:
    """One line saying why: LiteLLM's error message, shortened."""
    try:
        error = response.json().get("error", {})
        message = str(error.get("message", "")) if isinstance(error, dict) else str(error)
        kind = error.get("type") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        message, kind = response.text, None
    if kind == "no_db_connection":
        # LiteLLM without a database answers an unknown key with 400 "No connected db.".
        return f"HTTP {response.status_code}: the gateway refused the key (is it the master key?)"
    if target is not None and "also failed:" in message:
        # The first part describes the forced failure of the primary; the target's own
        # failure follows.
        message = f"fallback to {target!r} failed: " + message.rsplit("also failed:", 1)[1].strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    line = lines[0] if lines else response.reason_phrase
    if len(line) > ERROR_LIMIT:
        line = line[: ERROR_LIMIT - 3] + "..."
    return f"HTTP {response.status_code}: {line}"


def litellm_supports_prometheus(python: Path, *, timeout: float = 120) -> bool:
    """Whether the gateway's interpreter can run LiteLLM's Prometheus callback.

    Both ``prometheus_client`` and ``litellm.integrations.prometheus`` must import; with
    ``callbacks: ["prometheus"]`` and no ``prometheus_client`` the gateway has no metrics.
    False also when the interpreter cannot be run. Importing LiteLLM takes a few seconds;
    a hang past ``timeout`` raises CommandTimeout (an OperationFailed).
    """
    env = dict(os.environ)
    # Without it, importing litellm fetches a model cost map from the internet.
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    argv = [os.fspath(python), "-c", "import prometheus_client; import litellm.integrations.prometheus"]
    try:
        result = run_cmd(argv, check=False, timeout=timeout, env=env)
    except CommandTimeout:
        raise
    except CommandFailed:
        return False
    return result.rc == 0

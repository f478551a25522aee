"""``kind: litellm``: the LiteLLM proxy, the gateway in front of the backends: routes, aliases,
fallback chains, remote endpoints, a Redis cache.

This package is the kind: its schema models and :class:`LiteLLMKind` here; the config it
renders (``config``), the drain gate and the launcher that config and unit load (``gate``,
``launch``), the keys each LiteLLM version reads (``keys``), its fallback graph
(``fallbacks``) and the checks of a gateway's routes and settings (``checks``).

Measured facts that shape it: it refuses to start without a master key; without
``LITELLM_LOCAL_MODEL_COST_MAP`` it fetches a cost map from the internet at start; its proxy
always picks uvloop, which segfaulted under a backend failure, so its unit starts labctl's
launcher (asyncio); its ``/metrics/`` needs the key unless told otherwise, and labctl tells
it otherwise (the key stays in one file); ``/health/liveliness`` answers once it runs, and
``/v1/models`` (with the key) lists its routes and aliases.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, model_validator

from labctl.fields import (
    NAME_RE,
    ApiBase,
    HostName,
    ModelName,
    Port,
    Runtime,
    SecretRef,
    Settings,
    Strict,
)
from labctl.kinds.base import (
    Kind,
    Listener,
    Panel,
    Per,
    Problem,
    RouteSignals,
    Scrape,
    Secret,
    ServiceBase,
    Signals,
)

if TYPE_CHECKING:
    from labctl.inventory.layout import Layout
    from labctl.inventory.schema import Inventory
    from labctl.kinds.redis import Redis

# LiteLLM's Prometheus callback metric families (measured on litellm 1.106; see
# docs/monitoring.md). Alert rules and dashboards refer to them by these names only, and
# the integration tests check each against a real gateway's /metrics/.
FALLBACKS_METRIC = "litellm_deployment_successful_fallbacks_total"
LATENCY_METRIC = "litellm_request_total_latency_metric"
REQUESTS_METRIC = "litellm_proxy_total_requests_metric_total"
TTFT_METRIC = "litellm_llm_api_time_to_first_token_metric"  # streamed answers only
#: What its /metrics/ says of the whole gateway (labctl top). Its in-flight gauge counts every
#: HTTP request, the metrics request asking it too. An answer costs it 12-13 ms of CPU once
#: a few routes have served (200 kB of text, measured on 1.106 with bench/top_cost.py's
#: stack), 1.3% of a core if read every second: top reads it every 5 s.
SIGNALS = Signals(running=("litellm_in_flight_requests",), requests=REQUESTS_METRIC,
                  prompt_tokens="litellm_input_tokens_metric_total",
                  generation_tokens="litellm_output_tokens_metric_total", ttft=TTFT_METRIC,
                  running_counts_itself=True, min_interval=5.0)
#: ... and per route: a route is a model group (``model_group``, ``requested_model``), its
#: entry in the model list a deployment (``model_id``). Measured on litellm 1.106.
ROUTE_SIGNALS = RouteSignals(
    route="model_group", deployment="model_id",
    answered=Per("litellm_deployment_success_responses_total", "model_group"),
    failed=Per("litellm_deployment_failure_responses_total", "model_group"),
    fallbacks=Per(FALLBACKS_METRIC, "requested_model"),
    prompt_tokens=Per("litellm_input_tokens_metric_total", "model_id"),
    generation_tokens=Per("litellm_output_tokens_metric_total", "model_id"),
    ttft=Per(TTFT_METRIC, "model_id"),
    state=Per("litellm_deployment_state", "model_id"))


class Endpoint(Strict):
    """A model server labctl does not run, reached by the gateway: a cloud provider, another
    box's gateway or server. Its key is a reference only (0600 env file or the manager's
    environment); the gateway's unit loads the file and LiteLLM reads ``os.environ/VAR``."""

    # LiteLLM's provider, the prefix of its model string: openai, ollama_chat, anthropic, ...
    provider: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    api_base: ApiBase
    api_key: SecretRef | None = None


class Route(Strict):
    name: ModelName
    # Exactly one of service (a backend of this inventory) or endpoint (gateway.endpoints).
    service: Annotated[str, Field(pattern=NAME_RE)] | None = None
    endpoint: Annotated[str, Field(pattern=NAME_RE)] | None = None
    # The model name the backend knows. Defaults to what the backend serves
    # (alias / served_model_name); required for Ollama, which serves several, and for endpoints.
    model: ModelName | None = None
    # LiteLLM's per-deployment parameters (rpm, tpm, stream_timeout, extra_body, tags, ...)
    # and model_info (max_input_tokens, ...), beside what labctl sets.
    litellm_params: Settings = {}
    model_info: Settings = {}

    @model_validator(mode="after")
    def _one_target(self) -> "Route":
        if (self.service is None) == (self.endpoint is None):
            raise ValueError("a route names exactly one of service (run here) or endpoint (gateway.endpoints)")
        if self.endpoint is not None and self.model is None:
            raise ValueError("a route to an endpoint needs 'model' (the model name the provider knows)")
        return self


class RedisCache(Strict):
    type: Literal["redis"] = "redis"
    # A kind: redis service of this inventory: host, port and password come from it.
    service: Annotated[str, Field(pattern=NAME_RE)] | None = None
    # Or a Redis labctl does not run.
    host: HostName = "127.0.0.1"
    port: Port = 6379
    password: SecretRef | None = None
    ttl_sec: Annotated[int, Field(ge=1)] = 600

    @model_validator(mode="after")
    def _service_or_address(self) -> "RedisCache":
        if self.service is not None and self.model_fields_set & {"host", "port", "password"}:
            raise ValueError("a cache on a redis service takes its host, port and password from it; "
                             "set service or host/port/password, not both")
        return self


class LiteLLM(ServiceBase):
    kind: Literal["litellm"]
    runtime: Runtime
    port: Port = 4000
    master_key: SecretRef = SecretRef(
        env_file="~/.config/labctl/secrets/litellm.env", var="LITELLM_MASTER_KEY", generate=True
    )
    # Model servers labctl does not run (cloud providers, other boxes), by name, for routes.
    endpoints: dict[Annotated[str, Field(pattern=NAME_RE)], Endpoint] = {}
    routes: Annotated[list[Route], Field(min_length=1)]
    # Other names for routes (LiteLLM's model_group_alias): a request for an alias is
    # served by its route, e.g. {code: qwen2.5-coder:7b}.
    aliases: dict[ModelName, ModelName] = {}
    # Route -> the routes tried in turn when it fails; the key "*" is the catch-all chain
    # for every route without a chain of its own.
    fallbacks: dict[str, list[str]] = {}
    # Route -> the routes tried when a request is too long for its context window.
    context_window_fallbacks: dict[str, list[str]] = {}
    # How many fallback hops LiteLLM takes before giving up (its default is 5). Unset,
    # labctl sets it to the longest walk a chain can take when that exceeds 5.
    max_fallbacks: Annotated[int, Field(ge=1, le=100)] | None = None
    num_retries: Annotated[int, Field(ge=0, le=20)] = 1
    timeout_sec: Annotated[float, Field(gt=0, le=3600)] = 600
    cooldown_sec: Annotated[int, Field(ge=0, le=3600)] = 30
    allowed_fails: Annotated[int, Field(ge=0, le=100)] = 3
    cache: RedisCache | None = None
    # LiteLLM's Prometheus callback (needs prometheus_client in the gateway's venv).
    prometheus_metrics: bool = True
    # LiteLLM's own sections, beside what labctl writes from the typed fields above. Every
    # key must be one the pinned LiteLLM reads; secrets only as os.environ/VAR.
    litellm_settings: Settings = {}
    router_settings: Settings = {}
    general_settings: Settings = {}

    def secret_refs(self) -> list[SecretRef]:
        """Every secret the gateway's process needs: its master key, the cache password,
        the endpoints' keys."""
        refs = [self.master_key] + ([self.cache.password] if self.cache and self.cache.password else [])
        return refs + [e.api_key for e in self.endpoints.values() if e.api_key is not None]


def cache_redis(inv: Inventory, gw: LiteLLM) -> Redis | None:
    """The redis service the gateway's cache names, if it names one."""
    from labctl.kinds.redis import Redis

    if gw.cache is None or gw.cache.service is None:
        return None
    svc = inv.services.get(gw.cache.service)
    return svc if isinstance(svc, Redis) else None


def route_keys(inv: Inventory, gw: LiteLLM) -> list[SecretRef]:
    """The API keys of the backends the gateway's routes reach (it sends them)."""
    from labctl.kinds import kind_of

    refs: list[SecretRef] = []
    for route in gw.routes:
        backend = inv.services.get(route.service or "")
        key = kind_of(backend).api_key(backend) if backend is not None else None
        if key is not None and key not in refs:
            refs.append(key)
    return refs


def gateway_secret_refs(inv: Inventory, gw: LiteLLM) -> list[SecretRef]:
    """The gateway's own secret references, its cache service's password and the keys of
    the backends it routes to: every variable its process reads."""
    redis = cache_redis(inv, gw)
    return gw.secret_refs() + ([redis.password] if redis is not None else []) + route_keys(inv, gw)


class LiteLLMKind(Kind):
    name = "litellm"
    model = LiteLLM
    gateway = True
    start_rank = 2  # after the backends its routes use
    args_start = 2  # python launcher.py
    flag_aliases = {"--config": ("-c",)}
    # LiteLLM's proxy (1.106) checks its port by connecting to the name "localhost".
    resolves = {"localhost": "LiteLLM's proxy looks its port up by that name and exits at start"}
    example = {"kind": "litellm", "bind": "127.0.0.1", "runtime": {"python": "/opt/litellm/bin/python"}, "port": 4000,
               "description": "gateway", "extra_args": ["--num_workers", "1"],
               "environment": {"LITELLM_LOG": "ERROR"}, "environment_files": ["~/.config/gw.env"],
               "read_write_paths": ["~/gw-scratch"],
               "master_key": {"env_file": "~/.config/labctl/secrets/litellm.env", "var": "LITELLM_MASTER_KEY",
                              "generate": True},
               "routes": [{"name": "cloud-model", "endpoint": "cloud", "model": "gpt-x",
                           "litellm_params": {"tags": ["team-a"], "rpm": 60}, "model_info": {"team": "a"}}],
               "endpoints": {"cloud": {"provider": "openai", "api_base": "https://api.example.com/v1",
                                       "api_key": {"env_file": "~/.config/labctl/secrets/cloud.env",
                                                   "var": "CLOUD_API_KEY"}}},
               "aliases": {"fast": "cloud-model"},
               "cache": {"host": "127.0.0.1", "port": 6379, "password": {"env": "REDIS_PW"}}}

    def argv(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
        from labctl.kinds.litellm import launch

        assert isinstance(svc, LiteLLM)
        # proxy_cli's own entry point, on asyncio rather than uvloop (labctl.kinds.litellm.launch)
        return [svc.runtime.interpreter(inv.host), str(layout.installed(layout.litellm_file(launch.MODULE_FILE))),
                "--config", str(layout.installed(layout.litellm_config)), "--host", self.address(inv, svc),
                "--port", str(svc.port)]

    def environment(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> dict[str, str]:
        # Without this LiteLLM fetches a model cost map from the internet at start-up.
        return {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "NO_DOCS": "True"}

    def environment_files(self, inv: Inventory, name: str, svc: ServiceBase) -> list[str]:
        assert isinstance(svc, LiteLLM)
        return [inv.host.expand(ref.env_file) for ref in gateway_secret_refs(inv, svc) if ref.env_file]

    def dependencies(self, inv: Inventory, name: str, svc: ServiceBase) -> list[str]:
        assert isinstance(svc, LiteLLM)
        # An external backend is no unit of this manager: nothing to order against.
        managed = inv.managed()
        deps = dict.fromkeys(r.service for r in svc.routes if r.service is not None and r.service in managed)
        redis = cache_redis(inv, svc)
        if redis is not None and redis.enabled and svc.cache is not None and svc.cache.service is not None:
            deps[svc.cache.service] = None
        return list(deps)

    def colocated(self, name: str, svc: Listener) -> list[tuple[str, tuple, str]]:
        cache = getattr(svc, "cache")
        if cache is None or cache.service is None:
            return []
        return [(cache.service, ("services", name, "cache", "service"), "a gateway's cache runs on its own host")]

    def files(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> dict[str, str]:
        """The config, and what it loads or is started by beside it: the drain gate and the
        launcher. A change to any of them restarts the gateway."""
        from labctl.kinds.litellm import config, gate, launch

        return {layout.litellm_config: config.render(inv, svc),  # type: ignore[arg-type]
                layout.litellm_file(gate.MODULE_FILE): gate.MODULE,
                layout.litellm_file(launch.MODULE_FILE): launch.MODULE}

    def probe(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        from labctl.kinds.base import secret_plan

        assert isinstance(svc, LiteLLM)
        return {"service": name, "recipe": "litellm", "url": self.base_url(inv, svc),
                "models": sorted([r.name for r in svc.routes] + list(svc.aliases)),
                "key": secret_plan(inv, svc.master_key)}

    def scrape(self, inv: Inventory, name: str, svc: Listener) -> Scrape | str:
        if not getattr(svc, "prometheus_metrics"):
            return f"{name}: LiteLLM's prometheus callback is off (prometheus_metrics: false), not scraped"
        return Scrape("litellm", "/metrics/")

    def panels(self, svc: Listener) -> list[Panel]:
        if not getattr(svc, "prometheus_metrics"):
            return []
        answered, state = ROUTE_SIGNALS.answered, ROUTE_SIGNALS.state
        assert state is not None
        return [*super().panels(svc),
                Panel("Answered/s by route", f"sum by ({answered.label}) (rate({answered.family}{{sel}}[5m]))",
                      "reqps"),
                Panel("Latency p95", f"histogram_quantile(0.95, sum by (le) (rate({LATENCY_METRIC}_bucket{{sel}}[5m])))",
                      "s"),
                Panel("Fallbacks/s by route",
                      f"sum by (requested_model) (rate({FALLBACKS_METRIC}{{sel}}[5m]))", "reqps"),
                # 0 healthy, 1 failing, 2 cooling down: the deployments LiteLLM routes around now.
                Panel("Backends cooling down", f"sum(({state.family}{{sel}} == bool 2))", "none")]

    def signals(self, svc: Listener) -> Signals | None:
        return SIGNALS if getattr(svc, "prometheus_metrics") else None

    def route_signals(self, svc: Listener) -> RouteSignals | None:
        return ROUTE_SIGNALS if getattr(svc, "prometheus_metrics") else None

    def route_services(self, svc: Listener) -> dict[str, str | None]:
        assert isinstance(svc, LiteLLM)
        return {r.name: r.service for r in svc.routes}

    def secrets(self, inv: Inventory, name: str, svc: Listener) -> list[Secret]:
        assert isinstance(svc, LiteLLM)
        out = [Secret(f"{name} master key", svc.master_key, svc.master_key.generate)]
        if svc.cache is not None and svc.cache.password is not None:
            out.append(Secret(f"{name} cache password", svc.cache.password, svc.cache.password.generate))
        out += [Secret(f"{name} endpoint {key} key", e.api_key, e.api_key.generate)
                for key, e in svc.endpoints.items() if e.api_key is not None]
        out += [Secret(f"{name} backend key {ref.variable}", ref, False) for ref in route_keys(inv, svc)
                if not ref.generate]
        return out

    def checks(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        from labctl.kinds.litellm import checks

        assert isinstance(svc, LiteLLM)
        yield from checks.gateway(inv, name, svc)

    def warnings(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        from labctl.kinds.litellm import checks, setting_keys

        assert isinstance(svc, LiteLLM)
        yield from checks.warnings(name, svc, setting_keys.shipped())


KIND = LiteLLMKind()

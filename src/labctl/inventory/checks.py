"""Checks that need the whole inventory, not one field.

Each check returns InputErrors pointing at the line the operator must change. The list
is exhaustive on purpose: an operator fixing a file wants every problem at once.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from pathlib import Path
from typing import Iterator

from labctl import secretscan
from labctl.errors import InputError
from labctl.host import gguf_header
from labctl.inventory.fallbacks import CATCH_ALL, find_cycle, longest_fallback_walk
from labctl.inventory.schema import (
    BACKEND_KINDS,
    UNIT_PREFIX,
    External,
    Inventory,
    LiteLLM,
    LlamaCppPython,
    LlamaServer,
    Ollama,
    Redis,
    RedisExporter,
    ServiceBase,
    Vllm,
    check_path,
    mem_bytes,
)
from labctl.inventory.yamlsrc import Source
from labctl.render import litellm_keys
from labctl.render.litellm_keys import LITELLM_VERSION
from labctl.render.litellm_keys import PROVIDERS as LITELLM_PROVIDERS

# Flags labctl sets itself from typed fields; setting them again through extra_args
# would silently override (or duplicate) the checked value, e.g. --host 0.0.0.0.
OWNED_FLAGS = {
    "llama-server": {"--host", "--port", "--model", "-m", "--alias", "-a", "--n-gpu-layers", "-ngl",
                     "--gpu-layers", "--ctx-size", "-c", "--threads", "-t", "--parallel", "-np",
                     "--metrics"},
    "llama-cpp-python": {"--host", "--port", "--model", "--model_alias", "--n_gpu_layers", "--n_ctx",
                         "--n_threads"},
    "vllm": {"--host", "--port", "--model", "--served-model-name", "--quantization", "-q", "--dtype",
             "--gpu-memory-utilization", "--device-memory-utilization", "--kv-cache-memory-bytes",
             "--max-model-len", "--device", "--enforce-eager"},
    "litellm": {"--host", "--port", "--config", "-c"},
    "ollama": set(),
    "external": set(),
    # redis-server takes config directives as --flags: labctl's config sets these.
    "redis-exporter": {"-redis.addr", "--redis.addr", "-web.listen-address", "--web.listen-address",
                       "-redis.password", "--redis.password"},
    "redis": {"--bind", "--port", "--requirepass", "--dir", "--dbfilename", "--save", "--appendonly",
              "--maxmemory", "--maxmemory-policy", "--include", "--daemonize", "--logfile", "--protected-mode"},
}


def cross_check(inv: Inventory, src: Source, *, check_files: bool = False) -> list[InputError]:
    errors: list[InputError] = []
    for check in (_ports, _binds, _api_keys, _extra_args, _environment, _pip, _gpu_layers, _llama_ctx, _vllm,
                  _externals, _redis, _hardening, _gateways, _images, _monitoring, _models):
        errors.extend(check(inv, src))
    if check_files:
        errors.extend(file_problems(inv, src))
    return errors


def _ports(inv: Inventory, src: Source) -> Iterator[InputError]:
    # Everything labctl runs listens on this host; an external service at an address in the
    # host's private network is another machine (a fleet's backend on another host), whose
    # ports are its own.
    claimed: dict[tuple[str, int], str] = {}

    def claim(port: int, loc: tuple, who: str, where: str = "") -> Iterator[InputError]:
        if (where, port) in claimed:
            yield src.error(loc, f"port {port} is already used by {claimed[(where, port)]}")
        else:
            claimed[(where, port)] = who

    for name, svc in inv.services.items():
        if svc.enabled:
            elsewhere = isinstance(svc, External) and svc.address is not None and _private(inv, svc.address)
            yield from claim(svc.port, ("services", name, "port"), f"services.{name}",
                             svc.address if elsewhere else "")  # type: ignore[union-attr]
    mon = inv.monitoring
    if mon.enabled:
        yield from claim(mon.prometheus.port, ("monitoring", "prometheus", "port"), "monitoring.prometheus")
        yield from claim(mon.grafana.port, ("monitoring", "grafana", "port"), "monitoring.grafana")
        if mon.node_exporter.enabled:
            yield from claim(mon.node_exporter.port, ("monitoring", "node_exporter", "port"),
                             "monitoring.node_exporter")


def _is_loopback(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_loopback


def _private(inv: Inventory, addr: str) -> bool:
    """Inside host.private_network (and not its network or broadcast address)."""
    if inv.host.private_network is None:
        return False
    net, ip = ipaddress.ip_network(inv.host.private_network), ipaddress.ip_address(addr)
    return ip in net and ip not in (net.network_address, net.broadcast_address)


def _binds(inv: Inventory, src: Source) -> Iterator[InputError]:
    if inv.host.allow_public_bind:
        return
    hint = "binding beyond loopback needs host.allow_public_bind: true"
    if inv.host.private_network is not None:
        hint = f"bind to loopback or to an address in host.private_network {inv.host.private_network}, or set " + \
               "host.allow_public_bind: true"
    if not _is_loopback(inv.host.bind) and not _private(inv, inv.host.bind):
        yield src.error(("host", "bind"), f"{inv.host.bind} is not a loopback address; {hint}")
    for name, svc in inv.managed(disabled=True).items():
        if svc.bind is None or _is_loopback(svc.bind):
            continue
        if not _private(inv, svc.bind):
            yield src.error(("services", name, "bind"), f"{svc.bind} is not a loopback address; {hint}")
            continue
        # Inside the private network: other hosts reach it, so it must check a key.
        if getattr(svc, "api_key", None) is None and isinstance(svc, KEYED):
            yield src.error(("services", name, "bind"), f"{svc.bind} is reachable from other hosts: set api_key "
                                                        "(clients must then send it), or bind to loopback")
        if isinstance(svc, Ollama) and not svc.allow_unauthenticated_remote:
            yield src.error(("services", name, "bind"), f"{svc.bind} is reachable from other hosts and Ollama has "
                                                        "no authentication: bind to loopback, or set "
                                                        "allow_unauthenticated_remote: true")


KEYED = (LlamaServer, LlamaCppPython, Vllm)


def _api_keys(inv: Inventory, src: Source) -> Iterator[InputError]:
    """A backend's key is read from an env file labctl can derive the server's variable from."""
    from labctl.render.apikeys import SERVER_VARIABLE

    for name, svc in inv.services.items():
        key = getattr(svc, "api_key", None)
        if key is None:
            continue
        loc = ("services", name, "api_key")
        if isinstance(svc, KEYED) and key.env_file is None:
            yield src.error(loc, "a backend's key must be in an env file ({env_file: PATH, var: NAME}): labctl "
                                 "derives the server's own variable from it")
        if key.variable in SERVER_VARIABLE.values():
            yield src.error(loc + ("var",), f"{key.variable} is what a server reads itself; name the key per "
                                            f"service (e.g. LABCTL_API_KEY_{name.upper().replace('-', '_')}) so a "
                                            "gateway can hold several")


SECRET_HINT = ("secrets must not be inline (unit files are world-readable and argv is public): put it in "
               "a 0600 file listed in environment_files")


def _extra_args(inv: Inventory, src: Source) -> Iterator[InputError]:
    for name, svc in inv.managed(disabled=True).items():
        owned = OWNED_FLAGS[svc.kind]  # type: ignore[attr-defined]
        for i, arg in enumerate(svc.extra_args):
            flag = arg.split("=", 1)[0]
            if flag in owned:
                yield src.error(("services", name, "extra_args", i),
                                f"{flag} is set by labctl from the typed field; set that field instead")
        for i, reason in secretscan.flag_problems(list(svc.extra_args)):
            yield src.error(("services", name, "extra_args", i), f"{reason}; {SECRET_HINT}")


def _secret_env(values: dict[str, str], loc: tuple, hint: str = SECRET_HINT) -> Iterator[tuple[tuple, str]]:
    for key, value in values.items():
        if secretscan.name_is_secret(key):
            yield loc + (key,), f"{key} names a secret; {hint}"
        else:
            reason = secretscan.value_problem(value)
            if reason:
                yield loc + (key,), f"the value {reason}; {hint}"


def _environment(inv: Inventory, src: Source) -> Iterator[InputError]:
    for name, svc in inv.managed(disabled=True).items():
        base = ("services", name, "environment")
        for loc, message in _secret_env(svc.environment, base):
            yield src.error(loc, message)
        if isinstance(svc, Ollama) and "OLLAMA_HOST" in svc.environment:
            yield src.error(base + ("OLLAMA_HOST",), "OLLAMA_HOST is set by labctl from bind and port")
        if isinstance(svc, Ollama) and "OLLAMA_MODELS" in svc.environment:
            # A path like any path field: the unit lists it in ReadWritePaths=, labctl creates it.
            try:
                check_path(svc.environment["OLLAMA_MODELS"])
            except ValueError as exc:
                yield src.error(base + ("OLLAMA_MODELS",), str(exc))


PIP_SECRET_HINT = ("secrets must not be inline (unit files are world-readable and argv is public): put it in "
                   "the manager's environment (pip reads PIP_* from it)")


def _pip(inv: Inventory, src: Source) -> Iterator[InputError]:
    """pip_env and pip specs reach pip's environment and argv, and a stamp file: no secrets."""
    for name, svc in inv.services.items():
        runtime = getattr(svc, "runtime", None)
        if runtime is None:
            continue
        base = ("services", name, "runtime")
        for loc, message in _secret_env(runtime.pip_env, base + ("pip_env",), PIP_SECRET_HINT):
            yield src.error(loc, message)
        for i, spec in enumerate(runtime.pip):
            reason = secretscan.value_problem(spec)
            if reason:
                yield src.error(base + ("pip", i), f"the spec {reason}; put index credentials in pip's own "
                                                   "config or netrc, not in the inventory")


def _models(inv: Inventory, src: Source) -> Iterator[InputError]:
    """Declared models: one default at most, one file each, nothing secret in a source."""
    defaults = [name for name, m in inv.models.items() if m.default]
    for name in defaults[1:]:
        yield src.error(("models", name, "default"), f"only one model can be the default; {defaults[0]} already is")
    files: dict[str, str] = {}
    for name, model in inv.models.items():
        base = ("models", name)
        file = model.file_name(name)
        if file == inv.host.current_link:
            yield src.error(base + ("file",), f"{file} is host.current_link, the switchable link itself; "
                                              "name the model file something else")
        elif file in files:
            yield src.error(base + ("file",), f"{file} is already the file of models.{files[file]}")
        files.setdefault(file, name)
        for key in ("url", "pip"):
            value = getattr(model, key)
            reason = value and secretscan.value_problem(value)
            if reason:
                yield src.error(base + (key,), f"the {key} {reason}; keys come from the environment "
                                               "(HF_TOKEN) or pip's own config, not the inventory")


def _gpu_layers(inv: Inventory, src: Source) -> Iterator[InputError]:
    if not inv.host.gpu:
        return
    for name, svc in inv.services.items():
        if isinstance(svc, (LlamaServer, LlamaCppPython)) and svc.enabled and svc.n_gpu_layers == 0:
            yield src.error(("services", name, "n_gpu_layers"),
                            "0 on a GPU host runs the model on the CPU; set the layers to offload, "
                            "or host.gpu: false for a CPU-only host")


def _llama_ctx(inv: Inventory, src: Source) -> Iterator[InputError]:
    for name, svc in inv.services.items():
        if isinstance(svc, LlamaServer) and svc.ctx_size // svc.parallel < 64:
            yield src.error(("services", name, "ctx_size"),
                            f"ctx_size {svc.ctx_size} split over parallel {svc.parallel} leaves "
                            f"{svc.ctx_size // svc.parallel} tokens per slot (minimum 64)")


def _vllm(inv: Inventory, src: Source) -> Iterator[InputError]:
    for name, svc in inv.services.items():
        if not isinstance(svc, Vllm):
            continue
        if svc.quantization in ("awq", "gptq") and svc.dtype == "float32":
            yield src.error(("services", name, "dtype"),
                            f"vLLM refuses float32 with {svc.quantization} quantization; use float16 or bfloat16")
        if svc.cpu_kv_cache_gib is not None and svc.device != "cpu":
            yield src.error(("services", name, "cpu_kv_cache_gib"), "only applies with device: cpu")
        if svc.device == "cpu" and svc.cpu_kv_cache_gib is None:
            yield src.error(("services", name, "device"),
                            "device: cpu needs cpu_kv_cache_gib (GiB of RAM for the KV cache); without it "
                            "vLLM reserves gpu_memory_utilization of all RAM and refuses to start")


def _redis(inv: Inventory, src: Source) -> Iterator[InputError]:
    for name, svc in inv.services.items():
        if isinstance(svc, Redis) and svc.password.env_file is None:
            yield src.error(("services", name, "password"), "redis-server reads its password from a file: use "
                                                            "{env_file: PATH, var: NAME} (labctl generates it)")
    for name, svc in inv.services.items():
        if not isinstance(svc, RedisExporter):
            continue
        target = inv.services.get(svc.redis)
        loc = ("services", name, "redis")
        if not isinstance(target, Redis):
            what = f"a {target.kind} service" if target is not None else "no service"  # type: ignore[attr-defined]
            yield src.error(loc, f"{svc.redis!r} is {what}, not redis")
        elif target.password.variable != "REDIS_PASSWORD":
            yield src.error(loc, f"the exporter reads REDIS_PASSWORD, but services.{svc.redis}.password.var is "
                                 f"{target.password.variable}; name it REDIS_PASSWORD")
        elif svc.enabled and not target.enabled:
            yield src.error(loc, f"service {svc.redis!r} is disabled")
    for name, gw in inv.gateways().items():
        if gw.cache is None or gw.cache.service is None:
            continue
        target = inv.services.get(gw.cache.service)
        loc = ("services", name, "cache", "service")
        if target is None:
            yield src.error(loc, f"no service named {gw.cache.service!r}")
        elif not isinstance(target, Redis):
            yield src.error(loc, f"{gw.cache.service!r} is a {target.kind} service, not redis")  # type: ignore[attr-defined]
        elif not target.enabled:
            yield src.error(loc, f"service {gw.cache.service!r} is disabled")


def _externals(inv: Inventory, src: Source) -> Iterator[InputError]:
    for name, svc in inv.services.items():
        if not isinstance(svc, External):
            continue
        if svc.unit and svc.unit_scope == "user" and svc.unit.startswith(UNIT_PREFIX):
            yield src.error(("services", name, "unit"), f"{svc.unit} is a unit labctl itself runs; an external "
                                                        "service is one labctl does not run")
        for i, model in enumerate(svc.models):
            if svc.models.index(model) != i:
                yield src.error(("services", name, "models", i), f"{model!r} is listed twice")


def _hardening(inv: Inventory, src: Source) -> Iterator[InputError]:
    from labctl.render.encode import PATH_WORD_UNSAFE, EncodeError
    from labctl.render.layout import Layout
    from labctl.render.units import writable_sources

    layout = Layout.of(inv)
    for name, svc in inv.managed(disabled=True).items():
        lim = inv.limits_of(svc)
        if lim.memory_high and lim.memory_max and mem_bytes(lim.memory_high) > mem_bytes(lim.memory_max):
            loc = ("services", name, "limits", "memory_high") if svc.limits and svc.limits.memory_high else \
                ("defaults", "limits", "memory_high")
            yield src.error(loc, f"memory_high {lim.memory_high} is above memory_max {lim.memory_max}; "
                                 "throttling would never start before the OOM kill")
        if not inv.hardened(svc):
            continue
        try:
            sources = writable_sources(inv, name, svc, layout)
        except EncodeError:
            continue  # OLLAMA_MODELS is no path: _environment says so
        seen: set[str] = set()
        for path, said, loc in sources:
            if path in seen or not PATH_WORD_UNSAFE & set(path):
                continue
            seen.add(path)
            # A ~/ path whose own text is clean got the character from host.home.
            where = loc if PATH_WORD_UNSAFE & set(said) else ("host", "home")
            yield src.error(where, f"{path} holds whitespace, a quote or a backslash, which a hardened unit's "
                                   "ReadWritePaths= cannot list; rename it, or set hardening: false")


def _backend_model(svc: ServiceBase) -> str | None:
    if isinstance(svc, (LlamaServer, LlamaCppPython)):
        return svc.alias
    if isinstance(svc, Vllm):
        return svc.served_model_name
    return None


def _gateways(inv: Inventory, src: Source) -> Iterator[InputError]:
    gateways = [(n, s) for n, s in inv.services.items() if isinstance(s, LiteLLM)]
    enabled = [n for n, s in gateways if s.enabled]
    if len(enabled) > 1:
        yield src.error(("services", enabled[1]), f"only one enabled litellm gateway is supported "
                                                  f"(also: {enabled[0]})")
    for name, gw in gateways:
        yield from _routes(inv, src, name, gw)
        yield from _fallbacks(src, name, gw)
        yield from _chains(src, ("services", name, "context_window_fallbacks"), gw.context_window_fallbacks,
                           {r.name for r in gw.routes}, catch_all=False)
        yield from _aliases(src, name, gw)
        yield from _endpoints(src, name, gw)
        yield from _passthrough(inv, src, name, gw)
        yield from _max_fallbacks(src, name, gw)


def _aliases(src: Source, name: str, gw: LiteLLM) -> Iterator[InputError]:
    routes = {r.name for r in gw.routes}
    for alias, target in gw.aliases.items():
        loc = ("services", name, "aliases", alias)
        if alias in routes:
            yield src.error(loc, f"alias {alias!r} is also a route name; a name must mean one thing")
        elif alias == CATCH_ALL:
            yield src.error(loc, f"{CATCH_ALL!r} is not a model name")
        if target not in routes:
            yield src.error(loc, f"alias {alias!r} names undefined model {target!r} "
                                 f"(routes: {', '.join(sorted(routes))})")


def _endpoints(src: Source, name: str, gw: LiteLLM) -> Iterator[InputError]:
    used = {r.endpoint for r in gw.routes}
    for key, endpoint in gw.endpoints.items():
        loc = ("services", name, "endpoints", key)
        if key not in used:
            yield src.error(loc, f"endpoint {key!r} is not used by any route")
        reason = secretscan.value_problem(endpoint.api_base)
        if reason:
            yield src.error(loc + ("api_base",), f"the URL {reason}; give the key as api_key, by reference")
        if endpoint.provider not in LITELLM_PROVIDERS:
            close = difflib.get_close_matches(endpoint.provider, sorted(LITELLM_PROVIDERS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            yield src.error(loc + ("provider",), f"{endpoint.provider!r} is not a provider LiteLLM "
                                                 f"{LITELLM_VERSION} knows{hint}")


# What LiteLLM reads in each pass-through place, and the keys there labctl writes itself
# from a typed field (setting them again would silently override a checked value), with that
# field, or None where labctl always sets the key itself.
PASSTHROUGH = {
    "litellm_settings": (litellm_keys.LITELLM_SETTINGS, {
        "drop_params": None,  # always true: labctl's backends take only the OpenAI parameters they know
        "callbacks": "prometheus_metrics", "require_auth_for_metrics_endpoint": "prometheus_metrics",
        "cache": "cache", "cache_params": "cache"}),
    "router_settings": (litellm_keys.ROUTER_SETTINGS, {
        "num_retries": "num_retries", "timeout": "timeout_sec", "cooldown_time": "cooldown_sec",
        "allowed_fails": "allowed_fails", "fallbacks": "fallbacks", "max_fallbacks": "max_fallbacks",
        "context_window_fallbacks": "context_window_fallbacks", "model_group_alias": "aliases",
        "model_list": "routes"}),
    "general_settings": (litellm_keys.GENERAL_SETTINGS, {"master_key": "master_key"}),
    "litellm_params": (litellm_keys.LITELLM_PARAMS, {"model": "service/endpoint and model", "api_base": "endpoints",
                                                     "api_key": "endpoints.NAME.api_key"}),
    "model_info": (litellm_keys.MODEL_INFO, {}),
}
ENV_REF = "os.environ/"


def _passthrough(inv: Inventory, src: Source, name: str, gw: LiteLLM) -> Iterator[InputError]:
    base = ("services", name)
    places = [((section,), section, getattr(gw, section)) for section in
              ("litellm_settings", "router_settings", "general_settings")]
    for i, route in enumerate(gw.routes):
        places += [(("routes", i, "litellm_params"), "litellm_params", route.litellm_params),
                   (("routes", i, "model_info"), "model_info", route.model_info)]
    # The variables the gateway's process will have: its secrets' and its environment's.
    # With environment_files, more may come from them, which only the host can tell.
    # Never the master key: LiteLLM would send it wherever the value goes (a backend, a log).
    known_vars = ({ref.variable for ref in inv.gateway_secret_refs(gw)} | set(gw.environment)) - {gw.master_key.variable}
    for loc, section, values in places:
        valid, owned = PASSTHROUGH[section]
        for key, value in values.items():
            here = base + loc + (key,)
            if key in owned:
                field = owned[key]
                yield src.error(here, f"{key} is set by labctl from services.{name}.{field}; set that instead"
                                if field else f"{key} is set by labctl (always true: labctl's backends take only "
                                              "the OpenAI parameters they know)")
                continue
            if key not in valid:
                close = difflib.get_close_matches(key, sorted(valid), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                yield src.error(here, f"{key!r} is not a {section} key LiteLLM {LITELLM_VERSION} reads; it would be "
                                      f"silently ignored{hint}")
                continue
            for leaf_loc, leaf_key, text in _strings(value, here, key):
                if text.startswith(ENV_REF):
                    var = text[len(ENV_REF):]
                    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
                        yield src.error(leaf_loc, f"{ENV_REF}{var[:40]!r} does not name an environment variable")
                    elif var == gw.master_key.variable:
                        yield src.error(leaf_loc, f"{ENV_REF}{var} is the gateway's master key; LiteLLM would hand "
                                                  "it to whatever reads this setting")
                    elif var not in known_vars and not gw.environment_files:
                        yield src.error(leaf_loc, f"{ENV_REF}{var}: the gateway's environment will not have {var}; "
                                                  f"put it in a 0600 file listed in services.{name}.environment_files")
                    continue
                problem = secretscan.value_problem(text)
                reason = ("its name says it holds a secret" if secretscan.name_is_secret(leaf_key)
                          else f"the value {problem}" if problem else None)
                if reason:
                    yield src.error(leaf_loc, f"{reason}; secrets go in LiteLLM's settings only as "
                                              f"{ENV_REF}VAR, the value in a 0600 environment file")


def _strings(value: object, loc: tuple, key: str) -> Iterator[tuple[tuple, str, str]]:
    """Every string leaf of a pass-through value, with its location and nearest key."""
    if isinstance(value, str):
        yield loc, key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, loc + (k,), str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, loc + (i,), key)


def _max_fallbacks(src: Source, name: str, gw: LiteLLM) -> Iterator[InputError]:
    if gw.max_fallbacks is None:
        return
    longest = longest_fallback_walk(gw.fallbacks)
    if longest and len(longest) - 1 > gw.max_fallbacks:
        yield src.error(("services", name, "max_fallbacks"),
                        f"chain {longest[0]!r} can take {len(longest) - 1} fallback hops "
                        f"({' -> '.join(longest)}) but LiteLLM stops after max_fallbacks {gw.max_fallbacks}; "
                        "raise it or leave it unset")


# LiteLLM's catch-all key in fallbacks: the chain for every model group without its own.
def _routes(inv: Inventory, src: Source, name: str, gw: LiteLLM) -> Iterator[InputError]:
    seen: dict[str, int] = {}
    for i, route in enumerate(gw.routes):
        loc = ("services", name, "routes", i)
        if route.name in seen:
            yield src.error(loc + ("name",), f"route {route.name!r} is already defined at routes[{seen[route.name]}]")
        seen.setdefault(route.name, i)
        if route.endpoint is not None:
            if route.endpoint not in gw.endpoints:
                known = ", ".join(sorted(gw.endpoints)) or "none defined"
                yield src.error(loc + ("endpoint",), f"no endpoint named {route.endpoint!r} in "
                                                     f"services.{name}.endpoints ({known})")
            continue
        assert route.service is not None  # Route guarantees one of service/endpoint
        backend = inv.services.get(route.service)
        if backend is None:
            yield src.error(loc + ("service",), f"no service named {route.service!r}")
            continue
        if backend.kind not in BACKEND_KINDS:  # type: ignore[attr-defined]
            yield src.error(loc + ("service",), f"{route.service!r} is a {backend.kind} service, not a model backend")  # type: ignore[attr-defined]
            continue
        if not backend.enabled:
            yield src.error(loc + ("service",), f"service {route.service!r} is disabled")
        if isinstance(backend, External) and route.model is None and len(backend.models) == 1:
            continue  # the one model it serves
        if isinstance(backend, (Ollama, External)):
            if route.model is None:
                yield src.error(loc, f"a route to {backend.kind} service {route.service!r} needs 'model' "
                                     "(one of the service's models)")
            elif route.model not in backend.models:
                yield src.error(loc + ("model",), f"{route.model!r} is not in services.{route.service}.models "
                                                  f"({', '.join(backend.models)})")
        elif route.model is not None and route.model != _backend_model(backend):
            yield src.error(loc + ("model",), f"services.{route.service} serves {_backend_model(backend)!r}, "
                                              f"not {route.model!r}")


def _fallbacks(src: Source, name: str, gw: LiteLLM) -> Iterator[InputError]:
    yield from _chains(src, ("services", name, "fallbacks"), gw.fallbacks, {r.name for r in gw.routes},
                       catch_all=True)


def _chains(src: Source, base: tuple, chains: dict[str, list[str]], routes: set[str], *,
            catch_all: bool) -> Iterator[InputError]:
    known = f"(routes: {', '.join(sorted(routes))})"
    for primary, chain in chains.items():
        if primary not in routes and not (catch_all and primary == CATCH_ALL):
            hint = f"; {CATCH_ALL!r} is the catch-all" if catch_all else ""
            yield src.error(base + (primary,), f"fallback chain for undefined model {primary!r} {known}{hint}")
        if not chain:
            yield src.error(base + (primary,), f"chain {primary!r} is empty")
        for i, target in enumerate(chain):
            if target not in routes:
                yield src.error(base + (primary, i), f"chain {primary!r} falls back to undefined model "
                                                     f"{target!r} {known}")
            elif target == primary:
                yield src.error(base + (primary, i), f"chain {primary!r} falls back to itself")
            if chain.index(target) != i:
                yield src.error(base + (primary, i), f"{target!r} appears twice in the chain")
    cycle = find_cycle({k: v for k, v in chains.items() if k != CATCH_ALL})
    if cycle:
        yield src.error(base + (cycle[0],), "fallback cycle: " + " -> ".join(cycle))


def _monitoring(inv: Inventory, src: Source) -> Iterator[InputError]:
    """The operator's scrape jobs, rule files and dashboards: names that cannot shadow
    labctl's, and files that labctl can install or promtool read without publishing
    anything (labctl.render.operator_files, whose checks the renderer runs again)."""
    from labctl.render import operator_files as opfiles
    from labctl.render.monitoring import scrape_jobs

    mon = inv.monitoring
    seen: dict[str, int] = {}
    ours = {job.name for job in scrape_jobs(inv)[0]}
    for i, job in enumerate(mon.scrape_jobs):
        loc = ("monitoring", "scrape_jobs", i, "name")
        if job.name in ours:
            yield src.error(loc, f"job {job.name!r} is one of labctl's own (pick another name)")
        elif job.name in seen:
            yield src.error(loc, f"job {job.name!r} is already defined at scrape_jobs[{seen[job.name]}]")
        seen.setdefault(job.name, i)
        for k, rule in enumerate(job.relabel_configs + job.metric_relabel_configs):
            if rule.action in ("replace", "hashmod") and rule.target_label is None:
                section = "relabel_configs" if k < len(job.relabel_configs) else "metric_relabel_configs"
                index = k if k < len(job.relabel_configs) else k - len(job.relabel_configs)
                yield src.error(("monitoring", "scrape_jobs", i, section, index),
                                f"action {rule.action} needs target_label")
    if not mon.enabled:
        return
    for field_name, check in opfiles.CHECKS.items():
        for i, path in enumerate(getattr(mon, field_name)):
            try:
                check(inv.host.expand(path))
            except opfiles.Refused as exc:
                yield src.error(("monitoring", field_name, i), str(exc))


def _images(inv: Inventory, src: Source) -> Iterator[InputError]:
    mon = inv.monitoring
    for part, image in (("prometheus", mon.prometheus.image), ("grafana", mon.grafana.image),
                        ("node_exporter", mon.node_exporter.image)):
        tag = image.split("@", 1)[0].rsplit(":", 1)[-1]
        if tag == "latest":
            yield src.error(("monitoring", part, "image"), "pin the image to a version tag, not :latest")


# --- --check-files: the inventory against this machine's files ------------------------


def file_problems(inv: Inventory, src: Source) -> list[InputError]:
    """The inventory against this machine's files (``--check-files``, doctor, pre-flight)."""
    return list(_files(inv, src))


def _files(inv: Inventory, src: Source) -> Iterator[InputError]:
    host = inv.host
    models_dir = Path(host.expand(host.models_dir))
    for name, svc in inv.managed().items():
        base = ("services", name)
        binary = getattr(svc, "binary", None)
        if binary is not None:
            yield from _executable(src, base + ("binary",), Path(host.expand(binary)))
        runtime = getattr(svc, "runtime", None)
        if runtime is not None and not runtime.pip:
            # A runtime labctl provisions (pip specs) may not exist yet; anything else must.
            yield from _executable(src, base + ("runtime",), Path(runtime.interpreter(host)))
        for i, env_file in enumerate(svc.environment_files):
            path = Path(host.expand(env_file))
            if not path.is_file():
                yield src.error(base + ("environment_files", i), f"{path} does not exist")
        if isinstance(svc, (LlamaServer, LlamaCppPython)):
            yield from _model_file(inv, src, base + ("model",), svc, models_dir)


def _executable(src: Source, loc: tuple, path: Path) -> Iterator[InputError]:
    if not path.exists():
        yield src.error(loc, f"{path} does not exist")
    elif not path.is_file() or not os.access(path, os.X_OK):
        yield src.error(loc, f"{path} is not an executable file")


def pulled_later(inv: Inventory, path: Path) -> bool:
    """Whether ``path`` is missing now but will be there once the declared models are pulled
    (``labctl up`` pulls them first): a declared model's file, or current.gguf while a
    default model is declared or the link points at a declared model."""
    if path.exists():
        return False
    if str(path) == inv.host.current_path:
        if path.is_symlink():  # dangling: fine if it points at a declared model not yet fetched
            return os.path.realpath(path) in {inv.model_file(name) for name in inv.models}
        return inv.default_model() is not None
    return str(path) in {inv.model_file(name) for name in inv.models}


def _model_file(inv: Inventory, src: Source, loc: tuple, svc: LlamaServer | LlamaCppPython,
                models_dir: Path) -> Iterator[InputError]:
    from labctl.host.modelfiles import inside_models_dir, real_path, roots_text  # models imports the renderers

    path = Path(inv.model_path(svc))
    if pulled_later(inv, path):
        return  # a declared model `labctl up` fetches (and links) before it checks files
    if svc.model == "current":
        if not path.is_symlink():
            what = "is not a symlink" if path.exists() else "does not exist"
            yield src.error(loc, f"{path} {what}; point it at a model with 'labctl model switch FILE'")
            return
        target = real_path(path)
        if target is None:
            yield src.error(loc, f"{path} does not resolve (a dangling link or a loop); point it at a model "
                                 "with 'labctl model switch FILE'")
            return
        # The same rule as `labctl model switch` (labctl.host.modelfiles.inside_models_dir).
        if not inside_models_dir(inv, path):
            yield src.error(loc, f"{path} resolves to {target}, outside {roots_text(inv)}")
            return
    if not path.exists():
        yield src.error(loc, f"model file {path} does not exist")
        return
    problem = gguf_header.problem(path)
    if problem:
        yield src.error(loc, f"{path}: {problem}")
        return
    ctx = getattr(svc, "ctx_size", None) or getattr(svc, "n_ctx", None)
    trained = gguf_header.context_length(path)
    if trained and ctx and ctx > trained:
        field = "ctx_size" if isinstance(svc, LlamaServer) else "n_ctx"
        yield src.error(loc[:-1] + (field,), f"{ctx} exceeds the model's trained context length {trained}")

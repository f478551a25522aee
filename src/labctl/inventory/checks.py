"""Checks that need the whole inventory, not one field.

Each check returns InputErrors pointing at the line the operator must change. The list
is exhaustive on purpose: an operator fixing a file wants every problem at once.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel

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
from labctl import litellm_env
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
    for check in (_ports, _binds, _api_keys, _extra_args, _environment, _gpu_layers, _llama_ctx, _vllm,
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


def _environment(inv: Inventory, src: Source) -> Iterator[InputError]:
    for name, svc in inv.managed(disabled=True).items():
        base = ("services", name, "environment")
        if isinstance(svc, Ollama) and "OLLAMA_HOST" in svc.environment:
            yield src.error(base + ("OLLAMA_HOST",), "OLLAMA_HOST is set by labctl from bind and port")
        if isinstance(svc, Ollama) and "OLLAMA_MODELS" in svc.environment:
            # A path like any path field: the unit lists it in ReadWritePaths=, labctl creates it.
            try:
                check_path(svc.environment["OLLAMA_MODELS"])
            except ValueError as exc:
                yield src.error(base + ("OLLAMA_MODELS",), str(exc))


def _models(inv: Inventory, src: Source) -> Iterator[InputError]:
    """Declared models: one default at most, one file each (nothing secret in a source:
    secret_problems)."""
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


# --- secrets, wherever they are pasted ---------------------------------------------------

PIP_SECRET_HINT = ("secrets must not be inline (unit files are world-readable and argv is public): put it in "
                   "the manager's environment (pip reads PIP_* from it)")
LITELLM_SECRET_HINT = "secrets go in LiteLLM's settings only as os.environ/VAR, the value in a 0600 environment file"
INVENTORY_SECRET_HINT = ("secrets do not belong in the inventory (it is kept in git and rendered into world-readable "
                         "unit files, argv and configs): reference one from a 0600 file, {env_file: PATH, var: NAME}")
LITELLM_SECTIONS = ("litellm_settings", "router_settings", "general_settings", "litellm_params", "model_info")
# What a value is called and what the operator does instead, by the field it is under;
# any other field gets ("value", INVENTORY_SECRET_HINT).
SECRET_WORDING: dict[str, tuple[str, str]] = {
    "extra_args": ("value", SECRET_HINT),
    "environment": ("value", SECRET_HINT),
    "pip_env": ("value", PIP_SECRET_HINT),
    "pip": ("spec", "put index credentials in pip's own config or netrc, not in the inventory"),
    "url": ("URL", "keys come from the environment (HF_TOKEN), not the inventory"),
    "api_base": ("URL", "give the key as api_key, by reference"),
    "index_url": ("URL", "put index credentials in pip's own config or netrc, not in the inventory"),
    **{section: ("value", LITELLM_SECRET_HINT) for section in LITELLM_SECTIONS},
}
# Lists that are a command line: a flag names the secret the word after it is.
ARGV_FIELDS = ("extra_args",)
# Mappings whose keys name what their values hold: a secret-sounding name is a secret
# pasted there, whatever the value looks like (an environment variable's name; the
# nearest key of a LiteLLM setting).
NAMED_FIELDS = ("environment", "pip_env", *LITELLM_SECTIONS)
# Fields public by shape: a hex digest there (a sha256, an image's @sha256:, a Hugging Face
# commit in a revision, a URL or a cache path, an Ollama blob's sha256-... name) is what it
# looks like, not a key. Only that part is exempt; the value rules read the rest.
HEX_DIGEST = re.compile(r"(?<![A-Za-z0-9])(sha256[-:])?([0-9a-f]{64}|[0-9a-f]{40})(?![A-Za-z0-9])")
PUBLIC_BY_SHAPE = {("ModelSource", f) for f in ("sha256", "hf", "url", "path", "file", "member")} | {
    ("LlamaServer", "model"), ("LlamaCppPython", "model"), ("Vllm", "model"),
    ("Prometheus", "image"), ("Grafana", "image"), ("NodeExporter", "image")}


def secret_problems(inv: Inventory, src: Source) -> list[InputError]:
    """Every string of the validated inventory, mapping keys included, through the secret
    rules (labctl.secretscan): a secret pasted anywhere reaches a unit file, argv, a rendered
    config or a terminal. One walk over the model tree, so a new field is covered by itself;
    one error per location."""
    found: dict[tuple, str] = {}
    for leaf in _string_leaves(inv, (), ("", ""), None, None):
        # The value as validated, and as the operator wrote it: normalising a path can hide
        # a shape (https://u:p@h/x as a file name becomes https:/u:p@h/x).
        raw = _raw(src.data, leaf.loc) if not leaf.is_key else None
        for text in (leaf.text, raw) if isinstance(raw, str) and raw != leaf.text else (leaf.text,):
            message = _secret_message(replace(leaf, text=text))
            if message and leaf.loc not in found:
                found[leaf.loc] = message
    return [src.error(loc, message) for loc, message in found.items()]


def _raw(data: object, loc: tuple) -> object:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


@dataclass(frozen=True)
class _Leaf:
    loc: tuple
    field: tuple[str, str]  # (model, field) the string is under
    key: str | None  # the nearest mapping key above it
    before: str | None  # the item before it in its list (an argv's flag)
    text: str
    is_key: bool = False


def _secret_message(leaf: _Leaf) -> str | None:
    name = leaf.field[1]
    noun, hint = SECRET_WORDING.get(name, ("value", INVENTORY_SECRET_HINT))
    text = HEX_DIGEST.sub(" ", leaf.text) if leaf.field in PUBLIC_BY_SHAPE else leaf.text
    if leaf.is_key:
        reason = secretscan.value_problem(text)
        return reason and f"the name {reason}; {hint}"
    reference = name in LITELLM_SECTIONS and ENV_REF in text
    if reference:
        # What LiteLLM reads for the reference is _passthrough's to judge; the text before it is read here.
        text = text[:text.index(ENV_REF)]
    elif name in NAMED_FIELDS and leaf.key is not None and secretscan.name_is_secret(leaf.key):
        return (f"{leaf.key} names a secret; {hint}" if name in ("environment", "pip_env")
                else f"its name says it holds a secret; {hint}")
    if name in ARGV_FIELDS:
        reason = secretscan.arg_problem(text, leaf.before)
        return reason and f"{reason}; {hint}"
    reason = secretscan.value_problem(text)
    return reason and f"the {noun} {reason}; {hint}"


def _string_leaves(node: object, loc: tuple, field: tuple[str, str], key: str | None,
                   before: str | None) -> Iterator[_Leaf]:
    """Every string in the inventory's model tree: field values, list items, mapping keys
    and values."""
    if isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _string_leaves(getattr(node, name), loc + (name,), (type(node).__name__, name), None, None)
    elif isinstance(node, dict):
        for k, value in node.items():
            yield _Leaf(loc + (k,), field, key, None, str(k), is_key=True)
            yield from _string_leaves(value, loc + (k,), field, str(k), None)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            previous = node[i - 1] if i else None
            yield from _string_leaves(value, loc + (i,), field, key, previous if isinstance(previous, str) else None)
    elif isinstance(node, str):
        yield _Leaf(loc, field, key, before, node)


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
    from labctl.encode import PATH_WORD_UNSAFE, EncodeError
    from labctl.inventory.layout import Layout
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
ENV_REF = litellm_env.REF


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
    master = gw.master_key.variable
    known_vars = ({ref.variable for ref in inv.gateway_secret_refs(gw)} | set(gw.environment)) - {master}
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
            # Secrets written out are secret_problems' (the whole inventory's one scan); here,
            # what LiteLLM reads for an os.environ/ reference, wherever in a value it is.
            for leaf_loc, text in litellm_env.strings(value, here):
                names = litellm_env.lookups(text)
                if not names:
                    continue
                var = litellm_env.variable(text)
                if var is None:
                    yield src.error(leaf_loc, f"LiteLLM would read this {ENV_REF} reference as something other "
                                              f"than one environment variable; write {ENV_REF}NAME at the end of "
                                              "the value (NAME: letters, digits and _)")
                elif master in names:
                    yield src.error(leaf_loc, f"{ENV_REF}{master} is the gateway's master key; LiteLLM would hand "
                                              "it to whatever reads this setting")
                elif var not in known_vars and not gw.environment_files:
                    yield src.error(leaf_loc, f"{ENV_REF}{var}: the gateway's environment will not have {var}; "
                                              f"put it in a 0600 file listed in services.{name}.environment_files")


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

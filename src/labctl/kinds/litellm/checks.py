"""A gateway's checks: its routes, fallback chains, aliases, endpoints, cache, and the
LiteLLM settings passed through as written (keys the pinned LiteLLM reads, secrets only as
``os.environ/`` references LiteLLM reads as one variable, never the master key).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from labctl import litellm_env
from labctl.kinds.base import Problem
from labctl.kinds.litellm import setting_keys as litellm_keys
from labctl.kinds.litellm.fallbacks import CATCH_ALL, find_cycle, longest_fallback_walk

if TYPE_CHECKING:
    from labctl.inventory.schema import Inventory
    from labctl.kinds.litellm import LiteLLM


def gateway(inv: Inventory, name: str, gw: LiteLLM) -> Iterator[Problem]:
    """Everything wrong with gateway ``name``, each at its field; LiteLLM's keys and
    providers judged by the lists of the LiteLLM labctl pins (``up`` judges them again by
    the installed LiteLLM's own when it is another version: :func:`settings`)."""
    yield from _routes(inv, name, gw)
    yield from _fallbacks(name, gw)
    yield from _chains(("services", name, "context_window_fallbacks"), gw.context_window_fallbacks,
                       {r.name for r in gw.routes}, catch_all=False)
    yield from _aliases(name, gw)
    yield from settings(inv, name, gw, litellm_keys.shipped())
    yield from _max_fallbacks(name, gw)
    yield from _cache(inv, name, gw)


def _aliases(name: str, gw: LiteLLM) -> Iterator[Problem]:
    routes = {r.name for r in gw.routes}
    for alias, target in gw.aliases.items():
        loc = ("services", name, "aliases", alias)
        if alias in routes:
            yield Problem(loc, f"alias {alias!r} is also a route name; a name must mean one thing")
        elif alias == CATCH_ALL:
            yield Problem(loc, f"{CATCH_ALL!r} is not a model name")
        if target not in routes:
            yield Problem(loc, f"alias {alias!r} names undefined model {target!r} "
                                 f"(routes: {', '.join(sorted(routes))})")


def settings(inv: Inventory, name: str, gw: LiteLLM, keys: litellm_keys.KeySets) -> Iterator[Problem]:
    """What depends on the LiteLLM version: the endpoints' providers and the pass-through
    settings, judged by ``keys`` (one LiteLLM version's lists)."""
    yield from _endpoints(name, gw, keys)
    yield from _passthrough(inv, name, gw, keys)


def _endpoints(name: str, gw: LiteLLM, keys: litellm_keys.KeySets) -> Iterator[Problem]:
    used = {r.endpoint for r in gw.routes}
    for key, endpoint in gw.endpoints.items():
        loc = ("services", name, "endpoints", key)
        if key not in used:
            yield Problem(loc, f"endpoint {key!r} is not used by any route")
        if endpoint.provider not in keys.providers:
            close = difflib.get_close_matches(endpoint.provider, sorted(keys.providers), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            yield Problem(loc + ("provider",), f"{endpoint.provider!r} is not a provider LiteLLM "
                                               f"{keys.version} knows{hint}")


# Where LiteLLM keeps what it does not know: model_info is "additional metadata on the model",
# returned as written by /model/info (operators tag models there). A key it does not read is
# no mistake there; one a letter away from a key it reads is likely one (:func:`warnings`).
FREE_FORM = frozenset({"model_info"})
NEAR_MISS = 0.85  # difflib's ratio: max_input_token ~ max_input_tokens; team, owner, notes ~ nothing


def warnings(name: str, gw: LiteLLM, keys: litellm_keys.KeySets) -> Iterator[Problem]:
    """What LiteLLM accepts but likely is not what was meant: a model_info key a near miss
    of one LiteLLM reads (a typo there is kept as metadata, and the setting is not made);
    a fallback chain whose every hop leaves the box (no local safety net)."""
    remote = {r.name for r in gw.routes if r.endpoint is not None}
    for primary, chain in gw.fallbacks.items():
        hops = [primary, *chain] if primary != CATCH_ALL else list(chain)
        if hops and all(h in remote for h in hops):
            yield Problem(("services", name, "fallbacks", primary),
                          "every hop of this chain is a remote endpoint: nothing on this host answers when the "
                          "network or the provider is down; add a local route to it")
    valid = sorted(keys.model_info)
    lowered = {k.lower(): k for k in valid}
    for i, route in enumerate(gw.routes):
        for key in route.model_info:
            if key in keys.model_info:
                continue
            close = ([lowered[key.lower()]] if key.lower() in lowered
                     else difflib.get_close_matches(key, valid, n=1, cutoff=NEAR_MISS))
            if close:
                yield Problem(("services", name, "routes", i, "model_info", key),
                              f"{key!r} is not a model_info key LiteLLM {keys.version} reads, but {close[0]!r} is: "
                              "kept as metadata (returned by /model/info), and LiteLLM does not see it as "
                              f"{close[0]!r}")


# The keys labctl writes itself in each pass-through place, from a typed field (setting them
# again would silently override a checked value), with that field, or None where labctl
# always sets the key itself. What LiteLLM reads there is its version's list (keys.KeySets).
OWNED = {
    "litellm_settings": {
        "drop_params": None,  # always true: labctl's backends take only the OpenAI parameters they know
        "callbacks": "prometheus_metrics", "require_auth_for_metrics_endpoint": "prometheus_metrics",
        "cache": "cache", "cache_params": "cache"},
    "router_settings": {
        "num_retries": "num_retries", "timeout": "timeout_sec", "cooldown_time": "cooldown_sec",
        "allowed_fails": "allowed_fails", "fallbacks": "fallbacks", "max_fallbacks": "max_fallbacks",
        "context_window_fallbacks": "context_window_fallbacks", "model_group_alias": "aliases",
        "model_list": "routes"},
    "general_settings": {"master_key": "master_key"},
    "litellm_params": {"model": "service/endpoint and model", "api_base": "endpoints",
                       "api_key": "endpoints.NAME.api_key"},
    "model_info": {},
}
ENV_REF = litellm_env.REF


def _passthrough(inv: Inventory, name: str, gw: LiteLLM, keys: litellm_keys.KeySets) -> Iterator[Problem]:
    from labctl.kinds.litellm import gateway_secret_refs

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
    known_vars = ({ref.variable for ref in gateway_secret_refs(inv, gw)} | set(gw.environment)) - {master}
    for loc, section, values in places:
        valid, owned = getattr(keys, section), OWNED[section]
        for key, value in values.items():
            here = base + loc + (key,)
            if key in owned:
                field = owned[key]
                yield Problem(here, f"{key} is set by labctl from services.{name}.{field}; set that instead"
                                if field else f"{key} is set by labctl (always true: labctl's backends take only "
                                              "the OpenAI parameters they know)")
                continue
            if key not in valid and section not in FREE_FORM:
                close = difflib.get_close_matches(key, sorted(valid), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                yield Problem(here, f"{key!r} is not a {section} key LiteLLM {keys.version} reads; it would be "
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
                    yield Problem(leaf_loc, f"LiteLLM would read this {ENV_REF} reference as something other "
                                              f"than one environment variable; write {ENV_REF}NAME at the end of "
                                              "the value (NAME: letters, digits and _)")
                elif master in names:
                    yield Problem(leaf_loc, f"{ENV_REF}{master} is the gateway's master key; LiteLLM would hand "
                                              "it to whatever reads this setting")
                elif var not in known_vars and not gw.environment_files:
                    yield Problem(leaf_loc, f"{ENV_REF}{var}: the gateway's environment will not have {var}; "
                                              f"put it in a 0600 file listed in services.{name}.environment_files")


def _max_fallbacks(name: str, gw: LiteLLM) -> Iterator[Problem]:
    if gw.max_fallbacks is None:
        return
    longest = longest_fallback_walk(gw.fallbacks)
    if longest and len(longest) - 1 > gw.max_fallbacks:
        yield Problem(("services", name, "max_fallbacks"),
                        f"chain {longest[0]!r} can take {len(longest) - 1} fallback hops "
                        f"({' -> '.join(longest)}) but LiteLLM stops after max_fallbacks {gw.max_fallbacks}; "
                        "raise it or leave it unset")


# LiteLLM's catch-all key in fallbacks: the chain for every model group without its own.
def _routes(inv: Inventory, name: str, gw: LiteLLM) -> Iterator[Problem]:
    from labctl.kinds import kind_of

    seen: dict[str, int] = {}
    for i, route in enumerate(gw.routes):
        loc = ("services", name, "routes", i)
        if route.name in seen:
            yield Problem(loc + ("name",), f"route {route.name!r} is already defined at routes[{seen[route.name]}]")
        seen.setdefault(route.name, i)
        if route.endpoint is not None:
            if route.endpoint not in gw.endpoints:
                known = ", ".join(sorted(gw.endpoints)) or "none defined"
                yield Problem(loc + ("endpoint",), f"no endpoint named {route.endpoint!r} in "
                                                     f"services.{name}.endpoints ({known})")
            continue
        assert route.service is not None  # Route guarantees one of service/endpoint
        backend = inv.services.get(route.service)
        if backend is None:
            yield Problem(loc + ("service",), f"no service named {route.service!r}")
            continue
        kind = kind_of(backend)
        if not kind.backend:
            yield Problem(loc + ("service",), f"{route.service!r} is a {kind.name} service, not a model backend")
            continue
        if not backend.enabled:
            yield Problem(loc + ("service",), f"service {route.service!r} is disabled")
        served = kind.served_models(backend)
        if kind.served_field != "models":  # it serves exactly one model, under its own field
            if route.model is not None and route.model != served[0]:
                yield Problem(loc + ("model",), f"services.{route.service} serves {served[0]!r}, not {route.model!r}")
        elif route.model is None:
            if len(served) != 1 or kind.route_names_model:
                yield Problem(loc, f"a route to {kind.name} service {route.service!r} needs 'model' "
                                   "(one of the service's models)")
        elif route.model not in served:
            yield Problem(loc + ("model",), f"{route.model!r} is not in services.{route.service}.models "
                                            f"({', '.join(served)})")


def _fallbacks(name: str, gw: LiteLLM) -> Iterator[Problem]:
    yield from _chains(("services", name, "fallbacks"), gw.fallbacks, {r.name for r in gw.routes},
                       catch_all=True)


def _chains(base: tuple, chains: dict[str, list[str]], routes: set[str], *,
            catch_all: bool) -> Iterator[Problem]:
    known = f"(routes: {', '.join(sorted(routes))})"
    for primary, chain in chains.items():
        if primary not in routes and not (catch_all and primary == CATCH_ALL):
            hint = f"; {CATCH_ALL!r} is the catch-all" if catch_all else ""
            yield Problem(base + (primary,), f"fallback chain for undefined model {primary!r} {known}{hint}")
        if not chain:
            yield Problem(base + (primary,), f"chain {primary!r} is empty")
        for i, target in enumerate(chain):
            if target not in routes:
                yield Problem(base + (primary, i), f"chain {primary!r} falls back to undefined model "
                                                     f"{target!r} {known}")
            elif target == primary:
                yield Problem(base + (primary, i), f"chain {primary!r} falls back to itself")
            if chain.index(target) != i:
                yield Problem(base + (primary, i), f"{target!r} appears twice in the chain")
    cycle = find_cycle({k: v for k, v in chains.items() if k != CATCH_ALL})
    if cycle:
        yield Problem(base + (cycle[0],), "fallback cycle: " + " -> ".join(cycle))


def _cache(inv: Inventory, name: str, gw: LiteLLM) -> Iterator[Problem]:
    from labctl.kinds.redis import Redis

    if gw.cache is not None and gw.cache.service is not None:
        target = inv.services.get(gw.cache.service)
        loc = ("services", name, "cache", "service")
        if target is None:
            yield Problem(loc, f"no service named {gw.cache.service!r}")
        elif not isinstance(target, Redis):
            yield Problem(loc, f"{gw.cache.service!r} is a {target.kind} service, not redis")  # type: ignore[attr-defined]
        elif not target.enabled:
            yield Problem(loc, f"service {gw.cache.service!r} is disabled")

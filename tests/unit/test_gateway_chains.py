"""Aliases, the catch-all chain, context-window chains and LiteLLM's hop limit.

LiteLLM follows a failed fallback target's own chain (or the catch-all ``"*"``) before
the next target in the caller's chain, never tries a model twice in one request, and
stops after ``max_fallbacks`` hops (5 unless set). labctl computes the longest walk a
request can take, refuses a ``max_fallbacks`` that would cut it, and otherwise sets the
limit when the walk is longer than LiteLLM's default.
"""

from __future__ import annotations

import pytest
import yaml
from harness.invtext import edit

from labctl.cli import main
from labctl.kinds.litellm.fallbacks import fallback_order, longest_fallback_walk
from labctl.load import load_inventory
from labctl.kinds.litellm import config as gateway

pytestmark = pytest.mark.unit


def test_walk_follows_nested_chains_and_never_repeats() -> None:
    chains = {"a": ["b", "c"], "b": ["d"], "c": ["b", "a"]}
    assert fallback_order(chains, "a") == ["a", "b", "d", "c"]
    assert fallback_order(chains, "d") == ["d"]


def test_catch_all_applies_only_where_no_chain_is_set() -> None:
    chains = {"a": ["b"], "*": ["c", "d"]}
    # b has no chain of its own: the catch-all continues from it.
    assert fallback_order(chains, "a") == ["a", "b", "c", "d"]
    assert fallback_order(chains, "c") == ["c", "d"]
    assert longest_fallback_walk(chains) == ["a", "b", "c", "d"]
    assert longest_fallback_walk({}) == []


def many_routes(n: int, extra: str = "") -> str:
    """BASE with n more routes onto the bindings service, chained r0 -> r1 -> ... -> r(n-1)."""
    routes = "".join(f"      - name: r{i}\n        service: bindings\n" for i in range(n))
    chains = "".join(f"      r{i}: [r{i + 1}]\n" for i in range(n - 1))
    return edit(("    fallbacks:\n", extra + "    fallbacks:\n" + chains),
                ("        service: bindings\n", "        service: bindings\n" + routes))


def router(text: str) -> dict:
    inv = load_inventory("inventory.yaml", text=text).inventory
    (gw,) = inv.gateways().values()
    rendered = yaml.safe_load(gateway.render_gateway(inv) or "")
    assert rendered == gateway.config(inv, gw)
    return rendered["router_settings"]


def test_default_limit_is_left_alone_when_chains_fit() -> None:
    assert "max_fallbacks" not in router(many_routes(6))  # 5 hops: LiteLLM's default suffices


def test_a_longer_walk_gets_room() -> None:
    assert router(many_routes(8))["max_fallbacks"] == 7


def test_an_explicit_limit_is_written() -> None:
    assert router(many_routes(3, "    max_fallbacks: 9\n"))["max_fallbacks"] == 9


def test_an_explicit_limit_that_cuts_a_chain_is_refused(tmp_path, capsys) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(many_routes(4, "    max_fallbacks: 2\n"))
    with pytest.raises(SystemExit) as exited:
        main(["validate", "-i", str(path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{path}:38: services.gateway.max_fallbacks: chain 'r0' can take 3 fallback hops "
                   "(r0 -> r1 -> r2 -> r3) but LiteLLM stops after max_fallbacks 2; raise it or leave it unset"]


def test_aliases_catch_all_and_context_window_render_where_litellm_reads_them() -> None:
    text = edit(("    fallbacks:\n      bindings: [native]\n",
                 "    aliases:\n      fast: native\n      chat: bindings\n"
                 "    fallbacks:\n      bindings: [native]\n      \"*\": [bindings]\n"
                 "    context_window_fallbacks:\n      native: [bindings]\n"))
    settings = router(text)
    assert settings["model_group_alias"] == {"fast": "native", "chat": "bindings"}
    assert settings["fallbacks"] == [{"bindings": ["native"]}, {"*": ["bindings"]}]
    assert settings["context_window_fallbacks"] == [{"native": ["bindings"]}]
    assert set(settings) <= gateway.KNOWN_KEYS["router_settings"]


def test_known_router_keys_include_what_litellm_reads() -> None:
    # The old hand-written list wrongly called these unread (issue 11).
    for key in ("routing_strategy", "model_group_alias", "redis_host", "redis_port", "enable_pre_call_checks",
                "max_fallbacks", "context_window_fallbacks", "fallbacks", "num_retries", "timeout"):
        assert key in gateway.KNOWN_KEYS["router_settings"], key
    assert "lab_extensions" not in gateway.KNOWN_KEYS["router_settings"]

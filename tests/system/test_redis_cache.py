"""``kind: redis`` on a booted machine: Debian's redis-server as a hardened user unit, the
gateway's cache wired to it by name. The second identical request is answered from the
cache (the same completion id, a key in Redis), and the key survives `labctl restart`
of Redis (RDB persistence)."""

from __future__ import annotations

import pytest

from harness.stack import HOME, INVENTORY, Stack, json_out

pytestmark = pytest.mark.system

REDIS_INVENTORY = f"{HOME}/redis.yaml"


def with_redis(stack: Stack, port: int) -> str:
    text = stack.inventory_text.replace("  gateway:\n", f"  cache:\n    kind: redis\n    port: {port}\n\n"
                                        f"  cache-metrics:\n    kind: redis-exporter\n    redis: cache\n"
                                        f"    port: {stack.ports['redis-exporter']}\n\n  gateway:\n", 1)
    return text.replace("    num_retries: 0\n", "    num_retries: 0\n    cache: {service: cache, ttl_sec: 600}\n", 1)


def dbsize(stack: Stack) -> int:
    password = stack.run("sh", "-c", f"sed -n 's/^REDIS_PASSWORD=//p' {HOME}/.config/labctl/secrets/redis.env").stdout
    port = stack.ports["redis"]
    out = stack.run("env", f"REDISCLI_AUTH={password.strip()}", "redis-cli", "--no-auth-warning", "-p", str(port),
                    "DBSIZE").stdout
    return int(out.strip())


def test_the_gateway_caches_in_redis(demo_stack: Stack) -> None:
    from labctl.sandbox import free_port

    demo_stack.ports["redis"], demo_stack.ports["redis-exporter"] = free_port(), free_port()
    demo_stack.write_inventory(with_redis(demo_stack, demo_stack.ports["redis"]), REDIS_INVENTORY)
    try:
        res = demo_stack.labctl("up", "-i", REDIS_INVENTORY)
        assert res.rc == 0, res.stdout + res.stderr
        assert "cache: generated REDIS_PASSWORD" in res.stdout and "cache: ready" in res.stdout
        unit = demo_stack.run("cat", f"{HOME}/.config/systemd/user/labctl-cache.service").stdout
        password_line = demo_stack.run("cat", f"{HOME}/.config/labctl/secrets/redis.env").stdout.strip()
        assert password_line.split("=", 1)[1] not in unit
        mode = demo_stack.run("stat", "-c", "%a", f"{HOME}/.config/labctl/secrets/cache-requirepass.conf").stdout
        assert mode.strip() == "600"

        status = json_out(demo_stack.labctl("status", "-i", REDIS_INVENTORY, "--json"))
        cache = next(s for s in status["services"] if s["service"] == "cache")
        assert cache["healthy"] is True and cache["probe"]["check"] == "AUTH + PING", cache
        # The exporter logs in with the same generated password (its unit's EnvironmentFile).
        exporter = next(s for s in status["services"] if s["service"] == "cache-metrics")
        assert exporter["healthy"] is True and exporter["probe"]["detail"] == "ready", exporter

        first = demo_stack.chat("native")
        second = demo_stack.chat("native")
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert second.json()["id"] == first.json()["id"], "the second identical request was not a cache hit"
        keys = dbsize(demo_stack)
        assert keys >= 1

        res = demo_stack.labctl("restart", "cache", "-i", REDIS_INVENTORY)
        assert res.rc == 0, res.stderr
        assert dbsize(demo_stack) == keys, "RDB persistence lost the cache across a restart"
        # The gateway's Redis client may spend one request reconnecting (a miss, not a failure).
        later = [demo_stack.chat("native") for _ in range(2)]
        assert all(r.status_code == 200 for r in later)
        assert first.json()["id"] in [r.json()["id"] for r in later], "the persisted entry was not served"
    finally:
        res = demo_stack.labctl("up", "-i", INVENTORY)
        assert res.rc == 0, res.stderr

"""``kind: redis``: the rendered unit and config, the gateway's cache wired to it by name,
and the refusals. Redis itself reads the config back in tests/integration/test_redis_server.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from harness.invtext import edit

from labctl.cli import main
from labctl.load import load_inventory
from labctl.render import render_all
from labctl.encode import redis_str
from labctl.kinds.redis import auth_text

pytestmark = pytest.mark.unit

REDIS = "  cache:\n    kind: redis\n    port: 6390\n"
WIRED = (("  gateway:\n", REDIS + "  gateway:\n"),
         ("      bindings: [native]\n", "      bindings: [native]\n    cache:\n      service: cache\n      ttl_sec: 60\n"))


def render(*pairs: tuple[str, str]) -> dict[str, str]:
    return render_all(load_inventory("inventory.yaml", text=edit(*WIRED, *pairs)).inventory)


def test_the_gateway_cache_points_at_the_redis_service() -> None:
    files = render()
    cfg = yaml.safe_load(files["labctl/litellm/config.yaml"])
    assert cfg["litellm_settings"]["cache_params"] == {"type": "redis", "host": "127.0.0.1", "port": 6390, "ttl": 60,
                                                       "password": "os.environ/REDIS_PASSWORD"}
    gateway = files["systemd/user/labctl-gateway.service"]
    assert "After=labctl-cache.service" in gateway
    assert "EnvironmentFile=/home/labuser/.config/labctl/secrets/redis.env" in gateway
    unit = files["systemd/user/labctl-cache.service"]
    assert "ExecStart=/usr/bin/redis-server /home/labuser/.config/labctl/redis/cache.conf" in unit
    assert "REDIS_PASSWORD" not in unit and "requirepass" not in unit
    conf = files["labctl/redis/cache.conf"].splitlines()
    assert 'include "/home/labuser/.config/labctl/secrets/cache-requirepass.conf"' == conf[-1]
    assert "save 900 1 300 10 60 10000" in conf and "appendonly no" in conf
    assert "port 6390" in conf and 'bind "127.0.0.1"' in conf


def test_persistence_modes() -> None:
    aof = render(("    port: 6390\n", "    port: 6390\n    persistence: aof\n"))["labctl/redis/cache.conf"]
    assert 'save ""' in aof and "appendonly yes" in aof
    none = render(("    port: 6390\n", "    port: 6390\n    persistence: none\n"))["labctl/redis/cache.conf"]
    assert 'save ""' in none and "appendonly no" in none


def test_redis_strings_cannot_add_a_directive() -> None:
    assert redis_str('a"b\\c\nrequirepass x') == '"a\\"b\\\\c\\x0arequirepass x"'
    assert auth_text("sk-1") == 'requirepass "sk-1"\n'
    with pytest.raises(ValueError):
        auth_text("a\nb")


@pytest.mark.parametrize("pairs, line, message", [
    ((("      service: cache\n", "      service: nope\n"),), 36, "no service named 'nope'"),
    ((("      service: cache\n", "      service: native\n"),), 36, "'native' is a llama-server service, not redis"),
    ((("      service: cache\n", "      service: cache\n      host: 10.0.0.1\n"),), 35, "not both"),
    ((("    port: 6390\n", "    port: 6390\n    password: {env: REDIS_PW}\n"),), 23, "reads its password from a file"),
    ((("    port: 6390\n", "    port: 6390\n    extra_args: [--requirepass, x]\n"),), 23, "set by labctl"),
])
def test_bad_redis_declarations(tmp_path: Path, capsys, pairs, line: int, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(edit(*WIRED, *pairs))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err, err
    assert err.startswith(f"{path}:{line}:"), err


def test_the_exporter_reads_its_redis_and_is_scraped() -> None:
    files = render(("  gateway:\n", "  cache-metrics:\n    kind: redis-exporter\n    redis: cache\n  gateway:\n"))
    unit = files["systemd/user/labctl-cache-metrics.service"]
    assert ("ExecStart=/usr/bin/prometheus-redis-exporter -redis.addr=redis://127.0.0.1:6390 "
            "-web.listen-address=127.0.0.1:9121") in unit
    assert "After=labctl-cache.service" in unit
    assert "EnvironmentFile=/home/labuser/.config/labctl/secrets/redis.env" in unit
    prom = yaml.safe_load(files["labctl/monitoring/prometheus/prometheus.yml"])
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "redis"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9121"]
    inv = load_inventory("inventory.yaml", text=edit(*WIRED, ("  gateway:\n", "  cache-metrics:\n    kind: "
                                                               "redis-exporter\n    redis: cache\n  gateway:\n"))).inventory
    from labctl.ops.plan import start_order

    order = start_order(inv)
    assert order.index("cache") < order.index("cache-metrics") < order.index("gateway")


@pytest.mark.parametrize("redis, extra, message", [
    ("native", "", "'native' is a llama-server service, not redis"),
    ("cache", "    password: {env_file: ~/.config/labctl/secrets/r.env, var: RPW}\n", "name it REDIS_PASSWORD"),
])
def test_bad_exporters(tmp_path: Path, capsys, redis: str, extra: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.yaml"
    path.write_text(edit(*WIRED, ("    port: 6390\n", "    port: 6390\n" + extra),
                         ("  gateway:\n", f"  m:\n    kind: redis-exporter\n    redis: {redis}\n  gateway:\n")))
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "-i", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err, err

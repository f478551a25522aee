"""``kind: redis-exporter``: Debian's prometheus-redis-exporter for a ``kind: redis`` service,
scraped by Prometheus as job "redis". It reads the password from REDIS_PASSWORD in the Redis
service's env file, and starts after that Redis. Its Go runtime reads interfaces over
netlink.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from labctl.fields import NAME_RE, ExecPath, Port
from labctl.kinds.base import Kind, Listener, Problem, Scrape, ServiceBase, host_port, reach

if TYPE_CHECKING:
    from labctl.inventory.layout import Layout
    from labctl.inventory.schema import Inventory


class RedisExporter(ServiceBase):
    """Debian's prometheus-redis-exporter for a kind: redis service: Prometheus scrapes it
    (job "redis"). It reads the password from REDIS_PASSWORD in the Redis service's env file."""

    kind: Literal["redis-exporter"]
    redis: Annotated[str, Field(pattern=NAME_RE)]
    binary: ExecPath = "/usr/bin/prometheus-redis-exporter"
    port: Port = 9121
    ready_timeout_sec: Annotated[int, Field(ge=1, le=7200)] = 30


class RedisExporterKind(Kind):
    name = "redis-exporter"
    model = RedisExporter
    start_rank = 1  # after the Redis it reads (labctl waits for each to answer in turn)
    netlink = True
    flag_aliases = {"-redis.addr": ("--redis.addr",), "-web.listen-address": ("--web.listen-address",)}
    # Its password comes from the Redis service's env file; a flag would put it in argv.
    also_owned = ("-redis.password", "--redis.password")
    example = {"kind": "redis-exporter", "redis": "cache", "binary": "/usr/bin/prometheus-redis-exporter",
               "port": 9122, "bind": "127.0.0.1", "description": "exporter", "extra_args": ["-log-format", "json"],
               "environment": {"EXPORTER_MODE": "x"}, "environment_files": ["~/.config/exporter.env"],
               "read_write_paths": ["/srv/exporter"]}

    def argv(self, inv: Inventory, name: str, svc: ServiceBase, layout: Layout) -> list[str]:
        assert isinstance(svc, RedisExporter)
        from labctl.kinds import kind_of

        redis = inv.services.get(svc.redis)
        target = host_port(reach(kind_of(redis).address(inv, redis)), redis.port) if redis else "127.0.0.1:6379"
        return [inv.host.expand(svc.binary), f"-redis.addr=redis://{target}",
                f"-web.listen-address={host_port(self.address(inv, svc), svc.port)}"]

    def environment_files(self, inv: Inventory, name: str, svc: ServiceBase) -> list[str]:
        from labctl.kinds.redis import Redis

        redis = inv.services.get(getattr(svc, "redis"))
        if isinstance(redis, Redis) and redis.password.env_file:
            return [inv.host.expand(redis.password.env_file)]
        return []

    def dependencies(self, inv: Inventory, name: str, svc: ServiceBase) -> list[str]:
        redis = getattr(svc, "redis")
        return [redis] if redis in inv.managed() else []

    def colocated(self, name: str, svc: Listener) -> list[tuple[str, tuple, str]]:
        return [(getattr(svc, "redis"), ("services", name, "redis"), "an exporter runs on its Redis's host")]

    def probe(self, inv: Inventory, name: str, svc: Listener) -> dict[str, object]:
        return {"service": name, "recipe": "redis-exporter", "url": self.base_url(inv, svc)}

    def scrape(self, inv: Inventory, name: str, svc: Listener) -> Scrape:
        return Scrape("redis", "/metrics", {"redis": getattr(svc, "redis")})

    def checks(self, inv: Inventory, name: str, svc: Listener) -> Iterator[Problem]:
        from labctl.kinds.redis import Redis

        assert isinstance(svc, RedisExporter)
        target = inv.services.get(svc.redis)
        loc = ("services", name, "redis")
        if not isinstance(target, Redis):
            what = f"a {target.kind} service" if target is not None else "no service"  # type: ignore[attr-defined]
            yield Problem(loc, f"{svc.redis!r} is {what}, not redis")
        elif target.password.variable != "REDIS_PASSWORD":
            yield Problem(loc, f"the exporter reads REDIS_PASSWORD, but services.{svc.redis}.password.var is "
                               f"{target.password.variable}; name it REDIS_PASSWORD")
        elif svc.enabled and not target.enabled:
            yield Problem(loc, f"service {svc.redis!r} is disabled")


KIND = RedisExporterKind()

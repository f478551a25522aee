"""``kind: redis`` against Debian's real redis-server on loopback, started from the rendered
unit's ExecStart with the rendered config.

Redis itself reads the config back (``CONFIG GET``): every value is what the inventory
said, a directory with a space and a quote included; the password reaches it only through
the derived 0600 file; labctl's probe authenticates; RDB persistence survives a restart.
The gateway's cache through it is proven on the booted machine (tests/system/test_redis_cache.py).

Paths Redis reads as patterns (issue 23): Redis globs a config path holding ``*``, ``?`` or
``[``, on its command line and in an ``include``, and silently skips a pattern that matches
nothing. Controls start it on such paths (labctl's guards removed): it then runs without its
password, or with another file's, or with another config; labctl refuses each such input at
the field that brought the character, and its encoder refuses the path again. Sizes: the
largest maxmemory labctl accepts reads back exactly; the suffix form Redis was given before
failed (``1tb``) or wrapped to no limit (``17179869184gb``).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest
from harness import helpers
from harness.tools import require_command

from labctl.errors import InvalidInventory
from labctl.host.secrets import read_secret
from labctl.load import load_inventory
from labctl.ops.apply import ensure_secrets
from labctl.ops.probes import probe
from labctl.render import render_all
from labctl import encode
from labctl.kinds import redis as redis_render
from labctl.inventory.layout import Layout
from labctl.kinds.redis import auth_file
from labctl.render.units import argv

pytestmark = pytest.mark.integration

INVENTORY = """\
version: 1
host: {{user: labuser, home: "{home}", gpu: false, state_dir: "{state}"}}
defaults: {{hardening: false}}
services:
  cache:
    kind: redis
    binary: {binary}
    port: {port}
    persistence: rdb
    maxmemory: 64M
    maxmemory_policy: allkeys-lfu
monitoring: {{enabled: false}}
"""


def redis_cli(port: int, password: str, *args: str) -> str:
    cli = require_command("redis-cli", "apt-get install redis-server")
    res = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), "--no-auth-warning", *args], capture_output=True,
                         text=True, timeout=30, env={**os.environ, "REDISCLI_AUTH": password})
    return res.stdout.strip()


def start(inv, layout: Layout, log: Path) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    command = argv(inv, "cache", inv.services["cache"], layout)
    wd = Path(layout.working_directory("cache"))
    wd.mkdir(parents=True, exist_ok=True)
    return helpers.start_process(command, log_path=log, cwd=wd)


def render_and_install(text: str):  # type: ignore[no-untyped-def]
    """The inventory, its layout and render, with the Redis config where the unit reads it
    and the secrets `up` would create (env file, derived requirepass include)."""
    return install(load_inventory("inventory.yaml", text=text).inventory)


def install(inv):  # type: ignore[no-untyped-def]
    layout = Layout.of(inv)
    files = render_all(inv)
    conf = Path(layout.config_root) / layout.redis_config("cache")
    conf.parent.mkdir(parents=True)
    conf.write_text(files[layout.redis_config("cache")])
    said: list[str] = []
    ensure_secrets(inv, said.append)
    return inv, layout, files, said


def probe_then_stop(proc, inv, name: str, *, after: float):  # type: ignore[no-untyped-def]
    """One probe of ``name`` ``after`` seconds into ``proc``'s life, then stop it."""
    try:
        time.sleep(after)
        return probe(inv, name, timeout=2.0)
    finally:
        helpers.stop_process(proc)


def wait_ready(inv, deadline: float = 20.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + deadline
    while True:
        result = probe(inv, "cache", timeout=2.0)
        if result.ok or time.monotonic() > end:
            return result
        time.sleep(0.2)


def test_redis_runs_the_rendered_config(tmp_path: Path) -> None:
    binary = require_command("redis-server", "apt-get install redis-server")
    home = tmp_path / "home"
    port = helpers.free_port()
    text = INVENTORY.format(home=home, state=f"{home}/state dir \\\"q\\\"", binary=binary, port=port)
    inv, layout, files, said = render_and_install(text)
    svc = inv.services["cache"]
    env_file = Path(inv.host.expand(svc.password.env_file))
    password = read_secret(env_file, "REDIS_PASSWORD")
    auth = Path(auth_file(inv, "cache", svc))
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600 and stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert password not in files[layout.redis_config("cache")] and password not in " ".join(
        argv(inv, "cache", svc, layout))
    assert any("generated REDIS_PASSWORD" in line and password not in line for line in said)

    proc = start(inv, layout, tmp_path / "redis.log")
    try:
        result = wait_ready(inv)
        assert result.ok and result.check == "AUTH + PING", (result, helpers.tail(tmp_path / "redis.log"))
        got = {key: redis_cli(port, password, "CONFIG", "GET", key).splitlines()[-1]
               for key in ("bind", "port", "dir", "appendonly", "maxmemory", "maxmemory-policy", "save")}
        assert got == {"bind": "127.0.0.1", "port": str(port), "dir": layout.working_directory("cache"),
                       "appendonly": "no", "maxmemory": str(64 * 2**20), "maxmemory-policy": "allkeys-lfu",
                       "save": "900 1 300 10 60 10000"}, got
        assert redis_cli(port, "wrong", "PING").startswith(("WRONGPASS", "NOAUTH", "AUTH failed"))
        assert redis_cli(port, password, "SET", "labctl:kept", "yes") == "OK"
    finally:
        helpers.stop_process(proc, timeout=20)  # SIGTERM, as systemd stops it: redis saves the RDB

    assert (Path(layout.working_directory("cache")) / "dump.rdb").is_file()

    proc = start(inv, layout, tmp_path / "redis2.log")
    try:
        assert wait_ready(inv).ok
        assert redis_cli(port, password, "GET", "labctl:kept") == "yes"
    finally:
        helpers.stop_process(proc)
    # Wrong password file: the probe says so, it does not pass.
    env_file.write_text("REDIS_PASSWORD=not-the-password\n")
    result = probe_then_stop(start(inv, layout, tmp_path / "redis3.log"), inv, "cache", after=1.0)
    assert not result.ok and "WRONGPASS" in result.detail, result


def test_the_exporter_reads_redis_with_the_password_from_the_env_file(tmp_path: Path) -> None:
    """kind: redis-exporter: Debian's prometheus-redis-exporter, started from the rendered
    argv with the environment its EnvironmentFile= gives (never the password in argv):
    labctl's probe reads redis_up 1; with a wrong password, redis_up 0 and not ready."""
    binary = require_command("redis-server", "apt-get install redis-server")
    exporter_bin = require_command("prometheus-redis-exporter", "apt-get install prometheus-redis-exporter")
    home = tmp_path / "home"
    port, exporter_port = helpers.free_port(), helpers.free_port()
    text = INVENTORY.format(home=home, state=f"{home}/state", binary=binary, port=port).replace(
        "monitoring:", f"  metrics:\n    kind: redis-exporter\n    redis: cache\n    binary: {exporter_bin}\n"
                       f"    port: {exporter_port}\nmonitoring:")
    inv, layout, files, _ = render_and_install(text)
    env_file = Path(inv.host.expand(inv.services["cache"].password.env_file))
    password = read_secret(env_file, "REDIS_PASSWORD")
    unit = files["systemd/user/labctl-metrics.service"]
    assert f"EnvironmentFile={env_file}" in unit and password not in unit
    redis = start(inv, layout, tmp_path / "redis.log")
    exporter_argv = argv(inv, "metrics", inv.services["metrics"], layout)
    assert password not in " ".join(exporter_argv)

    def run_exporter(secret: str):  # type: ignore[no-untyped-def]
        return helpers.start_process(exporter_argv, log_path=tmp_path / "exporter.log",
                                     env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": secret})

    try:
        assert wait_ready(inv).ok
        exporter = run_exporter(password)
        try:
            end = time.monotonic() + 20
            while not (result := probe(inv, "metrics", timeout=2.0)).ok and time.monotonic() < end:
                time.sleep(0.2)
            assert result.ok and result.check == "GET /metrics", (result, helpers.tail(tmp_path / "exporter.log"))
        finally:
            helpers.stop_process(exporter)
        result = probe_then_stop(run_exporter("wrong"), inv, "metrics", after=1.5)
        assert not result.ok and "redis_up 0" in result.detail, result
    finally:
        helpers.stop_process(redis)


# --- paths Redis reads as patterns ----------------------------------------------------------


def ping_without_password(port: int) -> str:
    cli = require_command("redis-cli", "apt-get install redis-server")
    res = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), "PING"], capture_output=True, text=True,
                         timeout=30, env={k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"})
    return res.stdout.strip()


def wait_port(port: int, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while ping_without_password(port) == "" and time.monotonic() < end:
        time.sleep(0.2)


def refused(text: str, field: str) -> str:
    with pytest.raises(InvalidInventory) as info:
        load_inventory("inventory.yaml", text=text)
    (line,) = info.value.lines()
    assert f": {field}: must not hold *, ?, [ or \\: " in line, line
    return line


def without_the_guards(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(redis_render, "redis_path", lambda path: path)
    monkeypatch.setattr(encode, "redis_path", lambda path: path)


def with_secrets_in(text: str, env_file: str) -> str:
    return text.replace("    maxmemory: 64M\n", f"    maxmemory: 64M\n    password: {{env_file: '{env_file}', "
                                                   "var: REDIS_PASSWORD, generate: true}\n")


def test_a_glob_in_the_include_path_would_start_redis_without_its_password(tmp_path: Path, monkeypatch) -> None:
    binary = require_command("redis-server", "apt-get install redis-server")
    home, port = tmp_path / "home", helpers.free_port()
    text = INVENTORY.format(home=home, state=f"{home}/state", binary=binary, port=port)
    hostile = with_secrets_in(text, "~/.config/labctl/sec[r]ets/redis.env")
    line = refused(hostile, "services.cache.password.env_file")
    assert line.startswith("inventory.yaml:11: "), line
    # The same inventory past the schema: the encoder refuses the include.
    inv = load_inventory("inventory.yaml", text=with_secrets_in(text, "~/.config/labctl/secrets/redis.env")).inventory
    svc = inv.services["cache"]
    bad = svc.model_copy(update={"password": svc.password.model_copy(
        update={"env_file": "~/.config/labctl/sec[r]ets/redis.env"})})
    inv = inv.model_copy(update={"services": {**inv.services, "cache": bad}})
    with pytest.raises(encode.EncodeError):
        render_all(inv)

    # Control: with the guards removed, Redis globs the include, matches nothing, skips it.
    without_the_guards(monkeypatch)
    inv, layout, files, _ = install(inv)
    include = files[layout.redis_config("cache")].splitlines()[-1]
    assert include == f'include "{home}/.config/labctl/sec[r]ets/cache-requirepass.conf"'
    assert Path(auth_file(inv, "cache", bad)).is_file()  # the file labctl meant is there
    proc = start(inv, layout, tmp_path / "redis.log")
    try:
        wait_port(port)
        assert ping_without_password(port) == "PONG", helpers.tail(tmp_path / "redis.log")
    finally:
        helpers.stop_process(proc)
    # ... and where the pattern does match, Redis takes another file's password.
    other = home / ".config/labctl/secrets/cache-requirepass.conf"
    other.parent.mkdir(parents=True)
    other.write_text('requirepass "someone-elses"\n')
    password = read_secret(Path(inv.host.expand(bad.password.env_file)), "REDIS_PASSWORD")
    proc = start(inv, layout, tmp_path / "redis2.log")
    try:
        wait_port(port)
        assert redis_cli(port, "someone-elses", "PING") == "PONG"
        assert redis_cli(port, password, "PING").startswith(("WRONGPASS", "NOAUTH", "AUTH failed"))
    finally:
        helpers.stop_process(proc)


def test_a_glob_in_home_would_start_redis_on_another_config(tmp_path: Path, monkeypatch) -> None:
    """host.home is where Redis's config path on its command line starts."""
    binary = require_command("redis-server", "apt-get install redis-server")
    port, decoy_port = helpers.free_port(), helpers.free_port()
    home = tmp_path / "ho[m]e"
    text = INVENTORY.format(home=home, state=f"{tmp_path}/state", binary=binary, port=port)
    line = refused(text, "host.home")
    assert line.startswith("inventory.yaml:2: "), line
    inv = load_inventory("inventory.yaml", text=text.replace(str(home), str(tmp_path / "meant"))).inventory
    inv = inv.model_copy(update={"host": inv.host.model_copy(update={"home": str(home)})})
    with pytest.raises(encode.EncodeError):
        render_all(inv)

    # Control: with the guards removed, Redis globs its own config path and reads another.
    without_the_guards(monkeypatch)
    inv, layout, _, _ = install(inv)
    command = argv(inv, "cache", inv.services["cache"], layout)
    assert command[1] == f"{home}/.config/labctl/redis/cache.conf" and Path(command[1]).is_file()
    decoy = tmp_path / "home/.config/labctl/redis/cache.conf"
    decoy.parent.mkdir(parents=True)
    decoy.write_text(f"bind 127.0.0.1\nport {decoy_port}\nsave \"\"\n")
    proc = start(inv, layout, tmp_path / "redis.log")
    try:
        wait_port(decoy_port)
        assert ping_without_password(decoy_port) == "PONG", helpers.tail(tmp_path / "redis.log")
        assert ping_without_password(port) == ""  # nothing on the port labctl configured
    finally:
        helpers.stop_process(proc)


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, bytes_", [("17179869183G", 17179869183 * 2**30), ("16777215T", 16777215 * 2**40)])
def test_the_largest_maxmemory_labctl_accepts_reads_back(tmp_path: Path, size: str, bytes_: int) -> None:
    binary = require_command("redis-server", "apt-get install redis-server")
    home, port = tmp_path / "home", helpers.free_port()
    text = INVENTORY.format(home=home, state=f"{home}/state", binary=binary, port=port)
    inv, layout, _, _ = render_and_install(text.replace("maxmemory: 64M", f"maxmemory: {size}"))
    password = read_secret(Path(inv.host.expand(inv.services["cache"].password.env_file)), "REDIS_PASSWORD")
    conf = Path(layout.config_root) / layout.redis_config("cache")
    proc = start(inv, layout, tmp_path / "redis.log")
    try:
        assert wait_ready(inv).ok, helpers.tail(tmp_path / "redis.log")
        assert redis_cli(port, password, "CONFIG", "GET", "maxmemory").splitlines()[-1] == str(bytes_)
    finally:
        helpers.stop_process(proc)
    # Control: the suffix form labctl wrote before. Redis knows no "tb" (it will not start),
    # and wraps a "gb" past 64 bits to 0, no limit.
    for old, expected in (("1tb", None), ("17179869184gb", "0")):
        conf.write_text(re.sub(r"(?m)^maxmemory .*$", f"maxmemory {old}", conf.read_text()))
        proc = start(inv, layout, tmp_path / f"redis-{old}.log")
        try:
            if expected is None:
                assert proc.wait(timeout=20) != 0
                assert "FATAL CONFIG FILE ERROR" in helpers.tail(tmp_path / f"redis-{old}.log")
            else:
                assert wait_ready(inv).ok
                assert redis_cli(port, password, "CONFIG", "GET", "maxmemory").splitlines()[-1] == expected
        finally:
            helpers.stop_process(proc)
